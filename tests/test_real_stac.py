"""The mount through a real STAC API (stac-fastapi-pgstac on PostgreSQL+PostGIS) shows the tree it
shows through the emulator's STAC API: the same paths, sizes and xattrs, in both layouts, with and
without the fields extension (issue 19, item 4).

The pgstac catalogue holds the emulator's own collections and items (tests/pgstac.py), so downloads
go to the emulator in both mounts; only who answers the catalogue differs. The two catalogues order,
page and link their answers differently (newest first, 10 per page, their own links): the tree must
not care.
"""
from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from terrafs.config import DEFAULTS

from pgstac import PgStacServer, pgstac_server, real_stac  # noqa: F401  (fixtures)

RECORD = "user.terrafs.record"
# Links and the item's own `type`/`stac_version` framing are the server's, not the archive's.
SERVER_KEYS = ("links",)

# The client's switch for the STAC fields extension (issue 19, item 1): "auto" asks for the fields
# the tree reads where the API conforms to the extension (pgstac does), "off" never does.
FIELDS_KEY = "catalogue_fields"


def fields_config(mode: str) -> dict:
    """The config overrides for a fields mode."""
    if FIELDS_KEY in DEFAULTS:
        return {FIELDS_KEY: mode}
    if mode == "off":
        return {}  # a client without the switch never asks for fields
    pytest.skip(f"this client has no `{FIELDS_KEY}` option yet (issue 19, item 1)")


def tree(root: Path) -> dict[str, tuple]:
    """Every path below root (the root as ".") -> (kind, a file's size and mtime, listed xattrs with
    values). Folders' times are the mount's own, so they are left out."""
    out: dict[str, tuple] = {}

    def note(path: Path, is_dir: bool) -> None:
        xattrs = {name: os.getxattr(path, name).decode() for name in sorted(os.listxattr(path))}
        st = None if is_dir else path.stat()
        out[str(path.relative_to(root))] = ("dir", None, None, xattrs) if st is None else \
            ("file", st.st_size, st.st_mtime_ns, xattrs)

    note(root, True)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            note(Path(dirpath) / name, True)
        for name in filenames:
            note(Path(dirpath) / name, False)
    return out


def records(root: Path, seen: dict[str, tuple]) -> dict[str, dict]:
    """The catalogue record of each product folder, parsed, without what is the server's own."""
    out = {}
    for rel, (kind, _, _, xattrs) in seen.items():
        if kind == "dir" and "user.terrafs.product_id" in xattrs:
            try:
                record = json.loads(os.getxattr(root / rel, RECORD))
            except OSError:
                continue  # a folder above the product (the platform layout's resolution folders share it)
            out[rel] = {k: v for k, v in record.items() if k not in SERVER_KEYS}
    return out


def differences(a: dict, b: dict, limit: int = 5) -> list:
    only_a = sorted(set(a) - set(b))[:limit]
    only_b = sorted(set(b) - set(a))[:limit]
    unequal = [(k, a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k]][:limit]
    return [("only through the emulator", only_a), ("only through pgstac", only_b), ("unequal", unequal)]


@pytest.mark.parametrize("fields", ["off", "auto"])
@pytest.mark.parametrize("layout", ["default", "platform"])
def test_the_tree_through_a_real_stac_server_equals_the_tree_through_the_emulator(
        emulator, real_stac: PgStacServer, mount_factory, tmp_path, layout, fields):
    overrides = fields_config(fields)
    through_emulator = mount_factory(emulator, layout=layout, cache_dir=tmp_path / "cache-emulator",
                                     name="emulator", **overrides)
    through_pgstac = mount_factory(emulator, layout=layout, cache_dir=tmp_path / "cache-pgstac", name="pgstac",
                                   endpoints={"stac": real_stac.url}, **overrides)
    with ThreadPoolExecutor(2) as pool:  # the two walks wait on different servers: side by side
        expected, seen = pool.map(tree, (through_emulator.path, through_pgstac.path))
    files = sum(1 for entry in expected.values() if entry[0] == "file")
    assert files > 100, f"the emulator's tree has only {files} files: nothing to compare"
    assert seen == expected, f"{layout} layout, fields {fields}: {differences(expected, seen)}"
    expected_records = records(through_emulator.path, expected)
    assert expected_records, "no product folder has a record"
    assert records(through_pgstac.path, seen) == expected_records
    if fields == "auto":  # pgstac conforms to the fields extension: the client must have used it
        log = through_pgstac.log_text()
        assert "conforms to the fields extension" in log and "refused the fields extension" not in log, \
            "the mount did not ask the real server with the fields extension"


def test_the_mount_asks_the_real_server_and_not_the_emulator_for_the_catalogue(
        emulator, real_stac: PgStacServer, mount_factory):
    mount = mount_factory(emulator, endpoints={"stac": real_stac.url})
    month = mount.path / "terrascope-s2-toc-v2" / "2021" / "06"
    out = subprocess.run(["ls", "-R", str(month)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(".tif") > 10, f"the listing through pgstac shows (almost) no files:\n{out.stdout}"
    asked = [r["path"] for r in emulator.requests() if r["kind"] in ("stac", "opensearch")]
    assert asked == [], f"the mount asked the emulator's catalogue: {asked[:3]}"


def test_the_fixture_copied_every_collection_and_item(real_stac: PgStacServer, emulator):
    import requests

    collections, items = real_stac.counts
    served = requests.get(real_stac.url + "search", params={"limit": 10000}, timeout=60).json()["features"]
    assert len(served) == items > 0, f"pgstac serves {len(served)} items, the emulator {items}"
    hrefs = {a["href"] for item in served for a in item["assets"].values() if a["href"].startswith("http")}
    assert hrefs and all(h.startswith(emulator.base_url + "/") for h in hrefs), sorted(hrefs)[:3]
