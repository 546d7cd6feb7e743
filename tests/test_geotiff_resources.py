"""What the GeoTIFF reader holds while an archive runs: open files and GDAL's block cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wfe.io import open_image
from wfe_builtin.readers import geotiff
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
    assert len(geotiff._local.datasets) <= geotiff.OPEN_PER_THREAD


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
