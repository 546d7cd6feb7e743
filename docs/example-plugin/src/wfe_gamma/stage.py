"""The ``gamma`` stage: ``out = 255 * (in / 255) ** gamma``, lazily, chunk by chunk."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from wfe import Raster, Ref, Stage, StageContext
from wfe.stage import StageParams


class GammaParams(StageParams):
    image: Ref = Field(description="An 8-bit image (a stage output).")
    gamma: float = Field(1.0, gt=0, description="Below 1 brightens, above 1 darkens.")


def _apply(block: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return lut[block]


class GammaStage(Stage):
    """Gamma-correct every level of an 8-bit image."""

    name = "gamma"
    outputs = ("image",)
    Params = GammaParams

    def run(self, ctx: StageContext, *, image: Raster, **_: Any) -> dict[str, Any]:
        p: GammaParams = self.params  # type: ignore[assignment]
        lut = np.rint(255 * (np.arange(256) / 255.0) ** p.gamma).astype(np.uint8)
        levels = [lvl.map_blocks(_apply, lut, dtype=np.uint8) for lvl in image.levels]
        ctx.record("gamma", p.gamma)
        return {"image": Raster(levels=levels, pixel_size=image.pixel_size, crs=image.crs,
                                transform=image.transform, channels=image.channels,
                                attrs=dict(image.attrs))}
