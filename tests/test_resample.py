"""Integer area averaging: exact (the float mean rounded half up) for every integer type."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from wfe.resample import downsample


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32])
@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
def test_integer_mean_equals_float_mean_rounded_half_up(dtype: type, k: int) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(k)
    block = rng.integers(max(info.min, -30_000), min(info.max, 60_000), (2, 7 * k, 5 * k))
    block = block.astype(dtype)
    expected = np.floor(block.reshape(2, 7, k, 5, k).astype(np.float64).mean(axis=(2, 4)) + 0.5)
    out = downsample(da.from_array(block, chunks=(2, 2 * k, 3 * k)), k, "mean").compute()
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected.astype(dtype))


def _dense(image: np.ndarray, factor: float, shape: tuple[int, int], method: str) -> np.ndarray:
    """The whole image resampled at once with full weight matrices (float64)."""
    from wfe.resample import resample_weights

    _, h, w = image.shape
    wy = resample_weights(range(shape[0]), range(h), h, factor, method).astype(np.float64)
    wx = resample_weights(range(shape[1]), range(w), w, factor, method).astype(np.float64)
    return wy @ image.astype(np.float64) @ wx.T


@pytest.mark.parametrize("method,factor", [("linear", 0.5), ("linear", 1 / 3), ("linear", 0.4),
                                           ("area", 2.0), ("area", 3.0), ("area", 2.5),
                                           ("nearest", 0.5), ("nearest", 3.0)])
def test_chunked_resample_equals_the_whole_image_resampled_at_once(method, factor):
    """Each output chunk applies only the few weights per pixel its band holds, from the
    source chunks under it: the same as the full weight matrices over the whole image, for
    sizes and chunks that are multiples of nothing."""
    from wfe.resample import resample

    rng = np.random.default_rng(3)
    image = (rng.random((2, 173, 211)) * 255).astype(np.float32)
    shape = (round(173 / factor), round(211 / factor))
    got = resample(da.from_array(image, chunks=(2, 37, 53)), factor, shape, method,
                   chunk=61).compute()
    np.testing.assert_allclose(got, _dense(image, factor, shape, method), rtol=0, atol=2e-4)


def test_linear_upsampling_equals_torch_bilinear():
    """``linear`` samples at pixel centres, edges clamped: torch's bilinear interpolation
    with ``align_corners=False``."""
    import torch

    from wfe.resample import resample

    rng = np.random.default_rng(4)
    image = rng.random((3, 97, 131)).astype(np.float32)
    got = resample(da.from_array(image, chunks=(3, 40, 40)), 0.5, (194, 262), "linear",
                   chunk=64).compute()
    expected = torch.nn.functional.interpolate(torch.from_numpy(image)[None], size=(194, 262),
                                               mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_area_downsampling_by_an_integer_is_the_block_mean():
    from wfe.resample import resample

    rng = np.random.default_rng(5)
    image = rng.random((1, 120, 90)).astype(np.float32)
    got = resample(da.from_array(image, chunks=(1, 50, 35)), 3.0, method="area").compute()
    np.testing.assert_allclose(got, image.reshape(1, 40, 3, 30, 3).mean(axis=(2, 4)),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,factor,width", [("linear", 0.5, 2), ("linear", 0.25, 2),
                                                 ("area", 2.0, 2), ("area", 2.5, 4),
                                                 ("area", 4.0, 4), ("nearest", 0.5, 1)])
def test_each_output_pixel_reads_only_the_source_pixels_it_weighs(method, factor, width):
    """The band of a resampling matrix holds each row's few nonzero weights (no more
    than the method needs) and applies exactly as the full matrix does."""
    from wfe.resample import _apply_band, _band, resample_weights, source_span

    rows = range(30, 95)
    s0, s1 = source_span(rows.start, rows.stop, 400, factor, method)
    weights = resample_weights(rows, range(s0, s1), 400, factor, method)
    band = _band(weights)
    assert band[1].shape[1] <= width
    region = np.random.default_rng(6).random((2, s1 - s0, 7)).astype(np.float32)
    np.testing.assert_allclose(_apply_band(region, band, axis=1),
                               np.matmul(weights, region), rtol=0, atol=1e-6)


def test_a_row_without_weights_stays_zero():
    from wfe.resample import _apply_band, _band

    weights = np.array([[0, 0.5, 0.5, 0], [0, 0, 0, 0], [0, 0, 0.25, 0.75]], np.float32)
    band = _band(weights)
    assert band[1].shape[1] == 2
    region = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)  # y: 4 source pixels
    np.testing.assert_allclose(_apply_band(region, band, axis=1), np.matmul(weights, region))
