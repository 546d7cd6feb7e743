"""``tile`` and ``tissue_mask``: OME-Zarr that reads back with the same geometry, and masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import ROOT, run_cli
from imagefiles import (
    corrupt_tile,
    set_compression,
    write_dicom_wsi,
    write_geotiff_without_crs,
    write_huge_declared,
    write_mirax,
    write_tiled_jpeg,
)
from wfe.io import open_image
from wfe.resolution import at_resolution
from wfe_builtin.synthetic.scene import SyntheticScene, write_scene

TILE = ROOT / "workflows" / "tile.yaml"
SCENE_TILE = ROOT / "workflows" / "scene-tile.yaml"


def _codecs(store: Path) -> str:
    return json.dumps(json.loads((store / "s0" / "zarr.json").read_text())["codecs"])


def test_tile_slide_reads_back_with_the_same_pixels_and_pixel_size(sample_slide, tmp_path,
                                                                   registry):
    out = tmp_path / "out"
    result = run_cli("run", TILE, "-i", sample_slide, "-o", out)
    assert result.code == 0, result.stderr
    store = out / "slide" / "image.ome.zarr"
    tiled = open_image(store, registry)
    source = at_resolution(open_image(sample_slide, registry), 1.0, "t")
    assert tiled.pixel_size[0] == pytest.approx(1.0) and tiled.shape == source.shape
    assert tiled.levels[0].chunks[1][0] == 512 and len(tiled.levels) == 2
    assert np.array_equal(tiled.levels[0].compute(), source.levels[0].compute())
    assert '"zstd"' in _codecs(store)
    # ome-zarr-py (what napari's plugin uses) sees a multiscale image with the levels.
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(store)))())
    assert len(nodes[0].data) == 2 and nodes[0].data[0].shape == (3, 1024, 1024)
    assert (out / "slide" / "tissue.png").exists() and (out / "slide" / "tissue.ome.zarr").exists()


def test_pyramid_written_in_blocks_equals_the_pyramid_in_memory(sample_slide, tmp_path,
                                                                  registry):
    """The tile stage writes many chunks per task; every level must still hold exactly
    the pyramid computed in memory, also for a chunk size that halves into odd blocks
    (300: blocks of 1800, 900, then 450, which would put two tasks on one chunk)."""
    import dask

    from wfe_builtin.writers.ome_zarr import OmeZarrWriter, pyramid, pyramid_raster

    source = open_image(sample_slide, registry)
    expected = pyramid(source, 300, labels=False)  # one task per chunk, as reference
    tiled = pyramid_raster(source, 300, block=2048)
    assert tiled.levels[0].chunks[1][0] == 1800 and len(tiled.levels) == len(expected)
    sink = OmeZarrWriter().write(tiled, tmp_path / "t.ome.zarr", chunk=300, is_pyramid=True)
    dask.compute(*sink.work, scheduler="threads", num_workers=4)
    sink.finalize()
    stored = open_image(tmp_path / "t.ome.zarr", registry)
    for want, got in zip(expected, stored.levels, strict=True):
        assert got.chunks[1][0] == min(300, got.shape[1])
        assert np.array_equal(got.compute(), want.compute())


def test_tile_scene_keeps_crs_transform_and_shards(tmp_path, registry):
    scene = SyntheticScene(1500, 1200, seed=2)
    src = write_scene(tmp_path / "scene.tif", scene)
    out = tmp_path / "out"
    result = run_cli("run", SCENE_TILE, "-i", src, "-o", out,
                     "--set", "tiled.compressor=blosc-lz4")
    assert result.code == 0, result.stderr
    store = out / "scene" / "image.ome.zarr"
    tiled = open_image(store, registry)
    assert tiled.crs == "EPSG:32633" and tiled.transform == pytest.approx(scene.transform)
    assert tiled.resolutions()[:2] == pytest.approx([10.0, 20.0]) and tiled.unit == "m"
    assert np.array_equal(tiled.levels[0][:, 100:400, 200:700].compute(),
                          scene.bands(100, 200, 300, 500))
    meta = json.loads((store / "s0" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 2048, 2048]
    assert "sharding_indexed" in _codecs(store) and '"lz4"' in _codecs(store)
    run = json.loads((out / "run.json").read_text())["inputs"][str(src)]
    assert run["info"]["valid"]["valid_fraction"] == pytest.approx(
        scene.valid(0, 0, 1200, 1500).mean(), abs=0.01)


def test_tissue_mask_rejects_pen_marks(sample_slide, tmp_path, registry):
    from wfe_builtin.stages.tissue_mask import tissue_from_rgb

    low = at_resolution(open_image(sample_slide, registry), 8.0, "t").levels[0].compute()
    inked = low.copy()
    inked[:, 40:46, 10:120] = np.array([30, 60, 200], np.uint8)[:, None, None]  # blue marker
    plain = tissue_from_rgb(inked, 10, 0.05)
    clean = tissue_from_rgb(inked, 10, 0.05, reject_pen=True)
    assert plain[40:46, 10:120].mean() > 0.9  # ink is saturated: Otsu calls it tissue
    assert clean[41:45, 10:120].mean() < 0.1
    truth = tissue_from_rgb(low, 10, 0.05)
    assert (clean == truth)[:30].mean() > 0.99  # away from the ink, nothing changes


def _failed(out: Path, name: str) -> str:
    records = json.loads((out / "run.json").read_text())["inputs"]
    rec = next(v for k, v in records.items() if Path(k).name == name)
    assert rec["status"] == "failed"
    assert "\n" not in rec["error"] and name in rec["error"]
    return rec["error"]


def test_bad_files_fail_alone_with_one_line_each(sample_slide, tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    good = bad / "good.tiff"
    shutil.copy(sample_slide, good)
    corrupt = bad / "corrupt.tif"
    write_tiled_jpeg(corrupt)
    corrupt_tile(corrupt, 5)
    codec = bad / "codec.tif"
    tifffile.imwrite(codec, np.zeros((256, 256, 3), np.uint8), tile=(128, 128),
                     photometric="rgb", compression="zlib")
    set_compression(codec, 50123)
    huge = bad / "huge.tif"
    write_huge_declared(huge)
    nocrs = bad / "nocrs.tif"
    write_geotiff_without_crs(nocrs)
    text = bad / "notes.tif"
    text.write_text("not an image")
    truncated = bad / "truncated.tif"
    data = sample_slide.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    result = run_cli("run", TILE, "-i", str(bad / "*.tif*"), "-o", out)
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot decode the tile at level 0" in _failed(out, "corrupt.tif")
    assert "unsupported TIFF compression 50123" in _failed(out, "codec.tif")
    assert "1,000,000 × 1,000,000" in _failed(out, "huge.tif")
    assert "no CRS" in _failed(out, "nocrs.tif")
    assert "not an image" in _failed(out, "notes.tif")
    assert "truncated" in _failed(out, "truncated.tif")
    assert (out / "good" / "image.ome.zarr" / "zarr.json").exists()
    for name in ("corrupt", "codec", "huge", "nocrs", "notes", "truncated"):
        folder = out / name
        left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        assert left == [], f"{name}: {left}"  # nothing half-written, nothing that looks done


def _fails_alone(sample_slide, tmp_path, bad: Path) -> str:
    """Tile a good slide and ``bad`` in one run: the run's error for ``bad``, after
    checking that only it failed and that it left nothing in its output folder."""
    good = tmp_path / "good.tiff"
    shutil.copy(sample_slide, good)
    out = tmp_path / "out"
    result = run_cli("run", TILE, "-i", good, "-i", bad, "-o", out)
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    error = _failed(out, bad.name)
    assert (out / "good" / "image.ome.zarr" / "zarr.json").exists()
    folder = out / bad.stem
    assert not folder.exists() or not any(folder.iterdir())
    return error


def test_dicom_series_with_its_original_missing_fails_alone(sample_slide, tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    files, _ = write_dicom_wsi(series)
    files[0].unlink()  # the full-resolution level; OpenSlide would open the rest as a slide
    error = _fails_alone(sample_slide, tmp_path, files[1])
    assert "no full-resolution level" in error and "a file of the series is missing" in error


@pytest.mark.parametrize("lost", ["folder", "data file"])
def test_mirax_without_its_data_fails_alone(sample_slide, tmp_path, lost):
    slide = tmp_path / "scan.mrxs"
    write_mirax(slide)
    if lost == "folder":  # the .mrxs copied on its own, as happens
        shutil.rmtree(tmp_path / "scan")
    else:
        (tmp_path / "scan" / "Data0000.dat").unlink()
    error = _fails_alone(sample_slide, tmp_path, slide)
    assert "MIRAX slide" in error and "copy the whole folder scan/" in error


def test_gsd_on_an_image_without_crs_is_one_clear_line(sample_slide, tmp_path):
    out = tmp_path / "out"
    result = run_cli("run", SCENE_TILE, "-i", sample_slide, "-o", out)
    assert result.code == 1
    assert "gsd: 10 needs a georeferenced image" in _failed(out, "slide.tiff")
