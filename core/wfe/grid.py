"""The global window grid and blending weights (pure numpy).

Windows lie on one grid per image: starts at multiples of
``stride = window - overlap``, the last start on each axis moved back so the
window ends at the image edge. These are the positions MONAI's
``sliding_window_inference`` uses, so a lazily stitched result equals an
in-memory sliding-window pass. Weights depend only on the window's shape, so
every output pixel gets the same contributions whatever the chunking.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

__all__ = ["BLEND_MODES", "WindowGrid", "blend_weights", "window_starts"]

BLEND_MODES = ("gaussian", "cosine", "constant", "crop")


def window_starts(size: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows along one axis of length ``size``."""
    if window > size:
        raise ValueError(f"window {window} is larger than the image ({size} px)")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window); got {overlap} for window {window}")
    stride = window if window == size else window - overlap
    count = 1 + -(-(size - window) // stride)  # fewest windows whose last one reaches the edge
    return [min(i * stride, size - window) for i in range(count)]


@lru_cache(maxsize=16)
def blend_weights(window: int, mode: str, sigma_scale: float = 0.125,
                  overlap: int = 0) -> np.ndarray:
    """The ``window × window`` weight map of one window (float32, read-only).

    ``gaussian`` and ``constant`` match MONAI's ``compute_importance_map``
    (including its clamp to at least 1e-3 of the peak). ``cosine`` is a
    raised-cosine taper; ``crop`` keeps only the centre (a border of
    ``overlap // 2`` gets a negligible weight so image edges stay covered).
    """
    if mode == "constant":
        w = np.ones((window, window), np.float32)
    elif mode == "gaussian":
        sigma = window * sigma_scale
        x = np.arange(-(window - 1) / 2.0, (window - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x**2 / np.float32(-2 * sigma**2)).astype(np.float32)
        w = g[:, None] * g[None, :]
    elif mode == "cosine":
        x = (np.arange(window, dtype=np.float64) + 0.5) / window
        g = (0.5 - 0.5 * np.cos(2 * math.pi * x)).astype(np.float32)
        w = g[:, None] * g[None, :]
    elif mode == "crop":
        border = overlap // 2
        g = np.full(window, 1e-6, np.float32)
        g[border:window - border] = 1.0
        w = g[:, None] * g[None, :]
    else:
        raise ValueError(f"unknown blend mode {mode!r}; use one of {', '.join(BLEND_MODES)}")
    if mode in ("gaussian", "constant"):
        w = np.maximum(w, max(float(w.min()), 1e-3)).astype(np.float32)
    w.setflags(write=False)
    return w


@dataclass(frozen=True)
class WindowGrid:
    """Window positions over an ``height × width`` image."""

    height: int
    width: int
    window: int
    overlap: int

    @cached_property
    def ys(self) -> list[int]:
        return window_starts(self.height, self.window, self.overlap)

    @cached_property
    def xs(self) -> list[int]:
        return window_starts(self.width, self.window, self.overlap)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def owned_by(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int]]:
        """Windows whose start lies in ``[y0, y1) × [x0, x1)``: each window has one owner chunk."""
        ys = self.ys[bisect_left(self.ys, y0):bisect_left(self.ys, y1)]
        xs = self.xs[bisect_left(self.xs, x0):bisect_left(self.xs, x1)]
        return [(y, x) for y in ys for x in xs]
