"""``read``: open the input at the pixel size the workflow asks for."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from wfe.raster import Raster
from wfe.resolution import DEFAULT_TOLERANCE, at_resolution
from wfe.stage import Stage, StageContext, StageParams

__all__ = ["ReadStage"]


class ReadParams(StageParams):
    path: str | None = Field(None, description="Image to read; default: the current input.")
    mpp: float | None = Field(None, gt=0, description="Pixel size to read a slide at (µm).")
    gsd: float | None = Field(None, gt=0, description="Ground sample distance to read geodata "
                                                      "at (CRS units, usually metres).")
    allow_upsample: bool = Field(False, description="Allow mpp/gsd finer than level 0 "
                                                    "(bilinear); otherwise it is an error.")
    tolerance: float = Field(DEFAULT_TOLERANCE, ge=0, lt=0.5,
                             description="A level (or integer multiple of one) this close to "
                                         "the pixel size asked for is used without resampling.")
    reader: str | None = Field(None, description="Force a reader instead of probing.")
    reader_options: dict[str, Any] = Field(default_factory=dict,
                                           description="Passed to the reader, e.g. {mpp: 0.25}.")

    @model_validator(mode="after")
    def _one_resolution(self) -> ReadParams:
        if self.mpp is not None and self.gsd is not None:
            raise ValueError("give mpp (slides) or gsd (geodata), not both")
        return self


class ReadStage(Stage):
    """Open an image lazily (the current input unless ``path`` is given), at ``mpp`` or ``gsd``."""

    name = "read"
    outputs = ("image",)
    Params = ReadParams

    def run(self, ctx: StageContext, **inputs: Any) -> dict[str, Any]:
        p: ReadParams = self.params  # type: ignore[assignment]
        path = ctx.resolve(p.path) if p.path else ctx.input
        raster: Raster = ctx.open_image(path, reader=p.reader, **p.reader_options)
        size = p.mpp if p.mpp is not None else p.gsd
        if size is not None:
            if p.gsd is not None and raster.crs is None:
                from wfe.errors import InputError

                raise InputError(f"{path}: gsd: {p.gsd:g} needs a georeferenced image, and this "
                                 "one has no CRS", "use mpp: for slides, or give the image a CRS "
                                 "(e.g. gdal_edit.py -a_srs EPSG:32633)")
            if p.mpp is not None and raster.pixel_size is None and raster.crs is not None:
                from wfe.errors import InputError

                raise InputError(f"{path}: mpp: is for slides; this image is georeferenced "
                                 f"({raster.resolutions()[0]:.4g} {raster.unit}/px)",  # type: ignore[index]
                                 "use gsd: (ground units per pixel) instead")
            raster = at_resolution(raster, size, str(path), allow_upsample=p.allow_upsample,
                                   tolerance=p.tolerance)
        ctx.record("shape", list(raster.shape))
        res = raster.resolutions()
        ctx.record("pixel_size", None if res is None else round(res[0], 6))
        ctx.record("unit", raster.unit)
        return {"image": raster}
