"""Raster: the lazy, multiscale image that flows between stages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["Raster"]


@dataclass(frozen=True)
class Raster:
    """A lazy multiscale image.

    Attributes
    ----------
    levels
        Dask arrays with axes ``(c, y, x)``; level 0 is the finest. Chunks follow
        the storage they come from (native tiles) or go to.
    pixel_size
        Micrometres per pixel of each level (slides), or ``None``.
    crs, transform
        For geodata: the CRS (WKT or ``EPSG:n``) and the affine transform of
        level 0 as ``(a, b, c, d, e, f)`` (x = a*col + b*row + c; y = d*col + e*row + f).
    channels
        One name per channel.
    valid
        For geodata with nodata or mask bands: per level, a ``(1, y, x)`` bool dask
        array, True where the pixels hold data. ``None``: every pixel is valid.
    attrs
        Anything else worth keeping: vendor metadata, the source path, class names
        (``classes``) and colours (``colors``) of label images.
    """

    levels: Sequence[da.Array]
    pixel_size: Sequence[float] | None = None
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    channels: Sequence[str] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    valid: Sequence[da.Array] | None = None

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("a Raster needs at least one level")
        for lvl in self.levels:
            if lvl.ndim != 3:
                raise ValueError(f"levels must have axes (c, y, x); got shape {lvl.shape}")
        if self.pixel_size is not None and len(self.pixel_size) != len(self.levels):
            raise ValueError("pixel_size needs one value per level")
        if self.valid is not None and len(self.valid) != len(self.levels):
            raise ValueError("valid needs one mask per level")
        if not self.channels:
            n = self.levels[0].shape[0]
            object.__setattr__(self, "channels", tuple(f"c{i}" for i in range(n)))

    @property
    def data(self) -> da.Array:
        """Level 0."""
        return self.levels[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.levels[0].shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.levels[0].dtype

    @property
    def is_labels(self) -> bool:
        """A label image: one channel of class values, with ``classes`` in :attr:`attrs`."""
        return "classes" in self.attrs and self.shape[0] == 1

    @property
    def mpp(self) -> float | None:
        """Micrometres per pixel of level 0, if known."""
        return None if self.pixel_size is None else float(self.pixel_size[0])

    @property
    def unit(self) -> str | None:
        """Unit of :meth:`resolutions`: ``"µm"`` for slides, ``"m"`` (or the CRS's
        unit) for geodata, ``None`` when the image has no geometry."""
        if self.pixel_size is not None:
            return "µm"
        if self.transform is not None:
            return str(self.attrs.get("crs_unit", "m"))
        return None

    def resolutions(self) -> list[float] | None:
        """Pixel size of each level in :attr:`unit`: µm for slides, the ground sample
        distance (CRS units, usually metres) for geodata; ``None`` if unknown."""
        if self.pixel_size is not None:
            return [float(p) for p in self.pixel_size]
        if self.transform is not None:
            a, b = self.transform[0], self.transform[1]
            gsd = float(np.hypot(a, b))
            return [gsd * d for d in self.downsamples()]
        return None

    def downsamples(self) -> list[float]:
        """Each level's downsample factor relative to level 0 (from the widths)."""
        w0 = self.levels[0].shape[2]
        return [w0 / lvl.shape[2] for lvl in self.levels]

    def level_for(self, size: float, tolerance: float = 0.05) -> int:
        """The coarsest level whose pixel size (in :attr:`unit`) is at most ``size``
        (within ``tolerance``).

        Returns 0 when even level 0 is coarser than ``size``; callers decide
        whether that is an error.
        """
        sizes = self.resolutions()
        if sizes is None:
            raise ValueError("this image has no pixel size")
        best = 0
        for i, s in enumerate(sizes):
            if s <= size * (1 + tolerance):
                best = i
        return best

    def select(self, first: int) -> Raster:
        """The same image, starting at level ``first`` (coarser levels kept)."""
        pixel_size = None if self.pixel_size is None else list(self.pixel_size[first:])
        transform = self.transform
        if transform is not None and first:
            f = self.downsamples()[first]
            a, b, c, d, e, g = transform
            transform = (a * f, b * f, c, d * f, e * f, g)
        valid = None if self.valid is None else list(self.valid[first:])
        attrs = self.attrs
        res = self.resolutions()
        if first and res is not None and "extent" not in attrs:
            # Coarser levels round their pixel counts; keep the true size of the source.
            attrs = {**attrs, "extent": [self.shape[1] * res[0], self.shape[2] * res[0]],
                     "source_pixel_size": res[0]}
        return replace(self, levels=list(self.levels[first:]), pixel_size=pixel_size,
                       transform=transform, valid=valid, attrs=attrs)

    def derived(self, levels: Sequence[da.Array], channels: Sequence[str],
                **attrs: Any) -> Raster:
        """A new raster with this one's geometry (level 0 only) and other pixels.

        Used for outputs such as probabilities and labels: same shape in y and x,
        same pixel size / CRS / transform, so writers can put them on the source.
        """
        if tuple(levels[0].shape[1:]) != self.shape[1:]:
            raise ValueError(f"derived raster shape {levels[0].shape} differs from {self.shape}")
        pixel_size = None if self.pixel_size is None else [self.pixel_size[0]]
        new_attrs = {k: v for k, v in self.attrs.items() if k in ("source", "vendor", "crs_unit",
                                                                 "extent", "source_pixel_size")}
        new_attrs.update(attrs)
        return Raster(levels=list(levels)[:1], pixel_size=pixel_size, crs=self.crs,
                      transform=self.transform, channels=tuple(channels), attrs=new_attrs)

    def thumbnail_level(self, max_size: int) -> int:
        """The finest level whose longer side is at most ``max_size`` (else the coarsest)."""
        for i, lvl in enumerate(self.levels):
            if max(lvl.shape[1:]) <= max_size:
                return i
        return len(self.levels) - 1

    def __repr__(self) -> str:
        c, h, w = self.shape
        res = self.resolutions()
        geo = f"{res[0]:g} {self.unit}/px" if res else "no geometry"
        if self.crs:
            geo += f", {self.crs if len(self.crs) < 40 else self.crs[:37] + '...'}"
        return (f"Raster({c}×{h}×{w} {self.dtype}, {len(self.levels)} levels, {geo}, "
                f"channels={list(self.channels)})")

