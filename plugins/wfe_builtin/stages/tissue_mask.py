"""``tissue_mask``: where the tissue (slides) or the valid data (geodata) is, at low resolution.

Slides: Otsu's threshold on the saturation (tissue is coloured, glass is not)
or on the darkness (``method: grey``, for pale stains), with optional rejection
of bright background and of pen marks (blue, green and black ink), then a
morphological closing, small holes filled and small objects removed. Geodata:
the valid-data mask of the reader (nodata values, mask bands), or pixels
where any band differs from nodata and is finite.

The mask is computed at a coarse pixel size (``mpp``, 8 µm by default; for
geodata ``gsd``, default 4 × level 0): a 100,000-pixel-wide slide at 0.25 µm
becomes 3,125 pixels wide, so the mask is small whatever the image.
"""

from __future__ import annotations

from typing import Any, Literal

import dask.array as da
import numpy as np
from pydantic import Field

from wfe.raster import Raster
from wfe.resolution import at_resolution, source_attrs
from wfe.stage import Ref, Stage, StageContext, StageParams

__all__ = ["TissueMaskStage", "tissue_from_rgb", "valid_data"]


class TissueMaskParams(StageParams):
    image: Ref = Field(description="The image to find tissue (or valid data) in.")
    mpp: float = Field(8.0, gt=0, description="Pixel size of a slide's mask (µm).")
    gsd: float | None = Field(None, gt=0, description="Pixel size of a geodata mask (CRS "
                                                      "units); default 4 × level 0.")
    method: Literal["saturation", "grey"] = Field(
        "saturation", description="Otsu on saturation (H&E) or on darkness (pale stains).")
    min_saturation: float = Field(0.05, ge=0, le=1,
                                  description="Never call paler pixels tissue (glass).")
    max_brightness: float | None = Field(None, gt=0, le=1, description="Pixels brighter than "
                                         "this (0-1) are background whatever their colour.")
    reject_pen: bool = Field(False, description="Remove pen marks (blue, green, black ink).")
    closing: float = Field(0.0, ge=0, description="Radius of a morphological closing (µm) "
                                                  "joining nearby tissue; 0: none.")
    min_area: float = Field(2000.0, ge=0, description="Smallest tissue object kept (µm²).")
    min_hole: float | None = Field(None, ge=0, description="Holes smaller than this are "
                                                           "filled (µm²); default min_area.")


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value (0-1) of an RGB ``(3, y, x)`` array."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(axis=0), x.min(axis=0)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0)
    r, g, b = x
    safe = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2,
                                                              (r - g) / safe + 4)) * 60
    return np.where(delta > 0, hue, 0), sat, mx


def pen_marks(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Pixels of blue, green or black marker ink (H&E is pink to purple, hue 270-360°, 0-30°)."""
    coloured_ink = (hue > 80) & (hue < 255) & (sat > 0.25)
    black_ink = val < 0.2
    return coloured_ink | black_ink


def tissue_from_rgb(rgb: np.ndarray, min_pixels: int, min_saturation: float, *,
                    method: str = "saturation", max_brightness: float | None = None,
                    reject_pen: bool = False, closing_px: int = 0,
                    min_hole_pixels: int | None = None) -> np.ndarray:
    """Boolean tissue mask of an RGB image ``(3, y, x)``."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import binary_closing, disk, remove_small_holes, remove_small_objects

    hue, sat, val = _hsv(rgb[:3])
    signal = sat if method == "saturation" else 1 - rgb[:3].astype(np.float32).mean(axis=0) / 255
    try:
        level = threshold_otsu(signal)
    except ValueError:
        level = 1.0
    floor = min_saturation if method == "saturation" else 0.0
    mask = signal > max(level, floor)
    if max_brightness is not None:
        mask &= val <= max_brightness
    if reject_pen:
        mask &= ~pen_marks(hue, sat, val)
    if closing_px > 0:
        mask = binary_closing(mask, disk(closing_px))
    holes = min_pixels if min_hole_pixels is None else min_hole_pixels
    if min_pixels > 0:
        mask = remove_small_objects(mask, max_size=min_pixels)
    if holes > 0:
        mask = remove_small_holes(mask, max_size=holes)
    return mask


def valid_data(raster: Raster) -> da.Array:
    """Level 0's valid-data mask ``(1, y, x)`` of geodata, lazily."""
    if raster.valid is not None:
        return raster.valid[0]
    data = raster.levels[0]
    nodata = raster.attrs.get("nodata")
    valid = da.ones((1, *data.shape[1:]), bool, chunks=(1, *data.chunks[1:]))
    if data.dtype.kind == "f":
        valid = valid & da.isfinite(data).any(axis=0, keepdims=True)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        valid = valid & (data != nodata).any(axis=0, keepdims=True)
    return valid


class TissueMaskStage(Stage):
    """Tissue mask of a slide, or valid-data mask of a scene: a small single-level Raster."""

    name = "tissue_mask"
    outputs = ("mask",)
    Params = TissueMaskParams

    def run(self, ctx: StageContext, *, image: Raster, **_: Any) -> dict[str, Any]:
        p: TissueMaskParams = self.params  # type: ignore[assignment]
        if image.pixel_size is None and image.transform is not None:
            return self._geodata(ctx, image)
        low = at_resolution(image, p.mpp, f"stage {ctx.stage_id}") if image.pixel_size else \
            image.select(len(image.levels) - 1)
        rgb = low.levels[0][:3]
        mpp = low.mpp or 1.0
        px_area = mpp * mpp
        # The low-resolution level is small by construction (see module docstring).
        mask = tissue_from_rgb(
            rgb.compute(), int(p.min_area / px_area), p.min_saturation, method=p.method,
            max_brightness=p.max_brightness, reject_pen=p.reject_pen,
            closing_px=int(round(p.closing / mpp)),
            min_hole_pixels=None if p.min_hole is None else int(p.min_hole / px_area))
        ctx.record("tissue_fraction", round(float(mask.mean()), 4))
        return {"mask": self._raster(mask, low, image, ("background", "tissue"))}

    def _geodata(self, ctx: StageContext, image: Raster) -> dict[str, Any]:
        p: TissueMaskParams = self.params  # type: ignore[assignment]
        res = image.resolutions()
        gsd = p.gsd or 4 * res[0]  # type: ignore[index]
        low = at_resolution(image, gsd, f"stage {ctx.stage_id}")
        # Nearest sampling of the valid mask: small by construction.
        mask = valid_data(low).compute()[0]
        ctx.record("valid_fraction", round(float(mask.mean()), 4))
        return {"mask": self._raster(mask, low, image, ("nodata", "valid"))}

    @staticmethod
    def _raster(mask: np.ndarray, low: Raster, image: Raster, classes: tuple[str, str]) -> Raster:
        arr = da.from_array(mask[None].astype(np.uint8), chunks=(1, 1024, 1024))
        pixel_size = None if low.pixel_size is None else [low.pixel_size[0]]
        return Raster(levels=[arr], pixel_size=pixel_size, crs=image.crs,
                      transform=low.transform, channels=("mask",),
                      attrs={"classes": list(classes), "colors": ["#000000", "#2ca02c"],
                             "source": image.attrs.get("source"),
                             **source_attrs(image),
                             **({"crs_unit": image.attrs["crs_unit"]}
                                if "crs_unit" in image.attrs else {})})
