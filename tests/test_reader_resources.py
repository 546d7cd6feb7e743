"""What the readers hold while an archive runs: open files, and GDAL's block cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wfe.io import open_image
from wfe_builtin.readers import geotiff, tiff
from wfe_builtin.readers._common import kept_open
from wfe_builtin.readers._tiff_tiles import file_descriptor
from wfe_builtin.synthetic import SyntheticSlide, write_slide
from wfe_builtin.synthetic.scene import SyntheticScene, write_scene


def _open_files(folder: Path) -> int:
    """Descriptors this process holds on files under ``folder``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
        except OSError:
            pass
    return count


def test_an_archive_of_scenes_leaves_few_files_open(tmp_path, registry):
    """Reading ten scenes one after the other (as an archive run does, on the same
    threads) keeps at most ``OPEN_PER_THREAD`` datasets open per thread: before, every
    file stayed open to the end of the run, several times over, until the run hit the
    limit on open files."""
    one = write_scene(tmp_path / "s0.tif", SyntheticScene(300, 300))
    paths = [one] + [tmp_path / f"s{i}.tif" for i in range(1, 10)]
    for path in paths[1:]:
        os.link(one, path)
    for path in paths:
        raster = open_image(path, registry)
        raster.levels[0][:, :64, :64].compute(scheduler="sync")
        raster.valid[0][:, :64, :64].compute(scheduler="sync")
    assert _open_files(tmp_path) <= geotiff.OPEN_PER_THREAD
    assert geotiff._local.opened.open_count() <= geotiff.OPEN_PER_THREAD


_CACHE = """
import sys
from pathlib import Path
from wfe.io import open_image
from wfe.plugins import load_registry
from rasterio._env import get_gdal_config
raster = open_image(Path(sys.argv[1]), load_registry())
raster.levels[0][:, :64, :64].compute(scheduler="sync")
print(get_gdal_config("GDAL_CACHEMAX"))
"""


@pytest.mark.parametrize("chosen", [None, "200"])
def test_gdal_block_cache_is_capped_unless_chosen(tmp_path, chosen):
    """GDAL keeps every block read in its cache up to 5 % of the machine's memory: the
    reader caps it (each block is read once), and leaves a size the user chose alone."""
    path = write_scene(tmp_path / "s.tif", SyntheticScene(300, 300))
    env = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    if chosen is not None:
        env["GDAL_CACHEMAX"] = chosen
    done = subprocess.run([sys.executable, "-c", _CACHE, str(path)], env=env,
                          capture_output=True, text=True, check=True)
    # GDAL answers in the unit it was given: MB for ours, bytes for a size read as MB.
    expected = int(chosen) * 2**20 if chosen else geotiff.READ_CACHE_MB
    assert int(done.stdout.split()[-1]) == expected


def test_an_archive_of_slides_leaves_at_most_the_kept_files_open(tmp_path, registry):
    """More slides than the tifffile reader keeps open, read one after the other: the
    least recently used are closed (``lru_cache`` only forgot them, so every slide of
    the run stayed open, twice)."""
    one = write_slide(SyntheticSlide(1024, 1024, mpp=0.5, seed=1), tmp_path / "s0.tiff")
    paths = [one] + [tmp_path / f"s{i}.tiff" for i in range(1, tiff.OPEN_FILES + 8)]
    for path in paths[1:]:
        os.link(one, path)
    for path in paths:
        raster = open_image(path, registry)
        assert raster.levels[0][:, :64, :64].compute(scheduler="sync").shape == (3, 64, 64)
    assert _open_files(tmp_path) <= 2 * tiff.OPEN_FILES  # a descriptor and a TiffFile each
    assert file_descriptor.open_count() == tiff.OPEN_FILES
    # What was closed opens again when it is read again.
    assert open_image(paths[0], registry).levels[0][:, :8, :8].compute(scheduler="sync").any()


def test_kept_open_closes_the_least_recently_used():
    closed = []
    opened = kept_open(2, closed.append)(lambda name: f"handle {name}")
    assert opened("a") == "handle a" and opened("b") == "handle b"
    assert opened("a") == "handle a"  # used again: now the most recent
    opened("c")
    assert closed == ["handle b"]
    opened.cache_clear()
    assert sorted(closed) == ["handle a", "handle b", "handle c"]


_SLIDES = """
import sys
from pathlib import Path
from wfe.io import open_image
from wfe.plugins import load_registry

def rss_mib():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

registry, after = load_registry(), []
for path in sys.argv[1:]:
    raster = open_image(Path(path), registry)
    assert raster.attrs["reader"] == "openslide", raster.attrs
    raster.levels[0].sum().compute(scheduler="threads")
    after.append(rss_mib())
print(after[0], after[-1])
"""


def test_slides_read_by_openslide_share_one_tile_cache(tmp_path):
    """Six Aperio slides read in a row with OpenSlide: memory after the sixth is about
    what it was after the first. Each OpenSlide handle had a 32 MiB tile cache of its
    own, and the reader keeps 32 handles open: 32 MiB more per slide, up to a gigabyte."""
    from imagefiles import write_svs

    one = tmp_path / "s0.svs"
    write_svs(one, size=(4096, 4096))
    paths = [one] + [tmp_path / f"s{i}.svs" for i in range(1, 6)]
    for path in paths[1:]:
        os.link(one, path)
    done = subprocess.run([sys.executable, "-c", _SLIDES, *map(str, paths)],
                          capture_output=True, text=True, check=True)
    first, last = (float(v) for v in done.stdout.split())
    assert last - first < 48, (first, last)  # 5 × 32 MiB = 160 MiB with a cache per handle
