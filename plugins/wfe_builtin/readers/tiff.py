"""Tiled (pyramidal) TIFF through tifffile, lazily, one dask chunk per native tile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask.array as da

from wfe.errors import InputError
from wfe.raster import Raster
from wfe_builtin.readers._common import plausible_mpp

__all__ = ["TiffReader"]

_UNIT_TO_UM = {2: 25400.0, 3: 10000.0}  # INCH, CENTIMETER -> µm

# tifffile logs damaged structures itself; wfe reports them as one error line instead.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _mpp_from_page(page: Any) -> float | None:
    unit = int(page.resolutionunit)
    xres = page.resolution[0] if page.resolution else 0
    if unit not in _UNIT_TO_UM or not xres:
        return None
    return _UNIT_TO_UM[unit] / xres


def _check_complete(path: Path, tif: Any) -> None:
    """Fail early, in one line, when tile data lies past the end of the file."""
    size = path.stat().st_size
    for level in tif.series[0].levels:
        for page in level.pages:
            if page is None or not page.dataoffsets:
                continue
            end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True))
            if end > size:
                raise InputError(f"{path}: the file is truncated ({size:,} bytes; its tiles "
                                 f"need {end:,})", "copy or download the file again")


class TiffReader:
    """tifffile reader: tiled or stripped TIFF, pyramids as successive pages or SubIFDs."""

    name = "tiff"

    def probe(self, path: Path) -> bool:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            # Decode one tile/strip: opening alone proves nothing about the codec.
            if page.is_tiled or page.dataoffsets:
                fh = tif.filehandle
                fh.seek(page.dataoffsets[0])
                data = fh.read(page.databytecounts[0])
                page.decode(data, 0, jpegtables=page.jpegtables)
            return True

    def open(self, path: Path, mpp: float | None = None, **opts: Any) -> Raster:
        import tifffile
        import zarr

        with tifffile.TiffFile(path) as tif:
            _check_complete(path, tif)
            series = tif.series[0]
            page = series.levels[0].keyframe
            axes = series.axes
            level_shapes = [lvl.shape for lvl in series.levels]
            tile = (page.tilelength, page.tilewidth) if page.is_tiled else None
            file_mpp = _mpp_from_page(page)
            description = page.description
        if axes not in ("YXS", "YX", "CYX", "SYX"):
            raise InputError(f"{path}: TIFF axes {axes!r} not supported yet",
                             "use a 2-D RGB or single/multi-channel image")
        store = tifffile.imread(path, aszarr=True)
        group = zarr.open(store, mode="r")
        levels = []
        for i in range(len(level_shapes)):
            arr = group[str(i)] if isinstance(group, zarr.Group) else group
            d = da.from_zarr(arr)
            if axes == "YXS":
                d = d.transpose(2, 0, 1)
            elif axes == "YX":
                d = d[None]
            if tile:
                d = d.rechunk((d.shape[0], *[max(t, c[0]) for t, c in zip(tile, d.chunks[1:],
                                                                       strict=True)]))
            levels.append(d)
        base = mpp or plausible_mpp(file_mpp, str(path))
        pixel_size = None
        if base:
            w0 = level_shapes[0][1] if axes in ("YXS", "YX") else level_shapes[0][2]
            pixel_size = [base * w0 / lvl.shape[2] for lvl in levels]
        channels = ("R", "G", "B") if axes == "YXS" and levels[0].shape[0] == 3 else ()
        return Raster(levels=levels, pixel_size=pixel_size, channels=channels,
                      attrs={"source": str(path), "reader": self.name,
                             "vendor": "tiff", "description": description or ""})
