"""Overlay thumbnails: the source image with the labels coloured on top, and a legend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import numpy as np

from wfe.raster import Raster
from wfe.sink import Sink, TemporaryOutput
from wfe_builtin.writers._labels import label_classes, rgb_of

__all__ = ["OverlayWriter", "display_bands", "to_display"]


def _strided(arr: Any, max_size: int) -> Any:
    """Every n-th pixel, so the longer side is at most ``max_size``, as one Delayed block.

    ``to_delayed(optimize_graph=False)`` keeps the upstream keys as they are, so
    the pixels are shared with the other sinks of the run, not computed again.
    """
    step = max(1, int(np.ceil(max(arr.shape[1:]) / max_size)))
    return arr[:, ::step, ::step].rechunk(-1).to_delayed(optimize_graph=False).ravel()[0]


_RGB_NAMES = (("r", "red"), ("g", "green"), ("b", "blue"))


def display_bands(channels: list[str]) -> list[int]:
    """Which channels to show as red, green, blue: named ones, else the first three (or one)."""
    lower = [c.lower() for c in channels]
    picked = [next((lower.index(n) for n in names if n in lower), -1) for names in _RGB_NAMES]
    if min(picked) >= 0:
        return picked
    return [0, 1, 2] if len(channels) >= 3 else [0, 0, 0]


def to_display(image: np.ndarray, bands: list[int]) -> np.ndarray:
    """``(3, y, x)`` uint8 for a picture: uint8 as is, anything else stretched 2-98 %."""
    rgb = image[bands]
    if rgb.dtype == np.uint8:
        return rgb
    x = rgb.astype(np.float32)
    out = np.zeros(x.shape, np.uint8)
    for i, band in enumerate(x):
        ok = np.isfinite(band) & (band != 0)
        if not ok.any():
            continue
        lo, hi = np.percentile(band[ok], (2, 98))
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return out


def _compose(labels: np.ndarray, image: np.ndarray | None, bands: list[int], classes: list[str],
             colors: list[str], alpha: float, temp: Path, fmt: str) -> None:
    from PIL import Image, ImageDraw

    lab = labels[0]
    h, w = lab.shape
    if image is not None:
        base = Image.fromarray(np.moveaxis(to_display(image, bands), 0, -1)).resize((w, h))
        rgb = np.asarray(base, dtype=np.float32)
    else:
        rgb = np.full((h, w, 3), 255, np.float32)
    palette = np.array([rgb_of(c) for c in colors], np.float32)
    fg = lab > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * palette[lab[fg]]
    canvas = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i, (name, color) in enumerate(zip(classes[1:], colors[1:], strict=False)):
        y = 6 + 16 * i
        draw.rectangle([6, y, 18, y + 12], fill=rgb_of(color), outline=(0, 0, 0))
        draw.text((22, y), name, fill=(0, 0, 0))
    # zlib's fastest level for PNG: a 1024 × 683 overlay in 38 ms against 140 ms at
    # Pillow's default (6), for a file 16 % larger; it is written for every input.
    canvas.save(temp, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))


class OverlayWriter:
    """PNG/JPEG thumbnail of ``background`` (if given) with label colours blended in."""

    name = "png"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False,
              background: Raster | None = None, max_size: int = 1024, alpha: float = 0.45,
              **_: Any) -> Sink:
        classes, colors = label_classes(raster, path)
        labels = _strided(raster.levels[0], max_size)
        image, bands = None, [0, 1, 2]
        if background is not None:
            bands = display_bands(list(background.channels))
            image = _strided(background.levels[background.thumbnail_level(max_size)], max_size)
        temp = TemporaryOutput(path, overwrite)
        fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        work = dask.delayed(_compose)(labels, image, bands, classes, colors, alpha, temp.temp, fmt)
        return Sink(path=path, work=[work], finalize=temp.commit, abort=temp.discard)
