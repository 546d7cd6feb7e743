"""Helpers shared by the readers: pixel-size sanity and layout."""

from __future__ import annotations

import warnings

__all__ = ["plausible_mpp"]

#: Microscope pixel sizes lie well inside this range (µm); 72-dpi tags give ~352.
MPP_RANGE = (0.01, 100.0)


def plausible_mpp(value: float | None, source: str) -> float | None:
    """``value`` if it looks like a microscope pixel size, else ``None`` with a warning."""
    if value is None or not value > 0:
        return None
    if not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        warnings.warn(f"{source}: pixel size {value:.4g} µm is not a microscope's "
                      "(resolution tags of a screen image?); ignored; give mpp: in the reader "
                      "options", stacklevel=3)
        return None
    return value
