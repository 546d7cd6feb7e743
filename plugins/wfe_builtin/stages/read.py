"""``read``: open the input at the pixel size the workflow asks for."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from wfe.errors import InputError
from wfe.raster import Raster
from wfe.resample import downsample, integer_factor
from wfe.stage import Stage, StageContext, StageParams

__all__ = ["ReadStage", "at_mpp"]

TOLERANCE = 0.05  # a level within 5 % of the asked pixel size is used as is


class ReadParams(StageParams):
    path: str | None = Field(None, description="Image to read; default: the current input.")
    mpp: float | None = Field(None, gt=0, description="Pixel size to read at (µm).")
    reader: str | None = Field(None, description="Force a reader instead of probing.")
    reader_options: dict[str, Any] = Field(default_factory=dict,
                                           description="Passed to the reader, e.g. {mpp: 0.25}.")


def at_mpp(raster: Raster, mpp: float, what: str) -> Raster:
    """``raster`` starting at pixel size ``mpp``: the level that has it, or a finer one
    averaged down by an integer factor. Coarser levels are kept after it."""
    if raster.pixel_size is None:
        raise InputError(f"{what}: the image has no pixel size, so mpp: {mpp} cannot be honoured",
                         "give the pixel size as reader_options: {mpp: ...}")
    if mpp < raster.pixel_size[0] * (1 - TOLERANCE):
        raise InputError(f"{what}: mpp {mpp} is finer than level 0 ({raster.pixel_size[0]:.4g} µm)",
                         f"ask for mpp ≥ {raster.pixel_size[0]:.4g}")
    # The coarsest level from which mpp is an integer downsample (cheapest to read).
    top = raster.level_for(mpp, TOLERANCE)
    k = None
    for index in range(top, -1, -1):
        k = integer_factor(mpp / raster.pixel_size[index], TOLERANCE)
        if k is not None:
            break
    if k is None:
        raise InputError(f"{what}: mpp {mpp} is not an integer downsample of any level "
                         f"(levels: {', '.join(f'{p:.4g}' for p in raster.pixel_size)} µm)",
                         "ask for a pixel size that is a level's times an integer")
    chosen = raster.select(index)
    if k == 1:
        return chosen
    base = downsample(chosen.levels[0], k)
    coarser = [(lvl, p) for lvl, p in zip(chosen.levels[1:], chosen.pixel_size[1:], strict=True)
               if p > mpp * (1 + TOLERANCE)]
    return Raster(levels=[base, *[lvl for lvl, _ in coarser]],
                  pixel_size=[chosen.pixel_size[0] * k, *[p for _, p in coarser]],
                  crs=chosen.crs, transform=chosen.transform, channels=chosen.channels,
                  attrs=chosen.attrs)


class ReadStage(Stage):
    """Open an image lazily (the current input unless ``path`` is given)."""

    name = "read"
    outputs = ("image",)
    Params = ReadParams

    def run(self, ctx: StageContext, **inputs: Any) -> dict[str, Any]:
        p: ReadParams = self.params  # type: ignore[assignment]
        path = ctx.resolve(p.path) if p.path else ctx.input
        raster = ctx.open_image(path, reader=p.reader, **p.reader_options)
        if p.mpp is not None:
            raster = at_mpp(raster, p.mpp, str(path))
        ctx.record("shape", list(raster.shape))
        ctx.record("mpp", raster.mpp)
        return {"image": raster}
