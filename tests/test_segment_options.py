"""Segment options: TTA flips, multi-band models, per-scale models, fusion, output dtypes,
and the models that must fail clearly (NaN, CUDA absent)."""

from __future__ import annotations

import functools
import types

import dask
import dask.array as da
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import MODEL
from wfe import ArchitectureSpec, Raster, hookimpl
from wfe.errors import WfeError
from wfe.grid import WindowGrid
from wfe.plugins import load_registry
from wfe.resolution import at_resolution
from wfe.stage import StageContext
from wfe.workflow import load_workflow
from wfe_builtin.models.layout import fastest
from wfe_builtin.models.loader import load_model, resolve_device
from wfe_builtin.stages.segment import SegmentParams, SegmentStage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(sample_slide, registry):
    from wfe.io import open_image

    return at_resolution(open_image(sample_slide, registry), 1.0, "t")  # 1024 × 1024 at 1 µm


def _run(tmp_path, registry, image, workflow_dir=MODEL.parent, **params):
    ctx = StageContext(input=tmp_path, output=tmp_path, workflow_dir=workflow_dir,
                       registry=registry, device="cpu", stage_id="seg")
    params.setdefault("model", MODEL.name)
    params.setdefault("window", 256)
    return SegmentStage(SegmentParams(image="image", **params)).run(ctx, image=image)


def test_flip_tta_averages_the_flips(image, demo_model):
    window = image.levels[0][:, :256, :256].compute()[None]
    flipped = demo_model.predict(window, ("flip",))
    manual = np.mean([demo_model.predict(window),
                      demo_model.predict(window[:, :, ::-1].copy())[:, :, ::-1],
                      demo_model.predict(window[:, :, :, ::-1].copy())[:, :, :, ::-1]], axis=0)
    np.testing.assert_allclose(flipped, manual, atol=1e-5)


def test_probability_dtypes(tmp_path, registry, image):
    crop = Raster(levels=[image.levels[0][:, :300, :400]], pixel_size=[1.0],
                  channels=image.channels)
    ref = _run(tmp_path, registry, crop)["probabilities"].data.compute()
    half = _run(tmp_path, registry, crop, probabilities_dtype="float16")["probabilities"]
    small = _run(tmp_path, registry, crop, probabilities_dtype="uint8")["probabilities"]
    assert half.dtype == np.float16 and small.dtype == np.uint8
    assert np.abs(half.data.compute().astype(np.float32) - ref).max() <= 1e-3
    assert np.abs(small.data.compute() / 255.0 - ref).max() <= 0.5 / 255 + 1e-6
    assert small.attrs["probability_scale"] == 255


def test_multiscale_fusion_equals_the_single_scale_runs_fused(tmp_path, registry, image):
    """Fusing 1 and 2 µm equals each scale run alone, the coarse one upsampled bilinearly
    (torch's ``interpolate``, half-pixel centres) and combined by mean, weights or max;
    per-scale models and a zero weight behave as they say."""
    import torch.nn.functional as F

    fine = _run(tmp_path, registry, image, scales=[1.0])["probabilities"].data.compute()
    coarse = _run(tmp_path, registry, image, scales=[2.0])["probabilities"]
    assert coarse.shape == (3, 512, 512)
    up = F.interpolate(torch.from_numpy(coarse.data.compute())[None], size=fine.shape[1:],
                       mode="bilinear", align_corners=False)[0].numpy()
    expected = {"mean": (fine + up) / 2, "weights": (3 * fine + up) / 4,
                "max": np.maximum(fine, up) / np.maximum(fine, up).sum(0, keepdims=True)}
    got = {"mean": _run(tmp_path, registry, image, scales=[1.0, 2.0]),
           "weights": _run(tmp_path, registry, image, scales=[1.0, 2.0], fuse_weights=[3, 1]),
           "max": _run(tmp_path, registry, image, scales=[1.0, 2.0], fuse="max")}
    for how, out in got.items():
        probs = out["probabilities"].data.compute()
        assert np.abs(probs - expected[how]).max() <= 1e-5, how
        assert (out["labels"].data.compute()[0] == expected[how].argmax(0)).mean() > 0.999
    assert np.abs(expected["mean"] - fine).max() > 1e-2  # the coarse scale does contribute
    mean = got["mean"]["probabilities"].data
    # A zero weight leaves the first scale alone; one model per scale equals one for both.
    weighted = _run(tmp_path, registry, image, scales=[1.0, 2.0],
                    fuse_weights=[1.0, 0.0])["probabilities"].data
    assert np.abs(fine[:, 100:400, 100:400] - weighted[:, 100:400, 100:400].compute()).max() <= 1e-5
    per_scale = _run(tmp_path, registry, image, scales=[1.0, 2.0],
                     model=[MODEL.name, MODEL.name])["probabilities"].data
    assert np.abs(mean[:, :300, :300].compute() - per_scale[:, :300, :300].compute()).max() <= 1e-6
    assert np.abs(mean[:, :300, :300].compute() - fine[:, :300, :300]).max() > 1e-3


def test_multiscale_chunks_are_fused_as_they_are_finished(tmp_path, registry, monkeypatch):
    """With two scales, a chunk of the first pass is fused and labelled soon after it is
    finished: what waits is a few chunks, not a row of them. On an image 24 chunks wide
    (a stand-in model, so that only the order matters), 2 to 4 waited at most; when the
    first pass waited only for the coarse pass's sums, not for their upsampling, 7 to 11."""
    from dask.callbacks import Callback

    from wfe_builtin.models.loader import LoadedModel

    def stand_in(self, batch, tta=()):
        return np.full((len(batch), 3, *batch.shape[2:]), 1 / 3, np.float32)

    monkeypatch.setattr(LoadedModel, "predict", stand_in)
    y, x = np.mgrid[:896, :10752]
    pixels = da.from_array(np.stack([(y * 7 + x * 3 + c) % 251 for c in range(3)])
                           .astype(np.uint8), chunks=(3, 512, 512))
    raster = Raster(levels=[pixels], pixel_size=[1.0], channels=("r", "g", "b"))

    class Waiting(Callback):
        """How many first-pass chunks are finished but not yet labelled, at most."""

        def __init__(self, finish: str) -> None:
            super().__init__()
            self.finish, self.now, self.most, self.labelled = finish, 0, 0, 0

        def _posttask(self, key, result, dsk, state, worker_id):
            name = key[0] if isinstance(key, tuple) else key
            if name == self.finish:
                self.now += 1
                self.most = max(self.most, self.now)
            elif name.startswith("_argmax"):
                self.now -= 1
                self.labelled += 1

    for _ in range(3):
        labels = _run(tmp_path, registry, raster, scales=[1.0, 2.0], overlap=32, chunk=448,
                      batch_size=2)["labels"].data
        assert labels.numblocks == (1, 2, 24)
        finishes = {k[0] for k in labels.__dask_graph__() if isinstance(k, tuple)
                    and str(k[0]).endswith("-finish")}
        first = max(finishes, key=lambda f: sum(1 for k in labels.__dask_graph__()
                                                 if isinstance(k, tuple) and k[0] == f))
        waiting = Waiting(first)
        with waiting:
            dask.compute(labels, scheduler="threads", num_workers=2, optimize_graph=False)
        assert waiting.labelled == 48
        assert waiting.most <= 6, waiting.most


def test_a_scale_that_is_not_a_multiple_of_the_first_is_a_clear_error(tmp_path, registry,
                                                                       image):
    from wfe.errors import InputError

    with pytest.raises(InputError, match=r"scale 1\.5 µm/px is not an integer multiple of "
                                         r"the first scale 1 µm/px; list scales that are "
                                         r"integer multiples of the first"):
        _run(tmp_path, registry, image, scales=[1.0, 1.5])


def test_per_scale_lists_are_checked(tmp_path, registry):
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"""
wfe: 1
stages:
  - {{id: image, uses: read, with: {{mpp: 1.0}}}}
  - id: seg
    uses: segment
    with: {{image: image, model: [{MODEL}, {MODEL}, {MODEL}], scales: [1, 2],
           fuse_weights: [1]}}
""")
    with pytest.raises(WfeError) as err:
        load_workflow(wf, registry)
    text = str(err.value)
    assert "3 models for 2 scales" in text and "fuse_weights: 1 weights for 2 scales" in text


def test_channels_last_gives_the_same_result(tmp_path, registry, image):
    crop = Raster(levels=[image.levels[0][:, :300, :400]], pixel_size=[1.0],
                  channels=image.channels)
    a = _run(tmp_path, registry, crop)["probabilities"].data.compute()
    b = _run(tmp_path, registry, crop, channels_last=True)["probabilities"].data.compute()
    assert np.abs(a - b).max() <= 1e-4


def test_fastest_takes_turns_and_keeps_each_best_time():
    now = [0.0]
    costs = {"a": iter([9, 5, 3, 3]), "b": iter([1, 30, 4, 4])}  # first call untimed

    def run(name):
        def go():
            now[0] += next(costs[name])
        return go

    # b's one slow turn (30) does not decide: best 4 against a's best 3.
    assert fastest({n: run(n) for n in costs}, rounds=3, clock=lambda: now[0]) == "a"
    costs = {"a": iter([1, 5, 5]), "b": iter([9, 2, 2])}
    assert fastest({n: run(n) for n in costs}, rounds=2, clock=lambda: now[0]) == "b"


def test_channels_last_auto_keeps_the_layout_it_timed_and_the_result(image, registry):
    auto = load_model(MODEL, "cpu", "fp32", registry, channels_last="auto")
    plain = load_model(MODEL, "cpu", "fp32", registry, channels_last=False)
    conv = next(m for m in auto.net.modules() if isinstance(m, torch.nn.Conv2d))
    # The network is in the layout the flag says (channels-last was faster, or not).
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == auto.channels_last
    assert isinstance(auto.channels_last, bool)
    window = image.levels[0][:, :256, :256].compute()[None]
    assert np.abs(auto.predict(window) - plain.predict(window)).max() <= 1e-4


def _plugin(name: str, build) -> types.ModuleType:
    mod = types.ModuleType(f"arch_{name}")
    mod.build = build

    @hookimpl
    def wfe_architectures():
        return [ArchitectureSpec(name, f"{__name__}:{build.__name__}")]

    mod.wfe_architectures = wfe_architectures
    return mod


class _NaNNet(torch.nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x) * float("nan")


def build_nan(card):
    return _NaNNet(len(card.classes))


def _card(path, architecture, encoder, channels, classes=("bg", "fg"), params=""):
    mean = ", ".join(["0.5"] * channels)
    std = ", ".join([str(0.1 * (i + 1)) for i in range(channels)])
    path.with_suffix(".yaml").write_text(
        f"name: {path.stem}\narchitecture: {architecture}\nencoder: {encoder}\n"
        f"in_channels: {channels}\nclasses: [{', '.join(classes)}]\n"
        f"normalize: {{scale: 255, mean: [{mean}], std: [{std}]}}\nmpp: 1.0\nwindow: 128\n"
        f"{params}")


def test_a_model_producing_nan_is_one_clear_error(tmp_path, image):
    registry = load_registry(autoload=False, extra_plugins=[("nan-arch", _plugin("NaNNet",
                                                                                  build_nan))])
    weights = tmp_path / "nan.safetensors"
    save_file(_NaNNet(2).state_dict(), str(weights))
    _card(weights, "NaNNet", "none", 3)
    crop = Raster(levels=[image.levels[0][:, :200, :200]], pixel_size=[1.0], channels=image.channels)
    with pytest.raises(WfeError, match="model 'nan' produced NaN"):  # caught at load, or later
        out = _run(tmp_path, registry, crop, workflow_dir=tmp_path, model="nan.safetensors",
                   window=128)
        out["labels"].data.compute()


def test_a_model_producing_nan_while_blending_on_the_device_is_one_clear_error(tmp_path):
    from wfe_builtin.models.card import load_card
    from wfe_builtin.models.loader import LoadedModel

    weights = tmp_path / "nan.safetensors"
    _card(weights, "NaNNet", "none", 3)
    model = LoadedModel(load_card(weights), _NaNNet(2).eval(), "cpu", None)
    region = np.full((3, 200, 260), 128, np.uint8)
    with pytest.raises(WfeError, match="model 'nan' produced NaN"):
        model.accumulate(region, [(10, 20), (10, 130), (72, 132)], (10, 20),
                         np.ones((128, 128), np.float32), 2)


@pytest.mark.parametrize("blend", ["gaussian", "crop"])
def test_blending_on_the_device_equals_blending_on_the_host(tmp_path, registry, image,
                                                            monkeypatch, blend):
    """The path a GPU takes (regions to the device, windows cut and blended there, the
    sums back), run on the CPU: the same probabilities and labels as numpy's blending,
    over chunks of several regions (the strips between them included) and a flip TTA,
    on an image whose sides are multiples of nothing."""
    from wfe_builtin.models import loader

    crop = Raster(levels=[image.levels[0][:, 13:714, 7:562]], pixel_size=[1.0],
                  channels=image.channels)
    params = {"chunk": 300, "overlap": 40, "tta": ["flip"], "blend": blend}
    host = _run(tmp_path, registry, crop, **params)
    expected = dask.compute(host["probabilities"].data, host["labels"].data)

    calls, blends = [], []
    accumulate = loader.LoadedModel._accumulate
    weights_on_device = loader.LoadedModel._weights_on_device

    def counted(self, region, starts, *args):
        calls.append(len(starts))
        return accumulate(self, region, starts, *args)

    def kept(self, weights):
        blends.append(weights_on_device(self, weights))
        return blends[-1]

    def no_host_blending(self, batch, tta=()):
        raise AssertionError("a window's prediction came back to the host")

    monkeypatch.setattr(loader.LoadedModel, "blends_on_device", property(lambda self: True))
    monkeypatch.setattr(loader.LoadedModel, "_accumulate", counted)
    monkeypatch.setattr(loader.LoadedModel, "_weights_on_device", kept)
    monkeypatch.setattr(loader.LoadedModel, "predict", no_host_blending)
    device = _run(tmp_path, registry, crop, **params)
    probs, labels = dask.compute(device["probabilities"].data, device["labels"].data)
    grid = WindowGrid(701, 555, 256, 40)
    assert len(calls) > 1 and sum(calls) == len(grid)  # every window once, region by region
    # The blending weights went to the device once, not once per region (each copy from
    # host memory would wait for the device's queued work, on a GPU).
    assert len(blends) == len(calls) and all(b is blends[0] for b in blends)
    assert np.abs(probs - expected[0]).max() <= 1e-5
    assert (labels != expected[1]).mean() < 1e-5  # float ties may round either way


def test_multiband_fpn_normalises_each_band(tmp_path, registry):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    net = smp.create_model("FPN", encoder_name="resnet18", encoder_weights=None, in_channels=4,
                           classes=3)
    weights = tmp_path / "fpn4.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    _card(weights, "FPN", "resnet18", 4, classes=("water", "land", "cloud"))
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (4, 12, 12)).astype(np.uint8)
    pixels = np.kron(base, np.ones((1, 16, 16), np.uint8))[:, :181, :167]
    scene = Raster(levels=[da.from_array(pixels, chunks=(4, 64, 64))], pixel_size=[1.0],
                   channels=("B2", "B3", "B4", "B8"))
    out = _run(tmp_path, registry, scene, workflow_dir=tmp_path, model=weights.name, window=128,
               overlap=32)
    probs = out["probabilities"].data.compute()
    assert probs.shape == (3, 181, 167) and out["probabilities"].channels == ("water", "land",
                                                                             "cloud")
    window = pixels[:, :128, :128][None].astype(np.float32)
    mean = np.full((1, 4, 1, 1), 0.5, np.float32)
    std = np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(1, 4, 1, 1)
    net.eval()
    with torch.inference_mode():
        direct = net(torch.from_numpy((window / 255 - mean) / std)).softmax(1).numpy()[0]
    # The top-left corner (before the next windows start at 39 and 53) is that window's alone.
    np.testing.assert_allclose(probs[:, :39, :39], direct[:, :39, :39], atol=1e-4)


def test_a_compiled_network_is_compiled_once_for_one_batch_shape(tmp_path, registry, image,
                                                                 monkeypatch):
    """``compile: true`` compiles the network (``torch.compile``, here a stand-in that
    records the shapes it is given) before the first chunk, for the run's batch size,
    and every batch runs in that shape: the short last batch is padded, as each new
    shape would compile again inside the run. The result is the uncompiled one's."""
    shapes, calls = [], []

    class Recorded(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            shapes.append(tuple(x.shape))
            return self.net(x)

    def compile_stand_in(net, **options):
        calls.append(options)
        return Recorded(net)

    monkeypatch.setattr(torch, "compile", compile_stand_in)
    crop = Raster(levels=[image.levels[0][:, :700, :600]], pixel_size=[1.0],
                  channels=image.channels)  # 3 × 3 windows: batches of 4, 4 and 1
    params = {"overlap": 32, "batch_size": 4, "channels_last": False}
    plain = _run(tmp_path, registry, crop, **params)["probabilities"].data.compute()
    assert not calls and not shapes
    out = _run(tmp_path, registry, crop, compile=True, **params)
    assert len(calls) == 1 and calls[0].get("dynamic") is False
    assert shapes == [(4, 3, 256, 256)]  # compiled before the first chunk
    compiled = out["probabilities"].data.compute()
    assert len(shapes) == 4 and set(shapes) == {(4, 3, 256, 256)}
    np.testing.assert_allclose(compiled, plain, atol=1e-5)


def test_auto_precision_is_fp16_on_every_cuda_device_and_fp32_elsewhere():
    """``precision: auto`` autocasts to fp16 on a CUDA device, whichever its index; fp32
    on the CPU, where bf16 is there on request."""
    from wfe_builtin.models.loader import _autocast_dtype

    assert _autocast_dtype("auto", "cuda") is torch.float16
    assert _autocast_dtype("auto", "cuda:1") is torch.float16
    assert _autocast_dtype("auto", "cpu") is None
    assert _autocast_dtype("bf16", "cpu") is torch.bfloat16


def test_cuda_asked_for_but_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(WfeError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") in ("cpu", "mps")


ARCHITECTURES = [("Unet", "resnet18", ""), ("UnetPlusPlus", "resnet18", ""), ("FPN", "resnet18", ""),
                 ("Linknet", "resnet18", ""), ("PSPNet", "resnet18", ""), ("PAN", "resnet18", ""),
                 ("MAnet", "resnet18", ""), ("DeepLabV3", "resnet18", ""),
                 ("DeepLabV3Plus", "resnet18", ""), ("UPerNet", "resnet18", ""),
                 ("Segformer", "resnet18", ""),
                 ("DPT", "tu-test_vit", "params: {dynamic_img_size: true}\n")]


@pytest.mark.parametrize("architecture,encoder,params", ARCHITECTURES,
                         ids=[a for a, _, _ in ARCHITECTURES])
def test_every_smp_architecture_runs_from_a_card(tmp_path, registry, architecture, encoder,
                                                 params):
    import segmentation_models_pytorch as smp
    from ruamel.yaml import YAML

    extra = YAML(typ="safe").load(params.replace("params: ", "")) if params else {}
    torch.manual_seed(0)
    net = smp.create_model(architecture, encoder_name=encoder, encoder_weights=None,
                           in_channels=4, classes=2, **extra)
    weights = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    _card(weights, architecture, encoder, 4, params=params)
    pixels = np.random.default_rng(0).integers(0, 255, (4, 150, 170)).astype(np.uint8)
    scene = Raster(levels=[da.from_array(pixels, chunks=(4, 64, 64))], pixel_size=[1.0])
    out = _run(tmp_path, registry, scene, workflow_dir=tmp_path, model=weights.name, window=128,
               overlap=32)
    probs = out["probabilities"].data.compute()
    assert probs.shape == (2, 150, 170)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert set(np.unique(out["labels"].data.compute())) <= {0, 1}


def test_batch_size_auto_fits_the_free_memory(tmp_path, registry, image, demo_model,
                                             monkeypatch):
    from wfe_builtin.models import loader

    crop = Raster(levels=[image.levels[0][:, :600, :600]], pixel_size=[1.0],
                  channels=image.channels)
    sizes: list[int] = []
    predict = loader.LoadedModel.predict

    def counting(self, batch, tta=()):
        sizes.append(len(batch))
        return predict(self, batch, tta)

    monkeypatch.setattr(loader.LoadedModel, "predict", counting)
    assert demo_model.window_bytes > 4 * 256 * 256 * 3  # measured at load, more than the input
    # Room for three windows in half the free memory: batches of three.
    monkeypatch.setattr(loader, "free_memory", lambda device: 6 * demo_model.window_bytes + 1)
    ctx = StageContext(input=tmp_path, output=tmp_path, workflow_dir=MODEL.parent,
                       registry=registry, device="cpu", stage_id="seg")
    out = SegmentStage(SegmentParams(image="image", model=MODEL.name, window=256,
                                     overlap=32)).run(ctx, image=crop)
    sizes.clear()  # loading may have run its one-window warm-up
    auto = out["probabilities"].data.compute(scheduler="synchronous")
    assert ctx.info["seg"]["batch_size"] == 3 and max(sizes) == 3 and sum(sizes) == 9
    # Plenty of memory: the CPU cap; the result does not depend on the batch size.
    monkeypatch.setattr(loader, "free_memory", lambda device: 2**40)
    capped = _run(tmp_path, registry, crop, overlap=32)["probabilities"].data
    sizes.clear()
    capped = capped.compute(scheduler="synchronous")
    assert max(sizes) == loader.BATCH_CAP["cpu"] == 4
    np.testing.assert_allclose(capped, auto, atol=1e-5)


def test_every_model_call_runs_on_the_one_torch_thread(tmp_path, registry, image,
                                                      monkeypatch):
    """Whichever threads compute the chunks (dask's workers), the network is loaded and
    called on one thread of the process: a thread per caller would make an OpenMP team
    per caller, and the teams together would outnumber the cores."""
    import threading

    from wfe_builtin.models import loader, torch_thread

    callers: set[int] = set()
    forwards: set[int] = set()
    predict = loader.LoadedModel.predict

    def recording(self, batch, tta=()):
        callers.add(threading.get_ident())
        return predict(self, batch, tta)

    monkeypatch.setattr(loader.LoadedModel, "predict", recording)
    out = _run(tmp_path, registry, image, overlap=32, chunk=320)
    model = load_model(MODEL, "cpu", "auto", registry, channels_last="auto")  # the run's
    handle = model.net.register_forward_pre_hook(
        lambda *_: forwards.add(threading.get_ident()))
    try:
        out["labels"].data.compute(scheduler="threads", num_workers=2)
    finally:
        handle.remove()
    assert len(callers) > 1  # several threads asked for predictions...
    assert forwards == {torch_thread._ident}  # ...and one thread ran them all
    assert threading.get_ident() not in forwards


def _decoded_on_the_device_as_by_the_reader(tmp_path, registry, monkeypatch, reader,
                                            decode: str, open_level) -> np.ndarray:
    """Run the segment stage on the level ``open_level()`` gives, first the reader
    decoding (``reader.<decode>``, counted), then the model decoding the tiles the
    reader described: the device's run decodes nothing through the reader, gives the
    reader's result, and ``decode_on_device: false`` is honoured. Its probabilities."""
    from wfe_builtin.models import loader

    reads, decoded = [], []
    read_encoded, decode_region = loader.LoadedModel.read_encoded, getattr(reader, decode)

    def counted_read(self, tiles, index):
        reads.append(index)
        return read_encoded(self, tiles, index)

    @functools.wraps(decode_region)  # dask passes block_info to what names it
    def counted_decode(*args, **kwargs):
        decoded.append(1)
        return decode_region(*args, **kwargs)

    monkeypatch.setattr(reader, decode, counted_decode)  # before the image's graph
    image = open_level()
    params = {"chunk": 300, "overlap": 40}
    host = _run(tmp_path, registry, image, **params)
    expected = dask.compute(host["probabilities"].data, host["labels"].data)
    assert decoded

    monkeypatch.setattr(loader.LoadedModel, "blends_on_device", property(lambda self: True))
    monkeypatch.setattr(loader.LoadedModel, "read_encoded", counted_read)
    ctx_records = {}
    monkeypatch.setattr(StageContext, "record", lambda self, k, v: ctx_records.update({k: v}))
    device = _run(tmp_path, registry, image, **params)
    assert ctx_records.get("decoded_on") == "cpu"
    checked = len(reads)  # the corner compared with the reader's decoding
    decoded.clear()
    probs, labels = dask.compute(device["probabilities"].data, device["labels"].data)
    assert len(reads) - checked > 1 and not decoded
    assert np.abs(probs - expected[0]).max() <= 1e-5
    assert (labels != expected[1]).mean() < 1e-5
    reads.clear()
    _run(tmp_path, registry, image, decode_on_device=False, **params)["labels"].data.compute()
    assert not reads and decoded  # asked not to: the reader decodes
    return probs


def test_jpeg_tiles_decoded_on_the_device_give_the_readers_result(tmp_path, registry,
                                                                  monkeypatch):
    """The GPU's path for a JPEG-tiled slide, run on the CPU: each region's compressed
    tiles go to the model, which decodes them (torchvision's ``decode_jpeg``, nvJPEG on a
    GPU) and blends there; the reader decodes none during the pass, and the result is
    the one the reader's decoding gives, on a level whose sides are not whole tiles."""
    from wfe.io import open_image
    from wfe_builtin.readers import tiff
    from wfe_builtin.synthetic.slide import SyntheticSlide, write_slide

    path = write_slide(SyntheticSlide(width=1403, height=1109, seed=4), tmp_path / "odd.tiff")
    probs = _decoded_on_the_device_as_by_the_reader(
        tmp_path, registry, monkeypatch, tiff, "_decode_region",
        lambda: at_resolution(open_image(path, registry), 1.0, "t"))  # level 1: 702 × 555
    assert probs.shape == (3, 555, 702)


def test_aperio_jpeg_tiles_are_decoded_on_the_device(tmp_path, registry, monkeypatch):
    """An Aperio slide, read through OpenSlide, laid out as the scanners write it (each
    tile's stream without the tables the page keeps in JPEGTables; a tile never written,
    which OpenSlide gives as white): on the device path its tiles are decoded by the
    model, tables merged in, and the result is OpenSlide's."""
    from imagefiles import write_aperio_jpeg
    from wfe.io import open_image
    from wfe_builtin.readers import openslide

    path = tmp_path / "slide.svs"
    write_aperio_jpeg(path, mpp=1.0, missing=((1, 1),))  # the model's pixel size

    def open_level():
        raster = open_image(path, registry)
        assert raster.attrs["reader"] == "openslide"
        assert len(raster.attrs["encoded"]) == 2  # both levels
        return at_resolution(raster, 1.0, "t")

    probs = _decoded_on_the_device_as_by_the_reader(tmp_path, registry, monkeypatch,
                                                    openslide, "_read_tile", open_level)
    assert probs.shape == (3, 1024, 768)


def test_tiles_a_device_decodes_otherwise_are_decoded_on_the_cpu(tmp_path, registry,
                                                                 monkeypatch, caplog):
    """A device decoder that gives other pixels than the reader's (here: every tile's
    stream swapped for another tile's) is caught on one corner before the pass: the
    CPU decodes, with a warning, and the result is the reader's."""
    from wfe.encoded import EncodedTiles
    from wfe.io import open_image
    from wfe_builtin.models import loader
    from wfe_builtin.synthetic.slide import SyntheticSlide, write_slide

    path = write_slide(SyntheticSlide(width=1024, height=1024, seed=4), tmp_path / "s.tiff")
    image = at_resolution(open_image(path, registry), 1.0, "t")
    tiles = image.attrs["encoded"][image.levels[0].name]
    wrong = EncodedTiles(tiles.codec, tiles.shape, tiles.tile,
                         lambda indices: tiles.fetch([(1 - r, 1 - c) for r, c in indices]))
    image = Raster(levels=image.levels, pixel_size=image.pixel_size, channels=image.channels,
                   attrs={**image.attrs, "encoded": {image.levels[0].name: wrong}})
    host = _run(tmp_path, registry, image, chunk=300)["labels"].data.compute()
    monkeypatch.setattr(loader.LoadedModel, "blends_on_device", property(lambda self: True))
    with caplog.at_level("WARNING"):
        device = _run(tmp_path, registry, image, chunk=300)["labels"].data.compute()
    assert "decode on cpu unlike the reader's decoding" in caplog.text
    assert (device != host).mean() < 1e-5


def test_the_next_chunk_starts_while_a_regions_sums_come_back(tmp_path, registry, image,
                                                              monkeypatch):
    """On the device path the model is handed to the next chunk once a region's passes
    are queued, before its sums are waited for (on a GPU they come back on a copy stream
    while the next region runs): every wait for sums comes after its chunk handed over."""
    from wfe import stitch
    from wfe_builtin.models import loader

    events = []
    accumulate, handed_over = loader.LoadedModel._accumulate, stitch._ReadGate.handed_over

    def queued(self, *args):
        wait = accumulate(self, *args)

        def waited():
            events.append("wait")
            return wait()

        return waited

    def handed(self):
        events.append("handed")
        handed_over(self)

    monkeypatch.setattr(loader.LoadedModel, "blends_on_device", property(lambda self: True))
    monkeypatch.setattr(loader.LoadedModel, "_accumulate", queued)
    monkeypatch.setattr(stitch._ReadGate, "handed_over", handed)
    crop = Raster(levels=[image.levels[0][:, :900, :700]], pixel_size=[1.0],
                  channels=image.channels)
    _run(tmp_path, registry, crop, chunk=200)["labels"].data.compute(scheduler="sync")
    assert events.count("wait") > 1
    assert events[:2] == ["handed", "wait"] and events.count("handed") >= events.count("wait")
    assert all(events[:n + 1].count("handed") >= events[:n + 1].count("wait")
               for n in range(len(events)))
