"""The TIFF layout parser on real files of every layout, checked against GDAL's own block offsets."""
from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from terrafs.read import tiff

SIZE = 1024


def _array(seed: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    noise = np.random.default_rng(seed).normal(0, 50, (SIZE, SIZE))
    return (1000 + 300 * np.sin(xx / 40) + 200 * np.cos(yy / 60) + noise).astype("uint16")


def _write(path: Path, **opts) -> Path:
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint16", crs="EPSG:32631",
                   transform=from_origin(600000, 5700000, 10, 10))
    with rasterio.open(path, "w", **profile, **opts) as dst:
        dst.write(_array(), 1)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiffs")
    out = {
        "striped": _write(d / "striped.tif", compress="deflate"),
        "tiled_lzw": _write(d / "tiled.tif", tiled=True, blockxsize=256, blockysize=256, compress="lzw"),
        "bigtiff": _write(d / "big.tif", tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                          BIGTIFF="YES"),
    }
    src = _write(d / "src.tif", tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    out["cog"] = d / "cog.tif"
    subprocess.run(["gdal_translate", "-q", "-of", "COG", "-co", "COMPRESS=DEFLATE", "-co", "BLOCKSIZE=512",
                    str(src), str(out["cog"])], check=True)
    out["added_overviews"] = d / "ovr.tif"
    out["added_overviews"].write_bytes(out["tiled_lzw"].read_bytes())
    subprocess.run(["gdaladdo", "-q", str(out["added_overviews"]), "2", "4"], check=True)
    out["masked"] = d / "masked.tif"
    subprocess.run(["gdal_translate", "-q", "-co", "TILED=YES", "-co", "COMPRESS=DEFLATE", "-mask", "1",
                    "--config", "GDAL_TIFF_INTERNAL_MASK", "YES", str(src), str(out["masked"])], check=True)
    return out


def _layout(path: Path) -> tiff.TiffLayout:
    data = path.read_bytes()
    return tiff.parse(lambda off, n: data[off: off + n], len(data))


@pytest.mark.parametrize("name", ["striped", "tiled_lzw", "bigtiff", "cog", "added_overviews", "masked"])
def test_segments_match_gdals_block_offsets(files, name):
    """Every block GDAL reports for the full-resolution band is a segment of image 0, at the same bytes."""
    layout = _layout(files[name])
    ours = {(s.offset, s.length) for s in layout.segments if s.image == 0}
    with rasterio.open(files[name]) as src:
        bh, bw = src.block_shapes[0]
        theirs = set()
        for row in range(-(-src.height // bh)):
            for col in range(-(-src.width // bw)):
                off = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
                size = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)
                theirs.add((int(off), int(size)))
    assert ours == theirs, f"{name}: {len(ours ^ theirs)} blocks differ from GDAL's"
    segs = layout.segments
    assert all(a.end <= b.offset for a, b in zip(segs, segs[1:])), "segments overlap or are unsorted"


def test_every_ifd_is_found(files):
    """Overviews (in the head of a COG, or appended by gdaladdo) and masks are images of their own."""
    assert len(_layout(files["cog"]).across) >= 2  # full resolution + an overview
    assert len(_layout(files["added_overviews"]).across) == 3
    assert len(_layout(files["masked"]).across) >= 2  # the band and its mask


def test_deflate_tiles_decompress_to_whole_tiles(files):
    """The bytes of each full-resolution COG segment are one deflate stream of a 512 x 512 tile."""
    data = files["cog"].read_bytes()
    for s in _layout(files["cog"]).segments:
        if s.image == 0:
            assert len(zlib.decompress(data[s.offset: s.end])) == 512 * 512 * 2


def test_ifds_beyond_the_cached_bytes_are_incomplete_not_wrong(files):
    """gdaladdo appends its IFDs at the end: with only the head cached, the parser asks to wait."""
    data = files["added_overviews"].read_bytes()
    with pytest.raises(tiff.Incomplete):
        tiff.parse(lambda off, n: data[off: off + n] if off + n <= 64 << 10 else None, len(data))


@pytest.mark.parametrize("junk", [b"", b"PK\x03\x04" + bytes(60), b"II*\x00" + b"\xff" * 60,
                                  b"MM\x00+" + bytes(60), b"II*\x00\x08\x00\x00\x00" + b"\xff\xff" + bytes(60)])
def test_hostile_or_foreign_bytes_are_not_a_tiff(junk):
    with pytest.raises((tiff.NotTiff, tiff.Incomplete)):
        tiff.parse(lambda off, n: junk[off: off + n] if off + n <= len(junk) else None, len(junk))


def test_an_ifd_loop_ends(files):
    data = bytearray(files["tiled_lzw"].read_bytes())
    first = int.from_bytes(data[4:8], "little")
    n = int.from_bytes(data[first: first + 2], "little")
    data[first + 2 + 12 * n: first + 6 + 12 * n] = first.to_bytes(4, "little")  # next IFD = itself
    with pytest.raises(tiff.NotTiff):
        tiff.parse(lambda off, k: bytes(data[off: off + k]), len(data))
