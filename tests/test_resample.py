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
