"""`wfe run` end to end: the demo, many inputs, bad inputs, exit codes, outputs."""

from __future__ import annotations

import importlib
import importlib.abc
import json
import shutil
import sys
from pathlib import Path

import dask
import pytest
import zarr
from PIL import Image

from conftest import MODEL, ROOT, ome_zarr_level, run_cli
from wfe_builtin.models.train_demo import dice_scores
from wfe_builtin.synthetic import SyntheticSlide

DEMO = ROOT / "workflows" / "demo.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(sample_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "results"
    result = run_cli("run", DEMO, "-i", sample_slide, "-o", out)
    return result, out


def test_demo_workflow_outputs(demo_run):
    result, out = demo_run
    assert result.code == 0, result.stderr
    record = json.loads((out / "run.json").read_text())["inputs"]
    (entry,) = record.values()
    assert entry["status"] == "done" and entry["error"] is None
    assert {Path(p).name for p in entry["outputs"]} == {"labels.ome.zarr", "overlay.png"}
    assert 0 < entry["info"]["seg"]["windows_skipped_fraction"] < 1
    assert (out / "wfe.log").read_text().count("done") >= 1
    overlay = Image.open(out / "slide" / "overlay.png")
    assert max(overlay.size) <= 1024 and overlay.mode == "RGB"
    assert not list((out / "slide").glob(".*partial"))


def test_demo_labels_match_the_truth(demo_run):
    """The shipped model, through the whole pipeline, finds tissue and nuclei (Dice ≥ 0.9)."""
    _, out = demo_run
    labels = ome_zarr_level(out / "slide" / "labels.ome.zarr")[0]
    assert labels.shape == (1024, 1024)
    _, truth = SyntheticSlide(2048, 2048, mpp=0.5, seed=3).render(0, 0, 1024, 1024, 2.0)
    dice = dice_scores(labels, truth, 3)
    assert dice[1] >= 0.9 and dice[2] >= 0.9, dice


def test_labels_are_ome_zarr_with_pixel_size(demo_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _, out = demo_run
    nodes = list(Reader(parse_url(str(out / "slide" / "labels.ome.zarr")))())
    image = nodes[0]
    assert len(image.data) >= 1 and image.data[0].shape == (1, 1024, 1024)
    multiscales = image.metadata["coordinateTransformations"]
    assert multiscales[0][0]["scale"] == [1.0, 1.0, 1.0]  # 1 µm/px, as read
    attrs = zarr.open_group(str(out / "slide" / "labels.ome.zarr"), mode="r").attrs.asdict()
    assert attrs["wfe"]["classes"] == ["background", "tissue", "nuclei"]


def test_many_inputs_one_bad_does_not_stop_the_others(sample_slide, tmp_path):
    not_image = tmp_path / "notes.tiff"
    not_image.write_text("these are my notes, not a slide")
    truncated = tmp_path / "truncated.tiff"
    data = sample_slide.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    good = tmp_path / "good.tiff"
    shutil.copy(sample_slide, good)
    missing = tmp_path / "missing.tiff"
    out = tmp_path / "out"
    result = run_cli("run", DEMO, "-i", missing, "-i", not_image, "-i", good, "-i", truncated,
                     "-o", out)
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    records = json.loads((out / "run.json").read_text())["inputs"]
    status = {Path(k).name: v["status"] for k, v in records.items()}
    assert status == {"missing.tiff": "failed", "notes.tiff": "failed", "good.tiff": "done",
                      "truncated.tiff": "failed"}
    for name in ("missing.tiff", "notes.tiff", "truncated.tiff"):
        error = records[str(tmp_path / name)]["error"]
        assert name in error and "\n" not in error
        assert sum(name in line for line in result.stderr.splitlines()) >= 1
    assert "no such file" in records[str(missing)]["error"]
    assert "truncated" in records[str(truncated)]["error"]
    assert "not an image" in records[str(not_image)]["error"]
    assert (out / "good" / "labels.ome.zarr" / "zarr.json").exists()


def test_rerun_keeps_other_outputs(sample_slide, tmp_path):
    """A later failing run does not touch what an earlier run wrote."""
    out = tmp_path / "out"
    assert run_cli("run", DEMO, "-i", sample_slide, "-o", out).code == 0
    before = (out / "slide" / "overlay.png").read_bytes()
    bad_card = tmp_path / "bad"
    bad_card.mkdir()
    shutil.copy(MODEL, bad_card / "m.safetensors")
    card = MODEL.with_suffix(".yaml").read_text()
    card = card.replace("in_channels: 3", "in_channels: 4").replace(
        "mean: [0.485, 0.456, 0.406]", "mean: [0.485, 0.456, 0.406, 0.5]").replace(
        "std: [0.229, 0.224, 0.225]", "std: [0.229, 0.224, 0.225, 0.2]")
    (bad_card / "m.yaml").write_text(card)
    result = run_cli("run", DEMO, "-i", sample_slide, "-o", out,
                     "--set", f"seg.model={bad_card / 'm.safetensors'}")
    assert result.code == 1
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert any("has 3 channels but model 'demo-tissue' expects 4" in line and "slide.tiff" in line
               for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "slide" / "overlay.png").read_bytes() == before


def test_bad_workflow_exits_2(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text(DEMO.read_text().replace("uses: tissue_mask", "uses: tisue_mask"))
    result = run_cli("run", wf, "-i", "x.tiff", "-o", tmp_path / "o")
    assert result.code == 2
    assert "did you mean 'tissue_mask'?" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("run", DEMO, "-i", tmp_path / "none.tiff", "-o", tmp_path / "o", "--debug")
    assert result.code == 1 and "Traceback" in result.stderr


def test_design_example_runs_as_written(sample_slide, tmp_path):
    """The workflow of the design document: two scales, rotation TTA, tissue mask."""
    out = tmp_path / "out"
    result = run_cli("run", ROOT / "workflows/slide-segmentation.yaml", "-i", sample_slide,
                     "-o", out)
    assert result.code == 0, result.stderr
    entry = next(iter(json.loads((out / "run.json").read_text())["inputs"].values()))
    assert entry["info"]["seg"]["forward_passes_per_window"] == 4
    labels = ome_zarr_level(out / "slide" / "labels.ome.zarr")[0]
    assert labels.shape == (2048, 2048)  # at 0.5 µm, the first scale
    _, truth = SyntheticSlide(2048, 2048, mpp=0.5, seed=3).render(0, 0, 2048, 2048)
    tissue_dice = dice_scores(labels > 0, truth > 0, 2)[1]
    assert tissue_dice > 0.9, tissue_dice


def test_each_window_runs_once_for_all_outputs(sample_slide, tmp_path, registry, monkeypatch):
    """Labels and overlay share one segmentation: no window is predicted twice."""
    from wfe.runner import run_input
    from wfe.workflow import load_workflow
    from wfe_builtin.models import loader

    # Loaded (warmed up, its layout timed) beforehand, as the stage asks for it.
    loader.load_model(MODEL, "cpu", "auto", registry, channels_last="auto")
    seen = []
    original = loader.LoadedModel.predict

    def counting(self, batch, tta=()):
        seen.append(len(batch))
        return original(self, batch, tta)

    monkeypatch.setattr(loader.LoadedModel, "predict", counting)
    workflow = load_workflow(DEMO, registry)
    summary = run_input(workflow, sample_slide, tmp_path / "slide", registry, device="cpu")
    assert len(summary["outputs"]) == 2
    assert sum(seen) == summary["info"]["seg"]["windows"] > 0


class _RecordImports(importlib.abc.MetaPathFinder):
    """Records attempts to import a module not yet imported (and lets them go on)."""

    def __init__(self, name: str) -> None:
        self.name, self.tries = name, 0

    def find_spec(self, fullname, path, target=None):
        self.tries += fullname == self.name
        return None


def test_a_run_never_looks_for_a_distributed_client(sample_slide, tmp_path, registry,
                                                    monkeypatch):
    """Building and computing the demo (a mask computed while building, rechunks, a
    pyramid, an overlay) neither imports distributed nor plans a rechunk for it."""
    from wfe.runner import run_input
    from wfe.workflow import load_workflow

    dask_rechunk = importlib.import_module("dask.array.rechunk")  # the module, not the function
    methods = []
    original = dask_rechunk._choose_rechunk_method

    def recording(*args, **kwargs):
        methods.append(dask.config.get("array.rechunk.method", None))
        return original(*args, **kwargs)

    monkeypatch.setattr(dask_rechunk, "_choose_rechunk_method", recording)
    monkeypatch.delitem(sys.modules, "distributed", raising=False)
    monkeypatch.setattr("dask.base._DISTRIBUTED_AVAILABLE", None)
    imports = _RecordImports("distributed")
    monkeypatch.setattr(sys, "meta_path", [imports, *sys.meta_path])
    run_input(load_workflow(DEMO, registry), sample_slide, tmp_path / "slide", registry,
              device="cpu")
    assert methods and set(methods) == {"tasks"}
    assert imports.tries == 0
