"""Window grid and stitching: MONAI's positions and weights, chunk-size independence."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference

from wfe.cores import available_cores
from wfe.grid import blend_weights, window_starts
from wfe.stitch import sliding_window_map


@pytest.mark.parametrize("size,window,overlap", [(1000, 256, 64), (517, 128, 32), (300, 300, 0),
                                                 (1031, 200, 50), (640, 128, 0)])
def test_window_starts_match_monai(size, window, overlap):
    interval = window - overlap if window != size else window
    slices = dense_patch_slices((size,), (window,), (interval,))
    assert window_starts(size, window, overlap) == [s[0].start for s in slices]


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_weights_match_monai(mode):
    ours = blend_weights(256, mode)
    theirs = compute_importance_map((256, 256), mode=mode).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def _toy_predict(batch: np.ndarray) -> np.ndarray:
    """A position-free, nonlinear stand-in for a network (two 'classes')."""
    x = batch.astype(np.float32) / 255.0
    a = np.tanh(x.mean(axis=1, keepdims=True) * 3 - 1 + 0.1 * np.roll(x[:, :1], 3, axis=2))
    return np.concatenate([a, 1 - a * a], axis=1)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 255, (3, 37, 41)).astype(np.float32)
    return np.kron(base, np.ones((1, 19, 23)))[:, :701, :913].astype(np.uint8)  # 701 × 913


@pytest.mark.parametrize("blend", ["gaussian", "constant", "cosine", "crop"])
def test_result_does_not_depend_on_chunk_size(image, blend):
    arr = da.from_array(image, chunks=(3, 128, 128))
    results = [sliding_window_map(arr, _toy_predict, out_channels=2, window=160, overlap=48,
                                  blend=blend, chunk=chunk).compute() for chunk in (97, 256, 1000)]
    for other in results[1:]:
        assert np.abs(results[0] - other).max() <= 1e-5


@pytest.mark.parametrize("mode,sigma_scale", [("gaussian", 0.125), ("gaussian", 0.3),
                                              ("constant", 0.125), ("cosine", 0.125),
                                              ("crop", 0.125)])
def test_toy_predictor_equals_monai(image, mode, sigma_scale):
    """Stitching equals MONAI's. For ``cosine`` and ``crop`` (modes MONAI lacks) MONAI is
    given our window weights as ``roi_weight_map``: the accumulation is still its own."""
    ours = sliding_window_map(da.from_array(image, chunks=(3, 200, 200)), _toy_predict,
                              out_channels=2, window=160, overlap=40, blend=mode,
                              sigma_scale=sigma_scale, chunk=300).compute()
    weights = None
    if mode in ("cosine", "crop"):
        weights = torch.from_numpy(blend_weights(160, mode, overlap=40).copy())[None, None]
    theirs = sliding_window_inference(
        torch.from_numpy(image[None].astype(np.float32)), (160, 160), 4,
        lambda t: torch.from_numpy(_toy_predict(t.numpy())), overlap=40 / 160,
        mode="constant" if weights is not None else mode, sigma_scale=sigma_scale,
        roi_weight_map=weights)
    assert np.abs(ours - theirs[0].numpy()).max() <= 1e-4


def _where_predict(batch: np.ndarray) -> np.ndarray:
    """The toy network plus a ramp across each window: it tells the windows apart."""
    ramp = np.linspace(0, 1, batch.shape[-1], dtype=np.float32)
    return _toy_predict(batch) + ramp


def test_crop_keeps_each_windows_centre(image):
    """With ``crop``, each pixel takes the prediction of the window whose centre holds it
    alone; ``cosine`` blends the neighbours there."""
    def stitched(blend: str) -> np.ndarray:
        return sliding_window_map(da.from_array(image, chunks=(3, 256, 256)), _where_predict,
                                  out_channels=2, window=160, overlap=40, blend=blend,
                                  chunk=256).compute()

    crop, cosine = stitched("crop"), stitched("cosine")
    first = _where_predict(image[None, :, :160, :160])[0]
    second = _where_predict(image[None, :, :160, 120:280])[0]
    # windows start at x = 0, 120, 240, ...: the first keeps x < 140, the second [140, 260)
    np.testing.assert_allclose(crop[:, 20:135, :140], first[:, 20:135, :140], atol=1e-4)
    np.testing.assert_allclose(crop[:, 20:135, 140:160], second[:, 20:135, 20:40], atol=1e-4)
    assert np.abs(cosine[:, 20:135, 125:140] - first[:, 20:135, 125:140]).max() > 1e-2


def test_skipped_windows_get_background(image):
    arr = da.from_array(image, chunks=(3, 256, 256))
    out = sliding_window_map(arr, _toy_predict, out_channels=2, window=160, overlap=48,
                             keep=lambda y, x: x > 400, background=np.array([7.0, 9.0]),
                             chunk=256).compute()
    assert (out[:, :, :300] == np.array([7.0, 9.0])[:, None, None]).all()
    assert not (out[:, :, -100:] == 7.0).any()


def test_reading_keeps_one_region_ahead_of_a_slow_model():
    """While the model runs on one chunk's windows, the next chunk's region is read and
    no more: free workers must not decode the whole image ahead of a slow model (it
    would all wait in memory). Overlapping regions read their shared image chunks
    again, at most once per region."""
    import threading
    import time

    from conftest import counted_chunks

    def pixels(c0, c1, y0, y1, x0, x1):
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return np.stack([np.sin(yy / 9.0) + np.cos(xx / 7.0)] * (c1 - c0)).astype(np.float32)

    image, computed = counted_chunks(pixels, np.float32, ((2,), (64,) * 12, (64,) * 12))
    read_when_called = []
    lock = threading.Lock()

    def slow_predict(batch):
        with lock:  # one batch at a time, as the model loader does
            read_when_called.append(len(computed))
            time.sleep(0.02)
            return _toy_predict(batch)

    out = sliding_window_map(image, slow_predict, out_channels=2, window=48, overlap=16,
                             chunk=96, batch_size=64)
    out.compute(scheduler="threads", num_workers=4)
    assert len(read_when_called) == 64  # one batch per output chunk (8 × 8)
    # Row by row, the first four chunks' regions cover the first two rows of the image's
    # 12 × 12 chunks; one region ahead adds a few: far from all 144.
    assert read_when_called[3] <= 2 * 12 + 3, read_when_called
    assert len(computed) == 144
    assert max(computed.values()) <= 4, computed


def test_one_chunk_of_a_pass_has_the_model_at_a_time(monkeypatch):
    """Chunks whose neighbours above and to the left are done (both of the second
    diagonal's) hand the model their batches one chunk after the other, not side by
    side: the model takes one batch at a time, so a second chunk under way would only
    hold its sums in memory beside the first's. The next chunk starts once the one
    before has handed over its last batch, so the model does not wait between them.
    The result is unchanged."""
    import functools
    import threading
    import time

    import wfe.stitch as stitch

    submitting, most = 0, 0
    lock = threading.Lock()
    accumulate = stitch._accumulate

    @functools.wraps(accumulate)
    def counted(*args, submitted, **kwargs):
        nonlocal submitting, most
        handed = False

        def hand_over():
            nonlocal submitting, handed
            with lock:
                if not handed:
                    handed = True
                    submitting -= 1
            submitted()

        with lock:
            submitting += 1
            most = max(most, submitting)
        try:
            return accumulate(*args, submitted=hand_over, **kwargs)
        finally:
            hand_over()

    model = threading.Lock()
    calls = 0

    def slow_predict(batch):
        nonlocal calls
        with model:  # one batch at a time, as the model loader does
            calls += 1
            time.sleep(0.01)
            return _toy_predict(batch)

    pixels = np.random.default_rng(3).integers(0, 255, (3, 431, 389)).astype(np.float32)
    image = da.from_array(pixels, chunks=(3, 100, 100))
    expected = sliding_window_map(image, _toy_predict, out_channels=2, window=64, overlap=16,
                                  chunk=96, batch_size=4).compute(scheduler="synchronous")
    monkeypatch.setattr(stitch, "_accumulate", counted)
    out = sliding_window_map(image, slow_predict, out_channels=2, window=64, overlap=16,
                             chunk=96, batch_size=4)
    result = out.compute(scheduler="threads", num_workers=4)
    assert calls > 0
    assert most == 1, f"{most} chunks handed the model batches at once"
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_finished_chunks_are_written_before_more_are_made():
    """A fast model must not run ahead of what consumes its output (a writer): finished
    chunks waiting to be written would pile up in memory, a whole row and more of
    them on a wide image."""
    import threading
    import time

    image = da.from_array(np.random.default_rng(3).integers(0, 255, (2, 640, 1280), np.uint8),
                          chunks=(2, 64, 64))
    lock = threading.Lock()
    made, written, waiting = [0], [0], []

    def fast_predict(batch):
        with lock:
            made[0] += 1
            waiting.append(made[0] - written[0])
        return _toy_predict(batch)

    def write(block):
        time.sleep(0.01)  # the writer is the slower side
        with lock:
            written[0] += 1
        return block[:1, :1, :1]

    out = sliding_window_map(image, fast_predict, out_channels=2, window=48, overlap=16,
                             chunk=32, batch_size=64)
    assert out.numblocks[1:] == (20, 40)
    out.map_blocks(write, chunks=(1, 1, 1)).compute(scheduler="threads", num_workers=2)
    assert made[0] > 700  # about one batch per output chunk
    # Made and not yet written: a handful at most, not a growing part of a row (made
    # first and written later, as dask orders it when reading is chained to the chunks
    # before: 95th percentile 18 and at most 23 here, 9 and 13 on an image half as wide).
    typical, most = sorted(waiting)[int(0.95 * len(waiting))], max(waiting)
    assert typical <= 5 and most <= 14, (typical, most)


def test_building_the_graph_grows_with_the_chunk_count_not_its_square():
    """A 100,000² slide has thousands of output chunks; building its graph must take
    seconds, not minutes (one dask.delayed call per chunk merged every earlier chunk's
    graph: 16× the chunks took 53× the time)."""
    import time

    def seconds_per_chunk(side: int) -> float:
        image = da.zeros((3, side * 32, side * 32), np.uint8, chunks=(3, 256, 256))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            out = sliding_window_map(image, _toy_predict, out_channels=2, window=48,
                                     overlap=16, chunk=32)
            best = min(best, time.perf_counter() - start)
        assert out.numblocks[1:] == (side, side)
        return best / side**2

    small, large = seconds_per_chunk(10), seconds_per_chunk(40)
    assert large < 3 * small, f"{large / small:.1f}× the time per chunk at 16× the chunks"


def test_next_batch_is_prepared_while_the_model_runs():
    """Within a chunk, the next batch is cut out and handed to ``predict`` (which
    normalises it outside its model's lock) while the model runs on the current one,
    and the result is the same as one batch after the other."""
    import threading
    import time

    image = np.random.default_rng(4).integers(0, 255, (3, 300, 300), np.uint8)
    model_lock, log_lock = threading.Lock(), threading.Lock()
    calls, inside = [], [0]

    def predict(batch):
        with log_lock:
            calls.append(inside[0])  # how many calls were inside when this one began
            inside[0] += 1
        try:
            with model_lock:  # one batch at a time, as a loaded model runs
                time.sleep(0.02)
                return _toy_predict(batch)
        finally:
            with log_lock:
                inside[0] -= 1

    kwargs = dict(out_channels=2, window=64, overlap=16, chunk=4096, batch_size=4)
    out = sliding_window_map(da.from_array(image, chunks=(3, 300, 300)), predict, **kwargs)
    assert out.numblocks == (1, 1, 1)  # one chunk: any overlap is within it
    result = out.compute(scheduler="synchronous")
    assert len(calls) == 9  # 36 windows in batches of 4
    assert max(calls) >= 1, calls  # a batch was handed over while another ran
    one_by_one = sliding_window_map(da.from_array(image, chunks=(3, 300, 300)),
                                    _toy_predict, **{**kwargs, "batch_size": 36})
    np.testing.assert_array_equal(result, one_by_one.compute(scheduler="synchronous"))


def test_a_region_is_read_from_the_blocks_under_it():
    """``read_region`` equals slicing, for any region of a derived array whose blocks
    split every axis unevenly, on one thread or several, and computes only the
    blocks under the region."""
    from conftest import counted_chunks
    from wfe.stitch import read_region

    def pixels(c0, c1, y0, y1, x0, x1):
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return np.stack([(yy * 7 + xx * 3 + c) % 251 for c in range(c0, c1)]).astype(np.uint8)

    base, computed = counted_chunks(pixels, np.uint8, ((2, 1), (100,) * 7 + (1,),
                                                        (128,) * 7 + (17,)))
    image = (base + 1)[:, 5:, 7:]
    expected = image.compute()
    rng = np.random.default_rng(0)
    for workers in (1, 2):
        for _ in range(40):
            y0, x0 = rng.integers(0, 690), rng.integers(0, 900)
            y1, x1 = rng.integers(y0 + 1, 697), rng.integers(x0 + 1, 907)
            c0 = rng.integers(0, 3)
            region = (slice(c0, 3), slice(y0, y1), slice(x0, x1))
            np.testing.assert_array_equal(read_region(image, region, workers), expected[region])
    computed.clear()
    read_region(image, (slice(None), slice(0, 90), slice(0, 100)))
    assert sorted(computed) == [(0, 0)], computed  # one block row and column, both planes


def test_the_first_region_is_read_alone_on_every_core():
    """Nothing can run before the first region is read: it is read with every core's
    help and no other read competes with it; later reads start only once it ends."""
    import threading
    import time

    import wfe.stitch as stitch
    from conftest import counted_chunks

    def pixels(c0, c1, y0, y1, x0, x1):
        time.sleep(0.01)
        return np.full((c1 - c0, y1 - y0, x1 - x0), 100, np.uint8)

    image, _ = counted_chunks(pixels, np.uint8, ((1,), (32,) * 8, (32,) * 8))
    spans, lock = [], threading.Lock()
    read = stitch.read_region

    def timed_read(img, region, workers=1, shared=None):
        start = time.perf_counter()
        with lock:
            index = len(spans)
            spans.append([start, None, workers])
        try:
            return read(img, region, workers, shared)
        finally:
            spans[index][1] = time.perf_counter()

    stitch.read_region = timed_read
    try:
        out = sliding_window_map(image, _toy_predict_one, out_channels=2, window=48,
                                 overlap=16, chunk=96, batch_size=64)
        out.compute(scheduler="threads", num_workers=4)
    finally:
        stitch.read_region = read
    _, first_end, first_workers = spans[0]
    assert first_workers == available_cores() and all(w == 1 for _, _, w in spans[1:])
    assert all(start >= first_end for start, _, _ in spans[1:]), spans
    assert len(spans) > 4


def _toy_predict_one(batch: np.ndarray) -> np.ndarray:
    return _toy_predict(np.repeat(batch, 3, axis=1))


def test_labels_come_from_the_sums_without_dividing():
    """The class with the largest weighted sum is the most probable blended class, and
    pixels no kept window reaches get the background's class."""
    from wfe.stitch import blend_block, sliding_window_sums
    from wfe_builtin.stages.segment import _argmax, _labels_from_sums

    rng = np.random.default_rng(2)
    pixels = da.from_array(rng.integers(0, 255, (3, 301, 433), np.uint8), chunks=(3, 97, 120))

    def three(batch):
        two = _toy_predict(batch)
        return np.concatenate([two, np.abs(two[:, :1] - two[:, 1:])], axis=1)

    background = np.array([0.0, 0.0, 1.0], np.float32)
    sums = sliding_window_sums(pixels, three, out_channels=3, window=64, overlap=16, chunk=100,
                               keep=lambda y, x: x < 200).compute()
    assert sums.shape == (4, 301, 433) and (sums[3, :, -100:] == 0).all()
    labels = _labels_from_sums(sums, background)
    np.testing.assert_array_equal(labels, _argmax(blend_block(sums, background)))
    assert (labels[0, :, -100:] == 2).all() and (labels[0, :, :200] != 2).any()


@pytest.mark.parametrize("workers", [1, 3])
def test_blocks_under_two_regions_are_decoded_once(monkeypatch, workers):
    """A region's margin reaches into the blocks of the next chunks: those blocks are
    kept for the regions that need them too, in whatever order they are read, and let
    go by the last. Without the store (a budget of nothing) they are decoded again,
    and the result is the same either way. (Two reads at once, with more workers than
    the model leaves idle, may both decode a block.)"""
    import wfe.block_cache
    from conftest import counted_chunks

    def pixels(c0, c1, y0, y1, x0, x1):
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return np.stack([(yy * 5 + xx * 11 + c * 7) % 253 for c in range(c0, c1)]).astype(np.uint8)

    chunks = ((3,), (64,) * 10 + (37,), (64,) * 12 + (29,))  # 677 × 797, blocks of 64
    kwargs = {"out_channels": 2, "window": 96, "overlap": 32, "chunk": 192, "batch_size": 8}
    results, decodes = [], []
    for budget in (None, 0):
        monkeypatch.setattr(wfe.block_cache, "DEFAULT_BUDGET",
                            wfe.block_cache.DEFAULT_BUDGET if budget is None else 0)
        image, computed = counted_chunks(pixels, np.uint8, chunks)
        out = sliding_window_map(image, _toy_predict, **kwargs)
        results.append(out.compute(scheduler="threads", num_workers=workers))
        decodes.append(computed)
    shared, alone = decodes
    assert set(shared) == set(alone) and len(shared) == 11 * 13  # every block, read
    if workers == 1:
        assert max(shared.values()) == 1, shared  # ... once
    assert sum(alone.values()) > 1.3 * sum(shared.values()), alone  # without it, again
    np.testing.assert_array_equal(results[0], results[1])
