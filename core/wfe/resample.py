"""Lazy, chunk-wise resampling of (c, y, x) dask arrays by integer factors."""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np

__all__ = ["downsample", "integer_factor", "upsample_linear"]


def integer_factor(ratio: float, tolerance: float = 0.05) -> int | None:
    """``round(ratio)`` if ``ratio`` is within ``tolerance`` of an integer ≥ 1, else ``None``."""
    k = round(ratio)
    return k if k >= 1 and abs(ratio - k) <= tolerance * k else None


def downsample(arr: da.Array, k: int, method: str = "mean") -> da.Array:
    """Shrink y and x by ``k``: area average (``mean``) or every k-th pixel (``nearest``,
    for labels). Edges are replicated to complete a partial last block."""
    if k == 1:
        return arr
    if method == "nearest":
        return arr[:, k // 2::k, k // 2::k]
    _, h, w = arr.shape
    ph, pw = (-h) % k, (-w) % k
    if ph or pw:
        arr = da.pad(arr, ((0, 0), (0, ph), (0, pw)), mode="edge")
    cy, cx = (max(k, c[0] // k * k) for c in arr.chunks[1:])
    arr = arr.rechunk((-1, cy, cx))
    out = da.coarsen(np.mean, arr, {1: k, 2: k})
    if arr.dtype.kind in "ui":
        out = da.round(out).astype(arr.dtype)
    return out


def _bilinear_block(block: np.ndarray, k: int) -> np.ndarray:
    """Upsample a block that carries a 1-pixel halo; return the core, ``k`` times larger."""
    c, h, w = block.shape
    core_h, core_w = (h - 2) * k, (w - 2) * k
    # Centres of the fine pixels in the coarse (halo) block's coordinates.
    ys = (np.arange(core_h) + 0.5) / k - 0.5 + 1
    xs = (np.arange(core_w) + 0.5) / k - 0.5 + 1
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 2)
    fy = (ys - y0).astype(np.float32)[None, :, None]
    fx = (xs - x0).astype(np.float32)[None, None, :]
    b = block.astype(np.float32)
    top = b[:, y0][:, :, x0] * (1 - fx) + b[:, y0][:, :, x0 + 1] * fx
    bottom = b[:, y0 + 1][:, :, x0] * (1 - fx) + b[:, y0 + 1][:, :, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def upsample_linear(arr: da.Array, k: int, shape: tuple[int, int]) -> da.Array:
    """Bilinear upsampling by ``k`` (pixel centres aligned), cropped or edge-padded to ``shape``."""
    if k == 1:
        out = arr.astype(np.float32)
    else:
        chunks = (arr.chunks[0], tuple(c * k for c in arr.chunks[1]),
                  tuple(c * k for c in arr.chunks[2]))
        out = da.map_overlap(partial(_bilinear_block, k=k), arr, depth={0: 0, 1: 1, 2: 1},
                             boundary="nearest", trim=False, chunks=chunks, dtype=np.float32)
    h, w = shape
    out = out[:, :h, :w]
    ph, pw = h - out.shape[1], w - out.shape[2]
    if ph > 0 or pw > 0:
        out = da.pad(out, ((0, 0), (0, max(ph, 0)), (0, max(pw, 0))), mode="edge")
    return out
