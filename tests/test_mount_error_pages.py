"""An error page is never the file: every file of a mount read exactly while 40% of download
GETs are answered 200 with a 39-byte HTML login page (what Terrascope's download service does
when a session lapses), with no size taken from a page and nothing cached dropped for one."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import fault_test_files

pytestmark = pytest.mark.mount


def test_every_file_is_read_exactly_under_login_pages_answered_200(emulator_factory, emulator_data,
                                                                     mount_factory):
    emu, m, paths = fault_test_files(emulator_factory, emulator_data, mount_factory)  # listing first
    emu.set(fault_rate=0.4, fault_kinds=["html"])

    def wrong(item: tuple[Path, Path]) -> str | None:
        path, source = item
        try:
            got = path.read_bytes()
        except OSError as exc:
            return f"{path.name}: {exc}"
        return None if got == source.read_bytes() else f"{path.name}: wrong bytes ({len(got)})"

    for rnd in (1, 2):  # the second pass reads what the first cached: a page must have dropped nothing
        with ThreadPoolExecutor(8) as pool:
            bad = [w for w in pool.map(wrong, paths) if w]
        assert not bad, f"pass {rnd}: {len(bad)} of {len(paths)} files not read exactly: {bad[:5]}"
        for path, source in paths:
            assert path.stat().st_size == source.stat().st_size, f"{path.name}: a page's length taken for its size"
    emu.set(fault_rate=0.0)
    pages = [e for e in emu.requests("download") if e.get("fault") == "html"]
    assert len(pages) > len(paths) / 2, f"only {len(pages)} login pages served: the test tested little"
    log = m.log_text()
    assert "bytes on the server" not in log and "dropping what is cached" not in log, \
        "a login page was taken for a republished file"


def test_the_identity_guard_takes_no_size_from_an_answer_without_the_files_identity():
    from terrafs.errors import FetchError, SizeChanged
    from terrafs.remote.http import RemoteInfo
    from terrafs.cache.blocks import MemoryOnlyCache
    from terrafs.cache.filemeta import FileMeta
    from terrafs.read.identity import IdentityGuard
    from terrafs.read.remote import RemoteFile

    dropped: list[RemoteFile] = []
    meta = FileMeta(MemoryOnlyCache(1 << 16, "test"))
    guard = IdentityGuard(meta, dropped.append)
    f = RemoteFile("https://h/download/B04.tif", 152991, "k")
    guard.check(f, RemoteInfo(152991, '"v1"', None))
    with pytest.raises(FetchError) as err:
        guard.check(f, RemoteInfo(39, None, None))  # a page that got past http.py
    assert not isinstance(err.value, SizeChanged) and not dropped
    assert meta.identity(f.url) == ('"v1"', None)
    with pytest.raises(SizeChanged):  # the file republished at another size: its own identity
        guard.check(f, RemoteInfo(200000, '"v2"', None))
    assert dropped == [f]


def test_the_emulators_html_fault_is_a_login_page_with_status_200(emulator):
    import requests

    row = emulator.files(limit=1, min_size=100_000)[0]
    emulator.set(fault_rate=1.0, fault_kinds=["html"])
    r = requests.get(emulator.download_url(row["path"]), auth=("demo", "demo"), headers={"Range": "bytes=0-99"},
                     timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert len(r.content) == 39 and b"<title>Sign in" in r.content
    assert "ETag" not in r.headers and "Last-Modified" not in r.headers and "Content-Range" not in r.headers
    assert emulator.requests("download")[-1]["fault"] == "html"
