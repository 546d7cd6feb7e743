"""Georeferenced rasters (GeoTIFF, COG, and whatever else GDAL reads with a CRS) via rasterio.

Lazy: each dask chunk is one windowed read of the native blocks. Internal
overviews become pyramid levels; nodata values, per-band and per-dataset masks
become the raster's ``valid`` masks; the CRS and affine transform are kept.
"""

from __future__ import annotations

import os
import threading
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from wfe.errors import InputError
from wfe.raster import Raster
from wfe_builtin.readers._common import decode_guard, kept_open, lazy_blocks

__all__ = ["GeoTiffReader"]

#: Stripped rasters are read in bands of at least this many rows.
MIN_ROWS = 512
#: MB of GDAL block cache while reading, unless ``GDAL_CACHEMAX`` is set: each block is
#: read once, and GDAL's default (5 % of the machine's memory) held every block read
#: until it was full, 1.1 GiB over a 16,384² four-band scene on a 24 GiB machine.
READ_CACHE_MB = 64
#: Datasets each thread keeps open (the least recently used is closed): an archive's
#: files would otherwise stay open to the end of the run, several per file.
OPEN_PER_THREAD = 4
_UNITS = {"metre": "m", "meter": "m", "m": "m", "degree": "°", "foot": "ft", "us survey foot": "ftUS"}
_local = threading.local()


@cache
def _cap_block_cache() -> None:
    """Cap GDAL's block cache at :data:`READ_CACHE_MB`, once per process, unless the user
    chose a size (``GDAL_CACHEMAX`` in the environment)."""
    if "GDAL_CACHEMAX" not in os.environ:
        from rasterio.env import set_gdal_config

        set_gdal_config("GDAL_CACHEMAX", READ_CACHE_MB)


def _open_dataset(path: str, overview: int | None) -> Any:
    import rasterio

    _cap_block_cache()
    return rasterio.open(path, **({} if overview is None else {"overview_level": overview}))


def _close(dataset: Any) -> None:
    dataset.close()


def _dataset(path: str, overview: int | None) -> Any:
    """An open dataset for this thread, file and overview level (GDAL handles are not
    shared between threads); at most :data:`OPEN_PER_THREAD` stay open per thread."""
    opened = getattr(_local, "opened", None)
    if opened is None:
        opened = _local.opened = kept_open(OPEN_PER_THREAD, _close)(_open_dataset)
    return opened(path, overview)


def _window(block_info: Any) -> tuple[Any, int, int]:
    from rasterio.windows import Window

    (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    return Window(x0, y0, x1 - x0, y1 - y0), y0, x0


def _read_bands(path: str, overview: int | None, level: int,
                block_info: Any = None) -> np.ndarray:
    window, y0, x0 = _window(block_info)
    with decode_guard(path, level, y0, x0):
        return _dataset(path, overview).read(window=window)


def _read_valid(path: str, overview: int | None, level: int,
                block_info: Any = None) -> np.ndarray:
    window, y0, x0 = _window(block_info)
    with decode_guard(path, level, y0, x0):
        return _dataset(path, overview).dataset_mask(window=window)[None] > 0


def _is_georeferenced(src: Any) -> bool:
    return src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])


def _chunks(src: Any) -> tuple[int, int]:
    bh, bw = src.block_shapes[0]
    if bh < MIN_ROWS and bw >= src.width:  # strips: read bands of rows
        bh = MIN_ROWS
    return min(bh, src.height), min(bw, src.width)


def _channel_names(src: Any) -> list[str]:
    names = []
    for i, (desc, interp) in enumerate(zip(src.descriptions, src.colorinterp, strict=True)):
        if desc:
            names.append(desc)
        elif interp.name in ("red", "green", "blue", "alpha") and src.count in (3, 4):
            names.append(interp.name[0].upper())
        else:
            names.append(f"b{i + 1}")
    return names


class GeoTiffReader:
    """rasterio reader: georeferenced GeoTIFF / COG (any band count and dtype)."""

    name = "geotiff"

    def probe(self, path: Path) -> bool:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.windows import Window

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            if not _is_georeferenced(src):
                return False  # a plain TIFF: the tifffile reader keeps its pixel size
            src.read(1, window=Window(0, 0, 1, 1))  # decode one block, not only open
            return True

    def open(self, path: Path, **opts: Any) -> Raster:
        import rasterio
        from rasterio.enums import MaskFlags

        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(f"{path}: the raster has a geotransform but no CRS",
                                 "assign one (gdal_edit.py -a_srs EPSG:...) or read it with "
                                 "reader: tiff")
            if len(set(src.dtypes)) != 1:
                raise InputError(f"{path}: bands of different types ({', '.join(src.dtypes)})",
                                 "convert the bands to one type")
            dtype = np.dtype(src.dtypes[0])
            count = src.count
            overviews = src.overviews(1)
            masked = any(MaskFlags.all_valid not in flags for flags in src.mask_flag_enums)
            crs = src.crs.to_string()
            unit = _UNITS.get(str(src.crs.linear_units).lower(), str(src.crs.linear_units))
            if src.crs.is_geographic:
                unit = "°"
            attrs = {"source": str(path), "reader": self.name, "vendor": src.driver,
                     "nodata": src.nodata, "crs_unit": unit,
                     "overviews": list(overviews), "tags": dict(src.tags())}
            transform = tuple(src.transform)[:6]
            channels = _channel_names(src)
        levels, valid = [], []
        for level, overview in enumerate([None, *range(len(overviews))]):
            ds = _dataset(str(path), overview)
            h, w = ds.height, ds.width
            ch, cw = _chunks(ds)
            levels.append(lazy_blocks(_read_bands, (count, h, w), (count, ch, cw), dtype,
                                      str(path), overview, level))
            if masked:
                valid.append(lazy_blocks(_read_valid, (1, h, w), (1, ch, cw), bool, str(path),
                                         overview, level))
        return Raster(levels=levels, crs=crs, transform=transform, channels=tuple(channels),
                      attrs=attrs, valid=valid or None)
