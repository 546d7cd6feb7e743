"""Every reader on the files it exists for: chosen by probing, lazy, with its metadata."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import run_cli
from imagefiles import (
    pattern,
    write_dicom_wsi,
    write_imagej,
    write_leica_scn,
    write_mirax,
    write_ndpi,
    write_ome_tiff,
    write_philips_tiff,
    write_qptiff,
    write_svs,
    write_ventana_bif,
)
from wfe.io import open_image
from wfe.resolution import at_resolution
from wfe_builtin.synthetic.scene import SyntheticScene, write_scene


def _rgb(raster, level=0):
    return raster.levels[level].compute().transpose(1, 2, 0).astype(int)


@pytest.mark.parametrize("compression", ["jpeg", 33005], ids=["jpeg", "jpeg2000"])
def test_aperio_svs(tmp_path, registry, compression):
    path = tmp_path / "slide.svs"
    base = write_svs(path, compression)
    raster = open_image(path, registry)
    assert raster.attrs["reader"] == "openslide" and raster.attrs["vendor"] == "aperio"
    assert [lvl.shape for lvl in raster.levels] == [(3, 2048, 1536), (3, 512, 384)]
    assert raster.pixel_size == pytest.approx([0.5, 2.0])
    assert raster.attrs["objective_power"] == "20"
    assert raster.attrs["associated"] == ["label", "macro", "thumbnail"]
    assert np.abs(_rgb(raster) - base).mean() < 3
    # tifffile reads the same file (and the JPEG 2000 tiles) to the same pixels.
    other = open_image(path, registry, reader="tiff")
    assert other.attrs["vendor"] == "svs" and other.mpp == pytest.approx(0.5)
    assert other.attrs["associated"] == ["Thumbnail", "Label", "Macro"]
    assert np.abs(_rgb(other) - _rgb(raster)).max() <= 2


def test_hamamatsu_ndpi(tmp_path, registry):
    path = tmp_path / "slide.ndpi"
    base = write_ndpi(path)
    raster = open_image(path, registry)
    assert raster.attrs["reader"] == "openslide" and raster.attrs["vendor"] == "hamamatsu"
    assert raster.shape == (3, 1024, 1536) and raster.mpp == pytest.approx(0.5)
    assert "macro" in raster.attrs["associated"]
    assert np.abs(_rgb(raster) - base).mean() < 3


def test_philips_tiff(tmp_path, registry):
    path = tmp_path / "slide.tiff"
    base = write_philips_tiff(path, mpp=0.25)
    raster = open_image(path, registry)
    # OpenSlide claims it (more specific than the tifffile reader), pixel size from the
    # XML's DICOM pixel spacing (mm), not from TIFF resolution tags (there are none).
    assert raster.attrs["reader"] == "openslide" and raster.attrs["vendor"] == "philips"
    assert [lvl.shape for lvl in raster.levels] == [(3, 1024, 1536), (3, 512, 768),
                                                    (3, 256, 384)]
    assert raster.pixel_size == pytest.approx([0.25, 0.5, 1.0])
    assert raster.attrs["objective_power"] == "20"
    assert raster.attrs["associated"] == ["label", "macro"]
    assert np.abs(_rgb(raster) - base).mean() < 3


def test_leica_scn_main_image_placed_in_its_collection(tmp_path, registry):
    path = tmp_path / "slide.scn"
    base = write_leica_scn(path, mpp=0.5, margin=(32, 64))
    raster = open_image(path, registry)
    assert raster.attrs["reader"] == "openslide" and raster.attrs["vendor"] == "leica"
    # Level 0 spans the whole collection; the main image sits at its offset, and the
    # rest of the collection (nothing scanned) reads as white.
    assert raster.shape == (3, 1024 + 64, 1536 + 128)
    assert raster.mpp == pytest.approx(0.5) and raster.pixel_size[1] == pytest.approx(2.0)
    assert raster.attrs["objective_power"] == "20" and raster.attrs["associated"] == ["macro"]
    rgb = _rgb(raster)
    assert np.abs(rgb[32:32 + 1024, 64:64 + 1536] - base).mean() < 3
    assert (rgb[:32] == 255).all() and (rgb[:, :64] == 255).all()


def test_qptiff_channels_named_from_its_xml(tmp_path, registry):
    path = tmp_path / "multiplex.qptiff"
    data = write_qptiff(path, mpp=0.5)
    raster = open_image(path, registry)
    assert raster.attrs["reader"] == "tiff" and raster.attrs["vendor"] == "qpi"
    assert raster.dtype == np.uint16 and list(raster.channels) == ["DAPI", "CD8", "PanCK"]
    assert raster.pixel_size == pytest.approx([0.5, 1.0])
    assert raster.attrs["associated"] == ["Thumbnail"]
    assert np.array_equal(raster.levels[0].compute(), data)
    assert np.array_equal(raster.levels[1].compute(), data[:, ::2, ::2])


def test_dicom_wsi_series_opens_from_any_of_its_files(tmp_path, registry):
    files, base = write_dicom_wsi(tmp_path, mpp=0.5)
    # OpenSlide gathers the series (same SeriesInstanceUID) from the file's folder.
    for one in (files[0], files[1]):
        raster = open_image(one, registry)
        assert raster.attrs["reader"] == "openslide" and raster.attrs["vendor"] == "dicom"
        assert [lvl.shape for lvl in raster.levels] == [(3, 1024, 1536), (3, 256, 384)]
        assert raster.pixel_size == pytest.approx([0.5, 2.0])
        assert raster.attrs["associated"] == ["label"]
    assert np.array_equal(_rgb(raster), base)  # uncompressed frames: exact


def test_ventana_bif(tmp_path, registry):
    path = tmp_path / "slide.bif"
    base = write_ventana_bif(path, mpp=0.5)
    raster = open_image(path, registry)
    # Detected from the iScan XMP of the first page; levels from "level=N mag=M".
    assert raster.attrs["reader"] == "openslide" and raster.attrs["vendor"] == "ventana"
    assert [lvl.shape for lvl in raster.levels] == [(3, 1024, 1536), (3, 256, 384)]
    assert raster.pixel_size == pytest.approx([0.5, 2.0])
    assert raster.attrs["objective_power"] == "20"
    assert raster.attrs["associated"] == ["macro", "thumbnail"]
    assert np.abs(_rgb(raster) - base).mean() < 3


def test_mirax_camera_images_placed_by_their_positions(tmp_path, registry):
    path = tmp_path / "slide.mrxs"
    scene, uncovered = write_mirax(path, images=(4, 3), image=256, overlap=16, mpp=0.25,
                                   missing=(3, 2))
    raster = open_image(path, registry)
    # The .mrxs file says nothing itself: OpenSlide reads Slidedat.ini, Index.dat and
    # the data file in the folder beside it.
    assert raster.attrs["reader"] == "openslide" and raster.attrs["vendor"] == "mirax"
    # 4 × 3 camera images of 256 px overlapping by 16: 976 × 736 at level 0.
    assert [lvl.shape for lvl in raster.levels] == [(3, 736, 976), (3, 368, 488),
                                                     (3, 184, 244)]
    assert raster.pixel_size == pytest.approx([0.25, 0.5, 1.0])
    assert raster.attrs["objective_power"] == "20"
    assert raster.attrs["associated"] == ["label", "macro", "thumbnail"]
    assert raster.attrs["associated_sizes"]["macro"] == [300, 120]
    error = np.abs(_rgb(raster) - scene).max(axis=-1)
    # Each camera image where the position buffer puts it (two of them a few pixels off
    # the nominal grid: placed by the grid, that camera's pixels would be ~10 off).
    assert error[~uncovered].mean() < 2 and error[~uncovered].max() <= 12
    assert error[258:474, 263:479].mean() < 2  # camera (1, 1), taken at (+3, -2)
    # The camera image never taken reads as white, at every level.
    assert (_rgb(raster)[uncovered] == 255).all()
    assert (_rgb(raster, 2)[uncovered[2::4, 2::4]] == 255).all()
    half = scene.reshape(368, 2, 488, 2, 3).mean(axis=(1, 3))
    level1 = np.abs(_rgb(raster, 1) - half).max(axis=-1)[~uncovered[::2, ::2]]
    assert level1.mean() < 3


def test_ome_tiff_subifd_pyramid_uint16_channels(tmp_path, registry):
    path = tmp_path / "fluo.ome.tif"
    data = write_ome_tiff(path)
    raster = open_image(path, registry)
    assert raster.attrs["reader"] == "tiff" and raster.attrs["vendor"] == "ome"
    assert raster.dtype == np.uint16 and list(raster.channels) == ["DAPI", "FITC", "TRITC"]
    assert [lvl.shape for lvl in raster.levels] == [(3, 1024, 768), (3, 512, 384), (3, 256, 192)]
    assert raster.pixel_size == pytest.approx([0.325, 0.65, 1.3])
    assert np.array_equal(raster.levels[0].compute(), data)
    assert np.array_equal(raster.levels[1].compute(), data[:, ::2, ::2])
    assert raster.levels[0].chunks[1][0] == 512  # 2 × 2 native 256-px tiles


def test_bigtiff_and_stripped_tiff(tmp_path, registry):
    big = tmp_path / "big.tif"
    data = pattern(700, 900)
    tifffile.imwrite(big, data, bigtiff=True, tile=(256, 256), photometric="rgb",
                     compression="zlib")
    raster = open_image(big, registry)
    assert raster.attrs["vendor"] == "bigtiff" and np.array_equal(_rgb(raster), data)
    stripped = tmp_path / "stripped.tif"
    tifffile.imwrite(stripped, data, rowsperstrip=16, photometric="rgb", compression="zlib")
    raster = open_image(stripped, registry)
    assert raster.levels[0].chunks[1][0] == 512  # bands of strips, not 16-row chunks
    assert np.array_equal(_rgb(raster), data)


def test_imagej_hyperstack_picks_a_plane(tmp_path, registry):
    path = tmp_path / "stack.tif"
    data = write_imagej(path)
    raster = open_image(path, registry, index={"Z": 2})
    assert raster.attrs["vendor"] == "imagej" and raster.shape == (2, 300, 400)
    assert raster.mpp == pytest.approx(0.25)
    assert np.array_equal(raster.levels[0].compute(), data[2])
    from wfe.errors import InputError

    with pytest.raises(InputError, match="Z=5 is out of range"):
        open_image(path, registry, index={"Z": 5})


def test_png_and_jpeg(tmp_path, registry):
    data = pattern(300, 200)
    Image.fromarray(data).save(tmp_path / "a.png")
    Image.fromarray(data).save(tmp_path / "a.jpg", quality=95)
    png = open_image(tmp_path / "a.png", registry)
    assert png.attrs["reader"] == "pil" and np.array_equal(_rgb(png), data)
    jpg = open_image(tmp_path / "a.jpg", registry)
    assert jpg.attrs["reader"] == "pil" and np.abs(_rgb(jpg) - data).mean() < 2


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_v2_and_v3(tmp_path, registry, version):
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscale

    data = pattern(512, 384, channels=2, dtype=np.uint16).transpose(2, 0, 1).copy()
    levels = [data, data[:, ::2, ::2].copy()]
    path = tmp_path / "img.ome.zarr"
    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    transforms = [[{"type": "scale", "scale": [1, 0.5 * f, 0.5 * f]}] for f in (1, 2)]
    write_multiscale(levels, group, axes=axes, fmt=fmt, coordinate_transformations=transforms,
                     storage_options={"chunks": (2, 128, 128)})
    raster = open_image(path, registry)
    assert raster.attrs["reader"] == "zarr"
    assert raster.pixel_size == pytest.approx([0.5, 1.0])
    assert raster.levels[0].chunks[1][0] == 128
    assert np.array_equal(raster.levels[1].compute(), levels[1])


def test_plain_zarr_array_yxc(tmp_path, registry):
    import zarr

    data = pattern(200, 300)
    arr = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=data.shape, chunks=(64, 64, 3),
                          dtype=data.dtype)
    arr[:] = data
    raster = open_image(tmp_path / "a.zarr", registry)
    assert raster.shape == (3, 200, 300) and np.array_equal(_rgb(raster), data)


@pytest.mark.parametrize("cog", [False, True], ids=["geotiff", "cog"])
def test_geotiff_and_cog(tmp_path, registry, cog):
    scene = SyntheticScene(1000, 1300, seed=1)
    path = write_scene(tmp_path / "scene.tif", scene, cog=cog)
    raster = open_image(path, registry)
    assert raster.attrs["reader"] == "geotiff" and raster.crs == "EPSG:32633"
    assert raster.transform == pytest.approx(scene.transform)
    assert raster.dtype == np.uint16 and list(raster.channels) == ["blue", "green", "red", "nir"]
    assert raster.resolutions() == pytest.approx([10.0, 20.0, 40.0, 80.0], rel=0.01)
    assert raster.levels[0].chunks[1][0] == 256
    window = raster.levels[0][:, 300:600, 100:500].compute()
    assert np.array_equal(window, scene.bands(300, 100, 300, 400))
    valid = raster.valid[0][0, 300:600, 100:500].compute()
    assert np.array_equal(valid, scene.valid(300, 100, 300, 400))
    # gsd: an overview as is, or an exact resample with the transform scaled to match.
    assert at_resolution(raster, 20.0, "t").levels[0] is raster.levels[1]
    r15 = at_resolution(raster, 15.0, "t")
    assert r15.shape[1:] == (867, 667) and r15.resolutions()[0] == pytest.approx(15.0)
    assert r15.transform[0] == pytest.approx(15.0) and r15.transform[2] == scene.transform[2]
    assert r15.valid[0].shape == (1, 867, 667)


@pytest.mark.parametrize("dtype,count", [("uint8", 1), ("float32", 13)])
def test_geotiff_any_band_count_and_dtype(tmp_path, registry, dtype, count):
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    data = (rng.random((count, 100, 120)) * 200).astype(dtype)
    path = tmp_path / "bands.tif"
    with rasterio.open(path, "w", driver="GTiff", width=120, height=100, count=count, dtype=dtype,
                       crs="EPSG:4326", transform=Affine(0.001, 0, 10, 0, -0.001, 50),
                       nodata=0) as dst:
        dst.write(data)
    raster = open_image(path, registry)
    assert raster.shape == (count, 100, 120) and raster.dtype == np.dtype(dtype)
    assert raster.unit == "°" and np.array_equal(raster.levels[0].compute(), data)


def test_probing_picks_the_most_specific_reader(tmp_path, registry, sample_slide):
    write_svs(tmp_path / "a.svs")
    scene = write_scene(tmp_path / "s.tif", SyntheticScene(300, 300))
    picked = {p.name: open_image(p, registry).attrs["reader"]
              for p in (tmp_path / "a.svs", scene, sample_slide)}
    assert picked == {"a.svs": "openslide", "s.tif": "geotiff", "slide.tiff": "tiff"}
    # A misleading suffix does not matter: the probe decides.
    renamed = tmp_path / "scene.png"
    renamed.write_bytes(scene.read_bytes())
    assert open_image(renamed, registry).attrs["reader"] == "geotiff"


def test_info_shows_vendor_associated_images_and_geometry(tmp_path):
    import json

    write_svs(tmp_path / "a.svs")
    result = run_cli("info", tmp_path / "a.svs", "--json")
    assert result.code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["vendor"] == "aperio" and info["associated"] == ["label", "macro", "thumbnail"]
    assert info["objective_power"] == "20" and info["levels"][0]["pixel_size"] == 0.5
    assert info["levels"][1]["downsample"] == 4.0
    scene = write_scene(tmp_path / "s.tif", SyntheticScene(300, 300))
    geo = json.loads(run_cli("info", scene, "--json").stdout)
    assert geo["crs"] == "EPSG:32633" and geo["unit"] == "m"
    assert geo["levels"][0]["pixel_size"] == 10.0 and geo["nodata"] == 0
    table = run_cli("info", scene)
    assert "EPSG:32633" in table.stdout and "10 m" in table.stdout and "nir" in table.stdout
