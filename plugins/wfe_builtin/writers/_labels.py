"""Class names and colours of label images, shared by every writer that draws or tags them."""

from __future__ import annotations

from pathlib import Path

from wfe.errors import WfeError
from wfe.raster import Raster

__all__ = ["DEFAULT_COLORS", "label_classes", "rgb_of"]

DEFAULT_COLORS = ["#000000", "#e377c2", "#1f3fb4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd",
                  "#8c564b", "#17becf", "#bcbd22"]


def rgb_of(color: str) -> tuple[int, int, int]:
    """``(r, g, b)`` of a ``#rrggbb`` colour."""
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def label_classes(raster: Raster, path: Path) -> tuple[list[str], list[str]]:
    """Class names and one colour per class of a label image, or a one-line error."""
    if not raster.is_labels:
        raise WfeError(f"{path}: needs a label image (one channel with classes)",
                       "write seg.labels or a mask, not probabilities or an image")
    classes = [str(c) for c in raster.attrs["classes"]]
    colors = list(raster.attrs.get("colors") or DEFAULT_COLORS[:len(classes)])
    if len(colors) < len(classes):
        raise WfeError(f"{path}: {len(classes)} classes but only {len(colors)} colours",
                       "give one colour per class (colors: in the model card)")
    return classes, colors
