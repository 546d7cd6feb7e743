"""``tissue_mask``: where the tissue is, found on a low-resolution level.

Otsu's threshold on the saturation channel (tissue is coloured, glass is not),
then small holes filled and small objects removed. The mask is computed at a
coarse pixel size (``mpp``, 8 µm by default): a 100,000-pixel-wide slide at
0.25 µm becomes 3,125 pixels wide, so the mask is small whatever the slide.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from pydantic import Field

from wfe.raster import Raster
from wfe.resolution import at_resolution
from wfe.stage import Ref, Stage, StageContext, StageParams

__all__ = ["TissueMaskStage", "tissue_from_rgb"]


class TissueMaskParams(StageParams):
    image: Ref = Field(description="The image to find tissue in.")
    mpp: float = Field(8.0, gt=0, description="Pixel size of the mask (µm).")
    min_area: float = Field(2000.0, ge=0, description="Smallest tissue object kept (µm²).")
    min_saturation: float = Field(0.05, ge=0, le=1,
                                  description="Never call paler pixels tissue (glass).")


def tissue_from_rgb(rgb: np.ndarray, min_pixels: int, min_saturation: float) -> np.ndarray:
    """Boolean tissue mask of an RGB image ``(3, y, x)``."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    x = rgb.astype(np.float32)
    mx, mn = x.max(axis=0), x.min(axis=0)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0)
    try:
        level = threshold_otsu(saturation)
    except ValueError:
        level = 1.0
    mask = saturation > max(level, min_saturation)
    if min_pixels > 0:
        mask = remove_small_objects(mask, max_size=min_pixels)
        mask = remove_small_holes(mask, max_size=min_pixels)
    return mask


class TissueMaskStage(Stage):
    """Tissue mask of a slide, as a small single-level Raster (1 = tissue)."""

    name = "tissue_mask"
    outputs = ("mask",)
    Params = TissueMaskParams

    def run(self, ctx: StageContext, *, image: Raster, **_: Any) -> dict[str, Any]:
        p: TissueMaskParams = self.params  # type: ignore[assignment]
        low = at_resolution(image, p.mpp, f"stage {ctx.stage_id}") if image.pixel_size else \
            image.select(len(image.levels) - 1)
        rgb = low.levels[0][:3]
        mpp = low.mpp or 1.0
        min_pixels = int(p.min_area / (mpp * mpp))
        # The low-resolution level is small by construction (see module docstring).
        mask = tissue_from_rgb(rgb.compute(), min_pixels, p.min_saturation)
        ctx.record("tissue_fraction", round(float(mask.mean()), 4))
        arr = da.from_array(mask[None].astype(np.uint8), chunks=(1, 1024, 1024))
        pixel_size = None if low.pixel_size is None else [low.pixel_size[0]]
        raster = Raster(levels=[arr], pixel_size=pixel_size, crs=image.crs,
                        transform=low.transform, channels=("tissue",),
                        attrs={"classes": ["background", "tissue"],
                               "source": image.attrs.get("source")})
        return {"mask": raster}
