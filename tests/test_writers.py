"""Writers: OME-TIFF, COG, GeoJSON, statistics and NGFF labels land on the source's pixels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.features import rasterize
from shapely.geometry import shape

from conftest import run_cli
from imagefiles import corrupt_tile, shapes_truth, write_shapes_slide, write_tiled_jpeg
from wfe.checkpoint import CHECKPOINT_FOLDER
from wfe.errors import WfeError
from wfe.raster import Raster
from wfe_builtin.synthetic.scene import SyntheticScene, write_scene

SLIDE_WORKFLOW = """
wfe: 1
name: shapes
inputs: []
output: out
stages:
  - id: image
    uses: read
    with: {mpp: 2.0}
  - id: shapes
    uses: tissue_mask
    with: {image: image, mpp: 2.0, min_area: 0}
  - id: tif
    uses: write
    with: {data: shapes, path: "{output}/shapes.ome.tif", mpp: 0.5}
  - id: vectors
    uses: write
    with: {data: shapes, path: "{output}/shapes.geojson", options: {chunk: 128}}
  - id: stats
    uses: write
    with: {data: shapes, path: "{output}/shapes.csv", options: {chunk: 128}}
"""

SCENE_WORKFLOW = """
wfe: 1
name: scene
inputs: []
output: out
stages:
  - id: image
    uses: read
  - id: valid
    uses: tissue_mask
    with: {image: image, gsd: 40}
  - id: cog
    uses: write
    with: {data: valid, path: "{output}/valid.tif", gsd: 10}
  - id: vectors
    uses: write
    with: {data: valid, path: "{output}/valid.geojson", options: {chunk: 64}}
  - id: image_cog
    uses: write
    with: {data: image, path: "{output}/image.tif", options: {compression: zstd}}
"""


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _workflow(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workflow.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    tmp = tmp_path_factory.mktemp("shapes")
    truth = shapes_truth()
    slide = write_shapes_slide(tmp / "shapes.tiff", truth)
    result = run_cli("run", _workflow(tmp, SLIDE_WORKFLOW), "-i", slide, "-o", tmp / "out")
    assert result.code == 0, result.stderr
    return tmp / "out", truth


def test_labels_at_level0_land_on_the_shapes_in_ome_tiff(shapes_run):
    out, truth = shapes_run
    path = out / "shapes" / "shapes.ome.tif"
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        labels = series.asarray()
        assert len(series.levels) >= 3 and tif.pages[0].is_tiled
        assert "classes" in json.dumps(tif.ome_metadata)
    assert labels.shape == truth.shape  # inference ran 4× coarser; written on level 0's grid
    assert _iou(labels == 1, truth) >= 0.99
    import openslide

    osr = openslide.OpenSlide(path)
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    region = np.asarray(osr.read_region((900, 900), 0, (400, 300)))[..., 0]
    assert np.array_equal(region, labels[900:1200, 900:1300])


def test_geojson_objects_are_whole_aligned_and_keep_holes(shapes_run):
    out, truth = shapes_run
    data = json.loads((out / "shapes" / "shapes.geojson").read_text())
    features = data["features"]
    # The shapes span many 128-pixel chunks: each is still one feature.
    assert len(features) == 3
    props = features[0]["properties"]
    assert props["classification"] == {"name": "tissue", "color": [44, 160, 44]}
    assert props["objectType"] == "annotation"
    polys = [shape(f["geometry"]) for f in features]
    assert sorted(len(p.interiors) for p in polys) == [0, 0, 1]  # the ring keeps its hole
    assert all(p.exterior.is_ccw and not any(h.is_ccw for h in p.interiors) for p in polys)
    drawn = rasterize([(p, 1) for p in polys], out_shape=truth.shape).astype(bool)
    assert _iou(drawn, truth) >= 0.99
    # Centroids in level-0 pixel coordinates (pixel i spans [i, i + 1)): within half a
    # pixel of the true ones, though the mask was made at 4 level-0 pixels per pixel.
    true_centres = {(1100.5, 1100.5), (1300.5, 2900.5), (3000.5, 2000.5)}
    for p in polys:
        cy, cx = p.centroid.y, p.centroid.x
        assert min(np.hypot(cy - ty, cx - tx) for ty, tx in true_centres) < 0.5
    # Areas in µm²: the mask's pixels at 2 µm.
    total = sum(f["properties"]["area"] for f in features)
    assert total == pytest.approx(truth.sum() * 0.25, rel=0.01)


def test_statistics_csv_and_run_json_agree_with_the_objects(shapes_run):
    out, truth = shapes_run
    rows = {r["class"]: r for r in csv.DictReader((out / "shapes" / "shapes.csv").open())}
    assert int(rows["tissue"]["objects"]) == 3 and rows["tissue"]["area_unit"] == "µm²"
    assert float(rows["tissue"]["area"]) == pytest.approx(truth.sum() * 0.25, rel=0.01)
    assert int(rows["tissue"]["pixels"]) + int(rows["background"]["pixels"]) == 1024 * 1024
    info = json.loads((out / "run.json").read_text())["inputs"]
    (record,) = info.values()
    assert record["info"]["stats"]["stats"]["tissue"]["objects"] == 3
    assert record["info"]["vectors"]["objects"] == {"tissue": 3}


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticScene, Path]:
    tmp = tmp_path_factory.mktemp("scene")
    scene = SyntheticScene(1536, 1280, seed=4, nodata_fraction=0.3)
    src = write_scene(tmp / "scene.tif", scene)
    result = run_cli("run", _workflow(tmp, SCENE_WORKFLOW), "-i", src, "-o", tmp / "out")
    assert result.code == 0, result.stderr
    return tmp / "out" / "scene", scene, src


def test_cog_is_valid_and_on_the_source_grid(scene_run):
    from rio_cogeo.cogeo import cog_validate

    out, scene, src = scene_run
    truth = scene.valid(0, 0, scene.height, scene.width)
    with rasterio.open(out / "valid.tif") as cog, rasterio.open(src) as source:
        assert cog.crs == source.crs and cog.transform == source.transform
        assert cog.shape == source.shape and cog.overviews(1)
        assert cog.colormap(1)[1][:3] == (44, 160, 44)
        assert json.loads(cog.tags()["wfe_classes"]) == ["nodata", "valid"]
        valid = cog.read(1) == 1
    assert _iou(valid, truth) >= 0.99  # mask made at 40 m, written on the 10 m grid
    for name in ("valid.tif", "image.tif"):
        ok, errors, _ = cog_validate(out / name)
        assert ok, errors
    with rasterio.open(out / "image.tif") as cog, rasterio.open(src) as source:
        assert np.array_equal(cog.read(), source.read()) and cog.nodata == source.nodata


def test_geojson_of_geodata_is_in_the_crs(scene_run):
    out, scene, src = scene_run
    data = json.loads((out / "valid.geojson").read_text())
    assert data["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    polys = [shape(f["geometry"]) for f in data["features"]]
    assert len(polys) == 1  # one swath, though cut into 64-pixel chunks
    # RFC 7946: outer rings counter-clockwise in the CRS (the raster's y axis points down).
    assert polys[0].exterior.is_ccw
    with rasterio.open(src) as source:
        drawn = rasterize([(p, 1) for p in polys], out_shape=source.shape,
                          transform=source.transform).astype(bool)
    truth = scene.valid(0, 0, scene.height, scene.width)
    assert _iou(drawn, truth) >= 0.99
    assert data["features"][0]["properties"]["area_unit"] == "m²"


def test_labels_go_into_the_image_as_ngff_labels(sample_slide, tmp_path):
    workflow = _workflow(tmp_path, """
wfe: 1
name: labels
inputs: []
output: out
stages:
  - {id: image, uses: read, with: {mpp: 2.0}}
  - {id: tiled, uses: tile, with: {image: image, path: "{output}/image.ome.zarr"}}
  - {id: tissue, uses: tissue_mask, with: {image: image, mpp: 2.0}}
  - {id: save, uses: write, with: {data: tissue, path: "{output}/image.ome.zarr/labels/tissue"}}
""")
    result = run_cli("run", workflow, "-i", sample_slide, "-o", tmp_path / "out")
    assert result.code == 0, result.stderr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(tmp_path / "out" / "slide" / "image.ome.zarr")))())
    label = next(n for n in nodes if "properties" in n.metadata)
    assert label.metadata["properties"][1] == {"class": "tissue"}
    assert label.metadata["color"][1][:3] == pytest.approx([44 / 255, 160 / 255, 44 / 255])
    assert label.data[0].shape[1:] == nodes[0].data[0].shape[1:]
    assert not list((tmp_path / "out" / "slide").glob(".*"))


def _line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("error")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(("path", "expected"), [
    ("{output}/../../escape.tif", "leads out of the output folder"),
    ("{output}/{sample}.tif", "unknown field {sample}"),
])
def test_bad_write_paths_are_refused_before_running(tmp_path, path, expected):
    workflow = _workflow(tmp_path, SLIDE_WORKFLOW.replace("{output}/shapes.ome.tif", path))
    result = run_cli("validate", workflow)
    assert result.code == 2 and expected in result.stderr, result.stderr


def test_an_output_folder_that_cannot_be_written(sample_slide, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("run", _workflow(tmp_path, SLIDE_WORKFLOW), "-i", sample_slide,
                     "-o", blocker / "out")
    assert result.code == 2
    assert "cannot write to the output folder" in _line(result.stderr)


def test_geotiff_of_a_slide_fails_alone(sample_slide, tmp_path):
    scene = write_scene(tmp_path / "scene.tif", SyntheticScene(512, 512, seed=1))
    workflow = _workflow(tmp_path, SCENE_WORKFLOW)
    result = run_cli("run", workflow, "-i", sample_slide, "-i", scene, "-o", tmp_path / "out")
    assert result.code == 1
    assert "a GeoTIFF needs a CRS" in _line(result.stderr)
    assert (tmp_path / "out" / "scene" / "valid.tif").exists()
    assert not list((tmp_path / "out" / "slide").iterdir())


def test_existing_outputs_are_kept_unless_overwrite(tmp_path):
    truth = shapes_truth(1024)
    slide = write_shapes_slide(tmp_path / "small.tiff", truth)
    workflow = _workflow(tmp_path, SLIDE_WORKFLOW)
    assert run_cli("run", workflow, "-i", slide, "-o", tmp_path / "out").code == 0
    target = tmp_path / "out" / "small" / "shapes.geojson"
    target.write_text("kept")
    # Run again (not resumed): an output someone changed since wfe wrote it is kept.
    result = run_cli("run", workflow, "-i", slide, "-o", tmp_path / "out", "--no-resume")
    assert result.code == 1 and "exists already" in _line(result.stderr)
    assert target.read_text() == "kept"
    result = run_cli("run", workflow, "-i", slide, "-o", tmp_path / "out",
                     "--set", "tif.overwrite=true", "--set", "vectors.overwrite=true",
                     "--set", "stats.overwrite=true")
    assert result.code == 0, result.stderr
    assert json.loads(target.read_text())["type"] == "FeatureCollection"


def test_a_failed_write_leaves_nothing_that_looks_complete(tmp_path):
    slide = tmp_path / "broken.tiff"
    write_tiled_jpeg(slide, (1024, 1024))
    corrupt_tile(slide, 10)
    model = Path(__file__).resolve().parents[1] / "workflows" / "models" / "demo.safetensors"
    workflow = _workflow(tmp_path, f"""
wfe: 1
name: broken
inputs: []
output: out
stages:
  - {{id: image, uses: read, with: {{mpp: 1.0}}}}
  - {{id: seg, uses: segment, with: {{image: image, model: {model}, window: 256, overlap: 32}}}}
  - {{id: a, uses: write, with: {{data: seg.labels, path: "{{output}}/labels.ome.tif"}}}}
  - {{id: b, uses: write, with: {{data: seg.labels, path: "{{output}}/labels.geojson"}}}}
  - {{id: c, uses: write, with: {{data: seg.labels, path: "{{output}}/labels.csv"}}}}
  - {{id: d, uses: write, with: {{data: image, path: "{{output}}/image.ome.tif"}}}}
""")
    result = run_cli("run", workflow, "-i", slide, "-o", tmp_path / "out")
    assert result.code == 1 and "cannot decode the tile" in _line(result.stderr)
    # Only the chunks the segmentation finished, kept for the next attempt (wfe.checkpoint).
    assert [p.name for p in (tmp_path / "out" / "broken").iterdir()] == [CHECKPOINT_FOLDER]


def test_more_classes_than_colours_is_one_clear_error(tmp_path):
    import dask.array as da

    from wfe_builtin.writers.cog import CogWriter
    from wfe_builtin.writers.geojson import GeoJsonWriter

    labels = Raster(levels=[da.zeros((1, 64, 64), np.uint8)], pixel_size=[1.0],
                    crs="EPSG:32633", transform=(10, 0, 0, 0, -10, 0),
                    attrs={"classes": ["a", "b", "c"], "colors": ["#000000", "#ff0000"]})
    for writer in (GeoJsonWriter(), CogWriter()):
        with pytest.raises(WfeError, match="3 classes but only 2 colours"):
            writer.write(labels, tmp_path / "x.out")
    assert not list(tmp_path.iterdir())


def test_each_chunk_is_computed_once_whatever_the_writers(tmp_path):
    """The runner computes all sinks of an input together: a chunk of the data (e.g. a
    segmentation) must be computed once for all of them, not once per writer or per
    pyramid level."""
    import dask

    from conftest import counted_chunks
    from wfe.plugins import load_registry
    from wfe.raster import Raster

    def labels(c0, c1, y0, y1, x0, x1):
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return (((yy // 37 + xx // 53) % 3) * ((yy % 37) > 4))[None].astype(np.uint8)

    arr, computed = counted_chunks(labels, np.uint8, ((1,), (256,) * 5, (256,) * 5))
    raster = Raster(levels=[arr], crs="EPSG:32633", transform=(10.0, 0, 5e5, 0, -10.0, 5e6),
                    channels=("labels",), attrs={"classes": ["background", "a", "b"]})
    registry = load_registry()
    sinks = [registry.writer_for(fmt).load()().write(raster, tmp_path / f"out{suffix}")
             for fmt, suffix in (("ome-tiff", ".ome.tif"), ("cog", ".tif"),
                                 ("geojson", ".geojson"), ("csv", ".csv"),
                                 ("ome-zarr", ".ome.zarr"))]
    with dask.config.set(scheduler="threads", num_workers=2):
        dask.compute(*[w for s in sinks for w in s.work], optimize_graph=False)
    for sink in sinks:
        sink.finalize()
    assert len(computed) == 25
    assert set(computed.values()) == {1}, computed
