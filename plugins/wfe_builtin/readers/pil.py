"""Small images (PNG, JPEG, BMP, WebP, GIF) through Pillow, decoded whole on first use.

Formats without tiles have to be decoded in one piece, so this reader refuses
images above :data:`MAX_PIXELS` with a hint to convert them to tiled TIFF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from wfe.errors import InputError
from wfe.raster import Raster
from wfe_builtin.readers._common import plausible_mpp

__all__ = ["MAX_PIXELS", "PilReader"]

#: Largest image decoded in one piece (about 800 MB as RGB).
MAX_PIXELS = 1 << 28
_MODES = {"1": ("L", 1), "L": ("L", 1), "LA": ("LA", 2), "I;16": ("I;16", 1), "RGB": ("RGB", 3),
          "RGBA": ("RGBA", 4), "P": ("RGB", 3), "CMYK": ("RGB", 3), "YCbCr": ("RGB", 3)}
_CHANNELS = {"L": ("gray",), "LA": ("gray", "A"), "I;16": ("gray",), "RGB": ("R", "G", "B"),
             "RGBA": ("R", "G", "B", "A")}


def _decode(path: str, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert(mode) if img.mode != mode else img
        arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class PilReader:
    """Pillow reader: PNG, JPEG and other untiled formats, for small images."""

    name = "pil"

    def probe(self, path: Path) -> bool:
        from PIL import Image

        with Image.open(path) as img:
            return img.format in ("PNG", "JPEG", "BMP", "WEBP", "GIF", "PPM")

    def open(self, path: Path, mpp: float | None = None, **opts: Any) -> Raster:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # this reader enforces its own limit below
        with Image.open(path) as img:
            w, h = img.size
            mode, n = _MODES.get(img.mode, ("RGB", 3))
            dpi = img.info.get("dpi", (0, 0))[0]
        if w * h > MAX_PIXELS:
            raise InputError(f"{path}: {w:,} × {h:,} pixels is too large for an untiled "
                             f"{path.suffix or 'image'} file (it must be decoded whole)",
                             "convert it to a tiled pyramidal TIFF or OME-Zarr")
        dtype = np.uint16 if mode == "I;16" else np.uint8
        level = da.from_delayed(dask.delayed(_decode, pure=True)(str(path), mode),
                                shape=(n, h, w), dtype=dtype)
        base = mpp or plausible_mpp(25400.0 / float(dpi) if dpi else None, str(path))
        return Raster(levels=[level], pixel_size=None if base is None else [base],
                      channels=_CHANNELS[mode],
                      attrs={"source": str(path), "reader": self.name, "vendor": "image"})
