"""Pyramidal OME-TIFF (tifffile): tiled, compressed, with a SubIFD pyramid and OME-XML.

The layout QuPath (Bio-Formats), tifffile and OpenSlide read: level 0 as the
first page with its reductions by 2 in SubIFDs, tiles of ``tile``² compressed
with ``compression``, the pixel size in the OME-XML (``PhysicalSizeX/Y`` in µm,
or metres for geodata) and in the TIFF resolution tags, channel names in the
OME-XML. RGB uint8 images are stored interleaved (photometric RGB, so JPEG
compression is possible); anything else channel by channel. Label images keep
their class names and colours, and geodata its CRS and transform, as JSON after
``wfe:`` in the OME-XML image ``Description``, and wfe's tiff reader reads them
back (for georeferenced viewers, write a COG instead).

The levels are first computed into a scratch Zarr store (see ``_spool``), then
written tile by tile in file order: memory holds a few tiles, whatever the size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wfe.errors import WfeError
from wfe.raster import Raster
from wfe.sink import Sink, TemporaryOutput
from wfe_builtin.writers._spool import spool, tiles
from wfe_builtin.writers.ome_zarr import pyramid

__all__ = ["COMPRESSIONS", "OmeTiffWriter"]

COMPRESSIONS = ("zlib", "zstd", "lzw", "jpeg", "none")
BUFFER_BYTES = 16 * 2**20
_OME_UNITS = {"µm": "µm", "m": "m", "ft": "ft"}


def _is_rgb(raster: Raster) -> bool:
    return raster.shape[0] == 3 and raster.dtype == np.uint8 and not raster.is_labels


def _metadata(raster: Raster, rgb: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"axes": "YXS" if rgb else "CYX" if raster.shape[0] > 1 else "YX"}
    res = raster.resolutions()
    unit = _OME_UNITS.get(raster.unit or "")
    if res is not None and unit is not None:
        meta.update(PhysicalSizeX=res[0], PhysicalSizeY=res[0], PhysicalSizeXUnit=unit,
                    PhysicalSizeYUnit=unit)
    if not rgb:
        meta["Channel"] = {"Name": list(raster.channels)}
    extra: dict[str, Any] = {k: raster.attrs[k] for k in ("classes", "colors")
                             if k in raster.attrs}
    if raster.crs:
        extra["crs"] = raster.crs
        extra["transform"] = list(raster.transform or ())
    if extra:
        meta["Description"] = "wfe:" + json.dumps(extra)
    return meta


def _write(_: Any, where: Path, temp: Path, n_levels: int, shape: tuple[int, int, int],
           dtype: str, tile: int, rgb: bool, compression: str | None, level: int | None,
           resolution: float | None, unit: str | None, metadata: dict[str, Any]) -> None:
    import tifffile

    c, h, w = shape
    common: dict[str, Any] = {
        "dtype": dtype, "tile": (tile, tile), "compression": compression,
        "photometric": "rgb" if rgb else "minisblack",
        "maxworkers": os.cpu_count() or 1,
        # tifffile compresses up to 512 MB of tiles per pass by default: memory would grow
        # with the image. A few tiles per worker keep the workers busy.
        "buffersize": BUFFER_BYTES,
    }
    if compression and level is not None:
        common["compressionargs"] = {"level": level}
    if not rgb and c > 1:
        common["planarconfig"] = "separate"
    try:
        with tifffile.TiffWriter(temp, bigtiff=True, ome=True) as tif:
            for i in range(n_levels):
                f = 2**i
                lh, lw = -(-h // f), -(-w // f)
                lshape = (lh, lw, 3) if rgb else (c, lh, lw) if c > 1 else (lh, lw)
                opts: dict[str, Any] = {}
                if resolution is not None and unit == "µm":
                    ppcm = 1e4 / (resolution * f)
                    opts.update(resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
                if i == 0:
                    opts.update(subifds=n_levels - 1, metadata=metadata)
                else:
                    opts.update(subfiletype=1, metadata=None)
                tif.write(tiles(where, i, tile, rgb), shape=lshape, **common, **opts)
    finally:
        import shutil

        shutil.rmtree(where, ignore_errors=True)


class OmeTiffWriter:
    """Writes a Raster as a tiled pyramidal OME-TIFF."""

    name = "ome-tiff"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False, tile: int = 512,
              compression: Literal["zlib", "zstd", "lzw", "jpeg", "none"] = "zlib",
              compression_level: int | None = None, **_: Any) -> Sink:
        """Write ``raster``; ``tile`` must be a multiple of 16 (TIFF's rule)."""
        if tile % 16:
            raise WfeError(f"{path}: tile {tile} is not a multiple of 16 (a TIFF rule)",
                           f"use tile: {max(16, tile // 16 * 16)}")
        if compression not in COMPRESSIONS:
            raise WfeError(f"{path}: unknown compression {compression!r}",
                           f"use one of {', '.join(COMPRESSIONS)}")
        rgb = _is_rgb(raster)
        if compression == "jpeg" and not (rgb or (raster.shape[0] == 1 and
                                                  raster.dtype == np.uint8)):
            raise WfeError(f"{path}: JPEG needs uint8 RGB or grey pixels",
                           "use compression: zlib or zstd")
        if compression == "jpeg" and raster.is_labels:
            raise WfeError(f"{path}: JPEG would change label values", "use compression: zlib")
        levels = pyramid(raster, None, raster.is_labels)
        temp = TemporaryOutput(path, overwrite)
        where = temp.temp.with_name(temp.temp.name + ".spool.zarr")
        stored = spool(levels, where, tile, channels_last=rgb)
        res = raster.resolutions()
        import dask

        work = dask.delayed(_write)(
            stored, where, temp.temp, len(levels), raster.shape, str(raster.dtype), tile, rgb,
            None if compression == "none" else compression, compression_level,
            None if res is None else res[0], raster.unit, _metadata(raster, rgb))

        def discard() -> None:
            import shutil

            shutil.rmtree(where, ignore_errors=True)
            temp.discard()

        return Sink(path=path, work=[work], finalize=temp.commit, abort=discard)
