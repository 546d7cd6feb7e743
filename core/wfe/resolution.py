"""Choosing the pyramid level for a pixel size, and resampling to it exactly.

Slides are asked for in µm per pixel (``mpp``), geodata in ground units per
pixel (``gsd``, usually metres); both are a raster's :meth:`~wfe.Raster.resolutions`.
The cheapest way to a pixel size is the coarsest level at least that fine. A
level within ``tolerance`` (5 % by default) of the size asked for is used as is,
and an integer multiple within the same tolerance is area-averaged by that
integer (fast): resampling by 1.02 would cost a pass over the data and blur it
for a difference no model notices. Anything else is resampled exactly (area
averaging down, bilinear up), so the result has the pixel size asked for.
"""

from __future__ import annotations

from dataclasses import replace

import dask.array as da

from wfe.errors import InputError
from wfe.raster import Raster
from wfe.resample import downsample, integer_factor, resample

__all__ = ["DEFAULT_TOLERANCE", "at_resolution"]

DEFAULT_TOLERANCE = 0.05


def _scaled_transform(transform: tuple[float, ...] | None,
                      f: float) -> tuple[float, ...] | None:
    if transform is None:
        return None
    a, b, c, d, e, g = transform
    return (a * f, b * f, c, d * f, e * f, g)


def _resampled(raster: Raster, factor: float, k: int | None) -> tuple[da.Array, da.Array | None]:
    """Level 0 of ``raster`` resampled by ``factor`` (and its valid mask, if any):
    integer means when ``k`` is the integer factor, exact area/bilinear weights otherwise."""
    level0, valid = raster.levels[0], None if raster.valid is None else raster.valid[0]
    if k is not None:
        return downsample(level0, k), None if valid is None else downsample(valid, k, "nearest")
    base = resample(level0, factor, method="area" if factor > 1 else "linear")
    if valid is not None:
        valid = resample(valid, factor, shape=base.shape[1:], method="nearest",
                         chunk=base.chunks[1][0])
    return base, valid


def at_resolution(raster: Raster, size: float, what: str, *, allow_upsample: bool = False,
                  tolerance: float = DEFAULT_TOLERANCE) -> Raster:
    """``raster`` starting at pixel size ``size`` (in the raster's :attr:`~wfe.Raster.unit`).

    Coarser levels are kept after the new level 0. Raises :class:`InputError`
    when the image has no geometry, or when ``size`` is finer than level 0 and
    ``allow_upsample`` is false.
    """
    sizes = raster.resolutions()
    if sizes is None:
        raise InputError(f"{what}: the image has no pixel size or georeference, so a pixel "
                         f"size of {size:g} cannot be honoured",
                         "give the pixel size as reader_options: {mpp: ...}, or use a "
                         "georeferenced image for gsd:")
    unit = raster.unit
    if size < sizes[0] * (1 - tolerance) and not allow_upsample:
        raise InputError(f"{what}: {size:g} {unit}/px is finer than level 0 "
                         f"({sizes[0]:.4g} {unit}/px)",
                         f"ask for ≥ {sizes[0]:.4g}, or set allow_upsample: true")
    index = raster.level_for(size, tolerance)
    chosen = raster.select(index)
    ratio = size / sizes[index]
    k = integer_factor(ratio, tolerance)
    if k == 1:
        return chosen
    factor = float(k) if k is not None else ratio
    base, valid = _resampled(chosen, factor, k)
    new_size = sizes[index] * factor
    chosen_sizes = sizes[index:]
    coarser = [i for i in range(1, len(chosen.levels))
               if chosen_sizes[i] > new_size * (1 + tolerance)]
    pixel_size = None
    if chosen.pixel_size is not None:
        pixel_size = [new_size, *[chosen.pixel_size[i] for i in coarser]]
    levels = [base, *[chosen.levels[i] for i in coarser]]
    valids = None if valid is None else [valid, *[chosen.valid[i] for i in coarser]]  # type: ignore[index]
    return replace(chosen, levels=levels, pixel_size=pixel_size, valid=valids,
                   transform=_scaled_transform(chosen.transform, factor))
