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

__all__ = ["DEFAULT_TOLERANCE", "at_resolution", "extent", "on_grid", "source_attrs",
           "source_pixel_size"]

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


def extent(raster: Raster) -> tuple[float, float] | None:
    """Height and width of the source's level 0 in :attr:`~wfe.Raster.unit`s.

    Kept in ``attrs["extent"]`` once an image has been resampled (resampling
    rounds the pixel count), so outputs can be put back on the source's grid
    with exactly its level-0 size; ``None`` for an image without geometry.
    """
    if "extent" in raster.attrs:
        h, w = raster.attrs["extent"]
        return float(h), float(w)
    res = raster.resolutions()
    if res is None:
        return None
    return raster.shape[1] * res[0], raster.shape[2] * res[0]


def source_pixel_size(raster: Raster) -> float | None:
    """Pixel size of the source's level 0 (in :attr:`~wfe.Raster.unit`), kept through
    level selection and resampling, e.g. to give polygons in level-0 pixels."""
    if "source_pixel_size" in raster.attrs:
        return float(raster.attrs["source_pixel_size"])
    res = raster.resolutions()
    return None if res is None else res[0]


def source_attrs(raster: Raster) -> dict[str, object]:
    """``attrs`` entries that remember the source's level-0 grid (see :func:`extent`)."""
    ext, size = extent(raster), source_pixel_size(raster)
    return {} if ext is None or size is None else {"extent": list(ext),
                                                     "source_pixel_size": size}


def on_grid(raster: Raster, size: float, what: str) -> Raster:
    """Level 0 of ``raster`` resampled to pixel size ``size`` over the source's extent.

    For writing results back onto the source: labels (one channel with
    ``classes``) by nearest neighbour, anything else by area averaging down and
    bilinear interpolation up. The output covers :func:`extent`, so at the
    source's level-0 pixel size it has exactly the source's pixel count, and
    its origin is the source's (the transform is scaled, not shifted).
    """
    res = raster.resolutions()
    ext = extent(raster)
    if res is None or ext is None:
        raise InputError(f"{what}: the data has no pixel size or georeference, so it cannot "
                         f"be written at {size:g} per pixel",
                         "drop mpp:/gsd: from the write stage")
    shape = (max(1, round(ext[0] / size)), max(1, round(ext[1] / size)))
    if abs(size - res[0]) <= 1e-9 * size and shape == raster.shape[1:]:
        return replace(raster, levels=list(raster.levels[:1]),
                       pixel_size=None if raster.pixel_size is None else [size],
                       valid=None if raster.valid is None else list(raster.valid[:1]))
    factor = size / res[0]
    method = "nearest" if raster.is_labels else "area" if factor > 1 else "linear"
    level0 = raster.levels[0]
    chunk = max(256, min(2048, level0.chunks[1][0]))
    base = resample(level0, factor, shape=shape, method=method, chunk=chunk)
    valid = None
    if raster.valid is not None:
        valid = [resample(raster.valid[0], factor, shape=shape, method="nearest", chunk=chunk)]
    return replace(raster, levels=[base], valid=valid,
                   pixel_size=None if raster.pixel_size is None else [size],
                   transform=_scaled_transform(raster.transform, factor),
                   attrs={**raster.attrs, **source_attrs(raster)})


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
                   transform=_scaled_transform(chosen.transform, factor),
                   attrs={**chosen.attrs, **source_attrs(raster)})
