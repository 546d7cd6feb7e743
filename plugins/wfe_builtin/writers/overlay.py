"""Overlay thumbnails: the source image with the labels coloured on top, and a legend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import numpy as np

from wfe.errors import WfeError
from wfe.raster import Raster
from wfe.sink import Sink, TemporaryOutput

__all__ = ["DEFAULT_COLORS", "OverlayWriter"]

DEFAULT_COLORS = ["#000000", "#e377c2", "#1f3fb4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd",
                  "#8c564b", "#17becf", "#bcbd22"]


def _rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _strided(arr: Any, max_size: int) -> Any:
    """Every n-th pixel, so the longer side is at most ``max_size``, as one Delayed block.

    ``to_delayed(optimize_graph=False)`` keeps the upstream keys as they are, so
    the pixels are shared with the other sinks of the run, not computed again.
    """
    step = max(1, int(np.ceil(max(arr.shape[1:]) / max_size)))
    return arr[:, ::step, ::step].rechunk(-1).to_delayed(optimize_graph=False).ravel()[0]


def _compose(labels: np.ndarray, image: np.ndarray | None, classes: list[str],
             colors: list[str], alpha: float, temp: Path, fmt: str) -> None:
    from PIL import Image, ImageDraw

    lab = labels[0]
    h, w = lab.shape
    if image is not None:
        base = Image.fromarray(np.moveaxis(image[:3], 0, -1).astype(np.uint8)).resize((w, h))
        rgb = np.asarray(base, dtype=np.float32)
    else:
        rgb = np.full((h, w, 3), 255, np.float32)
    palette = np.array([_rgb(c) for c in colors], np.float32)
    fg = lab > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * palette[lab[fg]]
    canvas = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i, (name, color) in enumerate(zip(classes[1:], colors[1:], strict=False)):
        y = 6 + 16 * i
        draw.rectangle([6, y, 18, y + 12], fill=_rgb(color), outline=(0, 0, 0))
        draw.text((22, y), name, fill=(0, 0, 0))
    canvas.save(temp, format=fmt)


class OverlayWriter:
    """PNG/JPEG thumbnail of ``background`` (if given) with label colours blended in."""

    name = "png"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False,
              background: Raster | None = None, max_size: int = 1024, alpha: float = 0.45,
              **_: Any) -> Sink:
        classes = list(raster.attrs.get("classes") or [])
        if raster.shape[0] != 1 or not classes:
            raise WfeError(f"{path}: an overlay needs a label image (one channel with classes)",
                           "write seg.labels, not probabilities or an image")
        colors = list(raster.attrs.get("colors") or DEFAULT_COLORS[:len(classes)])
        if len(colors) < len(classes):
            raise WfeError(f"{path}: {len(classes)} classes but only {len(colors)} colours",
                           "give one colour per class in the model card")
        labels = _strided(raster.levels[0], max_size)
        image = None
        if background is not None:
            image = _strided(background.levels[background.thumbnail_level(max_size)], max_size)
        temp = TemporaryOutput(path, overwrite)
        fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        work = dask.delayed(_compose)(labels, image, classes, colors, alpha, temp.temp, fmt)
        return Sink(path=path, work=[work], finalize=temp.commit, abort=temp.discard)
