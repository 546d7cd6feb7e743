"""Cloud-Optimised GeoTIFF (rasterio / GDAL) in the source's CRS, transform and nodata.

Chunks are written, as dask computes them, into a tiled scratch GeoTIFF beside
the output (one rasterio handle, behind a lock: GDAL datasets are not
thread-safe); GDAL's COG driver then copies it into the final layout, tiles
and internal overviews ordered as the COG specification requires. Label images
get a colour table and their class names as a metadata tag (``wfe_classes``),
so QGIS shows them in their colours; their overviews use the nearest class,
images the average. GDAL's block cache is capped (``GDAL_CACHEMAX``), so memory
stays flat whatever the size.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wfe.errors import WfeError
from wfe.raster import Raster
from wfe.sink import Sink, TemporaryOutput, chunks_of
from wfe_builtin.writers._labels import label_classes, rgb_of

__all__ = ["CogWriter"]

#: MB of GDAL block cache while writing.
CACHE_MB = 128
_CODECS = {"deflate": "DEFLATE", "zstd": "ZSTD", "lzw": "LZW", "jpeg": "JPEG", "none": "NONE"}


class _WindowTarget:
    """``target[region] = block`` for ``dask.array.store``: writes a window of a GeoTIFF."""

    def __init__(self, path: Path, profile: dict[str, Any]) -> None:
        import rasterio

        self.path = path
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB), rasterio.open(path, "w", **profile):
            pass
        self._dataset: Any = None
        self._open = threading.Lock()

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        import rasterio
        from rasterio.windows import Window

        _, ys, xs = region
        window = Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        # rasterio's environments belong to a thread; each write opens its own.
        with self._open, rasterio.Env(GDAL_CACHEMAX=CACHE_MB):
            if self._dataset is None:
                self._dataset = rasterio.open(self.path, "r+")
            self._dataset.write(block, window=window)

    def close(self) -> None:
        import rasterio

        with self._open, rasterio.Env(GDAL_CACHEMAX=CACHE_MB):
            if self._dataset is not None:
                self._dataset.close()
                self._dataset = None


def _to_cog(_: Any, target: _WindowTarget, temp: Path, options: dict[str, Any],
            colormap: dict[int, tuple[int, ...]] | None, tags: dict[str, str]) -> None:
    import rasterio
    from rasterio.shutil import copy

    target.close()
    try:
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB):
            if colormap or tags:
                with rasterio.open(target.path, "r+") as ds:
                    if colormap:
                        ds.write_colormap(1, colormap)
                    ds.update_tags(**tags)
            copy(target.path, temp, driver="COG", **options)
    finally:
        target.path.unlink(missing_ok=True)


class CogWriter:
    """Writes a georeferenced Raster as a Cloud-Optimised GeoTIFF."""

    name = "cog"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False,
              blocksize: int = 512,
              compression: Literal["deflate", "zstd", "lzw", "jpeg", "none"] = "deflate",
              nodata: float | None = None, **_: Any) -> Sink:
        """Write ``raster``; ``nodata`` defaults to the source's."""
        import dask
        import dask.array as da
        from rasterio.transform import Affine

        if raster.crs is None or raster.transform is None:
            raise WfeError(f"{path}: a GeoTIFF needs a CRS, and this image has none",
                           "write slides as ome-tiff or ome-zarr, or read a georeferenced "
                           "image")
        if blocksize % 16:
            raise WfeError(f"{path}: blocksize {blocksize} is not a multiple of 16",
                           f"use blocksize: {max(16, blocksize // 16 * 16)}")
        if compression not in _CODECS:
            raise WfeError(f"{path}: unknown compression {compression!r}",
                           f"use one of {', '.join(_CODECS)}")
        labels = raster.is_labels
        colormap = None
        if labels:
            _, colors = label_classes(raster, path)
            if raster.dtype != np.uint8:
                raise WfeError(f"{path}: a colour table needs uint8 labels, got {raster.dtype}",
                               "write the labels output of segment")
            colormap = {i: (*rgb_of(c), 0 if i == 0 else 255) for i, c in enumerate(colors)}
        c, h, w = raster.shape
        if nodata is None:
            nodata = raster.attrs.get("nodata")
        temp = TemporaryOutput(path, overwrite)
        scratch = temp.temp.with_name(temp.temp.name + ".scratch.tif")
        profile = {"driver": "GTiff", "width": w, "height": h, "count": c,
                   "dtype": str(raster.dtype), "crs": raster.crs,
                   "transform": Affine(*raster.transform), "tiled": True,
                   "blockxsize": blocksize, "blockysize": blocksize, "compress": "ZSTD",
                   "zstd_level": 1, "sparse_ok": True, "bigtiff": "IF_SAFER",
                   **({"nodata": nodata} if nodata is not None else {})}
        target = _WindowTarget(scratch, profile)
        level0 = raster.levels[0]
        level0 = level0.rechunk((c, *(max(blocksize, ch[0] // blocksize * blocksize)
                                      for ch in level0.chunks[1:])))
        stored = da.store(level0, target, lock=False, compute=False)
        options = {"COMPRESS": _CODECS[compression], "BLOCKSIZE": blocksize,
                   "OVERVIEWS": "AUTO", "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS",
                   "OVERVIEW_RESAMPLING": "NEAREST" if labels else "AVERAGE"}
        if compression in ("deflate", "zstd", "lzw") and raster.dtype.kind in "ui":
            options["PREDICTOR"] = "2"
        tags = {"wfe_classes": json.dumps(raster.attrs["classes"])} if labels else {}
        work = dask.delayed(_to_cog)(chunks_of(stored), target, temp.temp, options, colormap,
                                     tags)

        def discard() -> None:
            try:
                target.close()
            finally:
                scratch.unlink(missing_ok=True)
                temp.discard()

        return Sink(path=path, work=[work], finalize=temp.commit, abort=discard)
