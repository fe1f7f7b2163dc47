"""Soak tracing (scripts/soak --trace): loaded by the daemon's interpreter at start-up through
PYTHONPATH. When TERRAFS_SOAK_TRACE names a file, tracemalloc runs, and each minute the file gets
the allocations that grew most since the first minute's snapshot (by line, and the top few by
traceback). A debugging aid for the soak only: terrafs itself never imports this."""
import os

_OUT = os.environ.get("TERRAFS_SOAK_TRACE")
if _OUT:
    import threading
    import time
    import tracemalloc

    tracemalloc.start(12)

    def _dump() -> None:
        base = None
        minute = 0
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
        while True:
            time.sleep(60)
            minute += 1
            snap = tracemalloc.take_snapshot().filter_traces(ignore)
            if base is None:
                base = snap
                continue
            total = sum(s.size for s in snap.statistics("filename")) / 2**20
            with open(_OUT, "a") as out:
                out.write(f"=== minute {minute}: {total:.1f} MiB traced\n")
                for s in snap.compare_to(base, "lineno")[:25]:
                    out.write(f"{s.size_diff / 2**20:+8.2f} MiB {s.count_diff:+8d} blocks  {s.traceback[0]}\n")
                for s in snap.compare_to(base, "traceback")[:6]:
                    out.write(f"--- {s.size_diff / 2**20:+.2f} MiB {s.count_diff:+d} blocks, allocated at:\n")
                    for line in s.traceback.format(limit=12, most_recent_first=True):
                        out.write(f"      {line}\n")

    threading.Thread(target=_dump, name="soak-trace", daemon=True).start()
