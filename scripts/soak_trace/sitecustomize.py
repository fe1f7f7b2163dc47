"""Soak tracing (scripts/soak --trace / --tracemalloc): loaded by the daemon's interpreter at
start-up through PYTHONPATH. When TERRAFS_SOAK_TRACE names a file, each minute it gets where the
daemon's memory is: C malloc's arenas (in use, free but held, mmapped), SQLite's own allocator,
and, with TERRAFS_SOAK_TRACEMALLOC=1, Python's allocations (tracemalloc) that grew most since the
first minute's snapshot, by line and the top few by traceback. A debugging aid for the soak only:
terrafs itself never imports this."""
import os

_OUT = os.environ.get("TERRAFS_SOAK_TRACE")
if _OUT:
    import ctypes
    import threading
    import time
    import tracemalloc

    _PY = os.environ.get("TERRAFS_SOAK_TRACEMALLOC") == "1"
    if _PY:
        tracemalloc.start(8)

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    def _c_memory() -> str:
        out = []
        try:
            libc = ctypes.CDLL(None)
            libc.mallinfo2.restype = _Mallinfo2
            m = libc.mallinfo2()
            out.append(f"malloc: heap {m.arena / 2**20:.1f} MiB (in use {m.uordblks / 2**20:.1f}, free held "
                       f"{m.fordblks / 2**20:.1f}), mmapped {m.hblkhd / 2**20:.1f} MiB in {m.hblks} chunks")
        except (OSError, AttributeError):
            pass
        try:
            sq = ctypes.CDLL("libsqlite3.so.0")
            sq.sqlite3_memory_used.restype = ctypes.c_int64
            out.append(f"sqlite: {sq.sqlite3_memory_used() / 2**20:.1f} MiB")
        except (OSError, AttributeError):
            pass
        out.append(f"threads: {threading.active_count()}")
        out.append(_held())
        out.append(_file_backed())
        return "; ".join(out)

    def _file_backed() -> str:
        """Resident KiB of the daemon's file mappings, largest first (the SQLite index's map, -shm, libraries)."""
        rss: dict[str, int] = {}
        name = ""
        try:
            with open("/proc/self/smaps") as f:
                for line in f:
                    head = line.split()
                    if head and "-" in head[0] and len(head) >= 5:
                        name = head[5] if len(head) > 5 and head[4] != "0" else ""
                    elif name and head[:1] == ["Rss:"]:
                        rss[name] = rss.get(name, 0) + int(head[1])
        except OSError:
            return "file maps: unreadable"
        top = sorted(rss.items(), key=lambda kv: -kv[1])[:4]
        return (f"file maps {sum(rss.values()) / 1024:.1f} MiB resident ("
                + ", ".join(f"{os.path.basename(k)} {v / 1024:.1f}" for k, v in top) + ")")

    def _held() -> str:
        """Bytes the read path holds in RAM by design: the hot set's and the write-behind's."""
        import gc
        hot = pending = 0
        for o in gc.get_objects():
            name = type(o).__name__
            if name == "HotSet":
                hot += sum(len(v) for v in list(o._data.values()) if isinstance(v, (bytes, bytearray)))
            elif name == "WriteBehind":
                pending += sum(len(v) for v in list(o._pending.values()) if isinstance(v, (bytes, bytearray)))
        return f"held: hot set {hot / 2**20:.1f} MiB in RAM, write-behind {pending / 2**20:.1f} MiB"

    def _dump() -> None:
        base = None
        minute = 0
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
        while True:
            time.sleep(60)
            minute += 1
            with open(_OUT, "a") as out:  # the cheap figures first: a snapshot under load takes a while
                line = f"=== minute {minute}: {_c_memory()}"
                if _PY:
                    traced, peak = tracemalloc.get_traced_memory()
                    line += f"; python: {traced / 2**20:.1f} MiB traced (peak {peak / 2**20:.1f})"
                out.write(line + "\n")
            if not _PY:
                continue
            snap = tracemalloc.take_snapshot().filter_traces(ignore)
            if base is None:
                base = snap
                continue
            with open(_OUT, "a") as out:
                for s in snap.compare_to(base, "lineno")[:25]:
                    out.write(f"{s.size_diff / 2**20:+8.2f} MiB {s.count_diff:+8d} blocks  {s.traceback[0]}\n")
                out.flush()
                for s in snap.compare_to(base, "traceback")[:4]:
                    out.write(f"--- {s.size_diff / 2**20:+.2f} MiB {s.count_diff:+d} blocks, allocated at:\n")
                    for line in s.traceback.format(limit=12, most_recent_first=True):
                        out.write(f"      {line}\n")

    threading.Thread(target=_dump, name="soak-trace", daemon=True).start()
