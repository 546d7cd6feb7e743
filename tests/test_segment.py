"""The segment stage with the shipped model: chunking, MONAI, bad models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from conftest import MODEL
from wfe.errors import InputError
from wfe.resolution import at_resolution
from wfe.stage import StageContext
from wfe_builtin.stages.segment import SegmentParams, SegmentStage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(sample_slide, registry):
    from wfe.io import open_image

    return at_resolution(open_image(sample_slide, registry), 2.0, "t")  # 512 × 512 at 2 µm


def _segment(ctx_dir, registry, image, **params):
    ctx = StageContext(input=ctx_dir, output=ctx_dir, workflow_dir=MODEL.parent,
                       registry=registry, device="cpu", stage_id="seg")
    params.setdefault("scales", [image.mpp])
    stage = SegmentStage(SegmentParams(image="image", model=MODEL.name, **params))
    return stage.run(ctx, image=image)


def test_segment_is_chunk_size_independent(tmp_path, registry, image):
    crop = image.select(0)
    crop = type(crop)(levels=[crop.levels[0][:, :437, :509]], pixel_size=[2.0],
                      channels=crop.channels)
    a = _segment(tmp_path, registry, crop, window=192, overlap=40, chunk=100)
    b = _segment(tmp_path, registry, crop, window=192, overlap=40, chunk=512)
    pa = a["probabilities"].data.compute()
    pb = b["probabilities"].data.compute()
    assert pa.shape == (3, 437, 509)
    assert np.abs(pa - pb).max() <= 1e-5
    assert (a["labels"].data.compute() == pb.argmax(0)).all()


@pytest.mark.parametrize("mode,tta", [("gaussian", []), ("constant", []),
                                      ("gaussian", ["rot90", "flip"]), ("constant", ["flip"])])
def test_segment_equals_monai(tmp_path, registry, image, demo_model, mode, tta):
    """The whole stage (reading, batching, TTA, stitching) against MONAI on the same image,
    MONAI's predictor being the same model with the same augmentations."""
    arr = image.levels[0][:, :437, :509]
    crop = type(image)(levels=[arr], pixel_size=[2.0], channels=image.channels)
    ours = _segment(tmp_path, registry, crop, window=192, overlap=48, blend=mode, tta=tta,
                    chunk=200)["probabilities"].data.compute()
    pixels = torch.from_numpy(arr.compute()[None].astype(np.float32))
    theirs = sliding_window_inference(
        pixels, (192, 192), 4,
        lambda t: torch.from_numpy(demo_model.predict(t.numpy(), tuple(tta))),
        overlap=48 / 192, mode=mode)[0].numpy()
    assert np.abs(ours - theirs).max() <= 1e-4


def test_rotation_tta_runs_every_rotation(tmp_path, registry, image, demo_model):
    window = image.levels[0][:, :256, :256].compute()[None]
    plain = demo_model.predict(window)
    tta = demo_model.predict(window, ("rot90",))
    manual = np.mean([np.rot90(demo_model.predict(np.rot90(window, k, (2, 3)).copy()), -k, (2, 3))
                      for k in range(4)], axis=0)
    np.testing.assert_allclose(tta, manual, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-4  # the rotations do contribute


def test_multiscale_fuses_on_the_first_grid(tmp_path, registry, sample_slide):
    from wfe.io import open_image

    raster = at_resolution(open_image(sample_slide, registry), 1.0, "t")
    out = _segment(tmp_path, registry, raster, scales=[1.0, 2.0], window=256, overlap=32)
    probs = out["probabilities"]
    assert probs.shape == (3, 1024, 1024) and probs.mpp == 1.0
    p = probs.levels[0][:, 200:600, 200:600].compute()
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-4)


def test_window_larger_than_image_is_a_clear_error(tmp_path, registry, image):
    with pytest.raises(InputError, match="window 1024 is larger than the image"):
        _segment(tmp_path, registry, image, window=1024)


def test_weights_that_do_not_match_the_card(tmp_path, registry, image):
    import shutil

    shutil.copy(MODEL, tmp_path / "m.safetensors")
    card = MODEL.with_suffix(".yaml").read_text().replace("[64, 32, 16, 16, 8]",
                                                          "[32, 32, 16, 16, 8]")
    (tmp_path / "m.yaml").write_text(card)
    ctx = StageContext(input=tmp_path, output=tmp_path, workflow_dir=tmp_path, registry=registry,
                       device="cpu", stage_id="seg")
    with pytest.raises(InputError, match="weights do not match the card"):
        SegmentStage(SegmentParams(image="i", model="m.safetensors")).run(ctx, image=image)
    (tmp_path / "m.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="cannot read weights"):
        SegmentStage(SegmentParams(image="i", model="m.safetensors")).run(ctx, image=image)


@pytest.mark.parametrize("classes", [1, 2, 3, 6])
def test_labels_are_the_first_most_probable_class(classes):
    from wfe_builtin.stages.segment import _argmax

    rng = np.random.default_rng(classes)
    # Probabilities in tenths: many pixels tie, and the first class of a tie wins.
    block = (rng.integers(0, 10, (classes, 37, 53)) / 10).astype(np.float32)
    labels = _argmax(block)
    assert labels.dtype == np.uint8 and labels.shape == (1, 37, 53)
    np.testing.assert_array_equal(labels[0], block.argmax(axis=0))
