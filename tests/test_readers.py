"""Readers, the synthetic slide, and the read stage's level choice."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from wfe.errors import InputError
from wfe.io import open_image
from wfe.resolution import at_resolution
from wfe_builtin.readers.openslide import OpenSlideReader
from wfe_builtin.synthetic import SyntheticSlide, write_slide


def test_sample_is_a_pyramidal_tiff_openslide_opens(sample_slide):
    slide = openslide.OpenSlide(str(sample_slide))
    assert slide.level_dimensions[:3] == ((2048, 2048), (1024, 1024), (512, 512))
    assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    assert slide.properties["openslide.level[0].tile-width"] == "256"
    import tifffile

    with tifffile.TiffFile(sample_slide) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.JPEG
        assert tif.pages.first.is_tiled


def test_sample_is_deterministic(tmp_path):
    a = write_slide(SyntheticSlide(700, 500, seed=11), tmp_path / "a.tiff")
    b = write_slide(SyntheticSlide(700, 500, seed=11), tmp_path / "b.tiff")
    c = write_slide(SyntheticSlide(700, 500, seed=12), tmp_path / "c.tiff")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_sample_tissue_fraction_is_what_was_asked():
    # Default: lobes spread over the slide, about a quarter of it tissue, some near its edge.
    spread = SyntheticSlide(8192, 8192, seed=0)
    assert 0.1 < spread.tissue_fraction() < 0.35
    for asked in (0.3, 0.6):
        assert abs(SyntheticSlide(8192, 8192, seed=0, tissue=asked).tissue_fraction()
                   - asked) < 0.05
    # Gathered in one central section: a band of a tenth of the slide around it stays glass.
    band = np.ones((128, 128), bool)
    band[13:-13, 13:-13] = False
    _, labels = SyntheticSlide(8192, 8192, seed=0, tissue=0.3).render(0, 0, 128, 128, 64)
    assert not labels[band].any()
    _, labels = spread.render(0, 0, 128, 128, 64)
    assert labels[band].any()


def test_tiff_and_openslide_readers_agree(sample_slide, registry):
    by_probe = open_image(sample_slide, registry)
    assert by_probe.attrs["reader"] == "tiff"
    via_openslide = OpenSlideReader().open(sample_slide)
    assert [lvl.shape for lvl in by_probe.levels] == [lvl.shape for lvl in via_openslide.levels]
    assert by_probe.pixel_size == pytest.approx(via_openslide.pixel_size)
    assert by_probe.pixel_size[:3] == pytest.approx([0.5, 1.0, 2.0])
    a = by_probe.levels[1][:, 300:700, 200:650].compute()
    b = via_openslide.levels[1][:, 300:700, 200:650].compute()
    assert a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0  # same JPEG tiles, two decoders


def test_readers_are_lazy_and_chunked_on_tiles(sample_slide, registry):
    raster = open_image(sample_slide, registry)
    # Whole native tiles (256 px) per chunk, grouped to at least 512 px a side.
    assert raster.levels[0].chunks[1][0] == 512 and raster.levels[0].chunks[2][0] == 512
    # One tile's worth of graph: computing a corner reads one chunk.
    corner = raster.levels[0][:, :10, :10]
    assert len(corner.__dask_graph__().dependencies) >= 1
    truth, _ = SyntheticSlide(2048, 2048, mpp=0.5, seed=3).render(0, 0, 256, 256)
    got = raster.levels[0][:, :256, :256].compute().transpose(1, 2, 0)
    assert np.abs(got.astype(int) - truth.astype(int)).mean() < 5  # JPEG q90 of the same pixels


def test_read_level_choice(sample_slide, registry):
    raster = open_image(sample_slide, registry)
    assert at_resolution(raster, 1.0, "t").shape == (3, 1024, 1024)
    assert at_resolution(raster, 2.0, "t").levels[0] is raster.levels[2]
    assert at_resolution(raster, 1.03, "t").levels[0] is raster.levels[1]  # within tolerance
    # 3 µm: from level 2 (2 µm), area-averaged by exactly 1.5.
    down = at_resolution(raster, 3.0, "t")
    assert down.mpp == pytest.approx(3.0) and down.shape == (3, 341, 341)
    src = raster.levels[2][:, :3, :3].compute().astype(np.float64)
    w = np.array([1.0, 0.5]) / 1.5
    expected = np.einsum("y,cyx,x->c", w, src[:, :2, :2], w)
    assert np.abs(down.levels[0][:, 0, 0].compute() - expected).max() <= 0.5
    assert [round(p, 6) for p in down.pixel_size] == [3.0]  # no coarser level left
    with pytest.raises(InputError, match="finer than level 0"):
        at_resolution(raster, 0.25, "t")
    up = at_resolution(raster, 0.25, "t", allow_upsample=True)
    assert up.shape == (3, 4096, 4096) and up.mpp == pytest.approx(0.25)


def test_tiles_never_written_read_as_zero(tmp_path, registry):
    """A sparse TIFF (tiles of byte count 0, as libtiff and GDAL leave empty areas):
    those tiles read as 0, as libtiff and tifffile read them, not as a damaged file; the
    tiles described for a device decoder say so too."""
    import tifffile

    from imagefiles import write_aperio_jpeg

    path = tmp_path / "sparse.tiff"
    write_aperio_jpeg(path, missing=((1, 2),), aperio=False)
    raster = open_image(path, registry)
    assert raster.attrs["reader"] == "tiff"
    pixels = raster.levels[0].compute()
    assert not pixels[:, 256:512, 512:768].any() and pixels[:, :256].mean() > 50
    np.testing.assert_array_equal(pixels.transpose(1, 2, 0), tifffile.imread(path))
    assert raster.attrs["encoded"][raster.levels[0].name].fill == 0
