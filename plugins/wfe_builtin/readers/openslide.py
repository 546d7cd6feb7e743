"""Whole-slide formats through OpenSlide, lazily, one dask chunk per tile.

Aperio .svs (JPEG and JPEG 2000 tiles), Hamamatsu .ndpi/.vms, MIRAX .mrxs,
Leica .scn, Ventana .bif, Philips TIFF, DICOM WSI (any file of the series),
Sakura .svslide, and tiled TIFF. A plain tiled TIFF is left to the tifffile
reader, which keeps its exact dtype and channels. Aperio's JPEG tiles are also
described as compressed tiles (:mod:`wfe.encoded`), for a model on a GPU to decode.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from wfe.encoded import EncodedTiles
from wfe.errors import InputError
from wfe.raster import Raster
from wfe_builtin.readers._common import decode_guard, kept_open, lazy_blocks, plausible_mpp
from wfe_builtin.readers._tiff_tiles import jpeg_tiles, tiff_pages

__all__ = ["OpenSlideReader"]

#: What OpenSlide gives for a tile never written (transparent), once made opaque: white.
MISSING_TILE = 255


def _close(slide: Any) -> None:
    slide.close()


#: Bytes of decoded tiles OpenSlide keeps, for all slides of the process together.
TILE_CACHE_BYTES = 64 << 20


@cache
def _shared_tile_cache() -> Any:
    """One OpenSlide tile cache for every handle: each handle has its own 32 MiB cache
    otherwise, so the handles kept open over an archive held up to a gigabyte of tiles
    (32 MiB more per slide read, measured)."""
    import openslide

    return openslide.OpenSlideCache(TILE_CACHE_BYTES)


@kept_open(32, _close)
def _slide(path: str) -> Any:
    """One OpenSlide handle per file and process (OpenSlide handles are thread-safe); the
    32 most recently used stay open, sharing one tile cache."""
    import openslide

    slide = openslide.OpenSlide(path)
    slide.set_cache(_shared_tile_cache())
    return slide


def _read_tile(path: str, level: int, downsample: float,
               block_info: Any = None) -> np.ndarray:
    info = block_info[None]
    (_, _), (y0, y1), (x0, x1) = info["array-location"]
    with decode_guard(path, level, y0, x0):
        region = _slide(path).read_region((int(x0 * downsample), int(y0 * downsample)), level,
                                          (x1 - x0, y1 - y0))
        rgba = np.asarray(region)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + MISSING_TILE * (1 - alpha)  # -> white
    return np.rint(rgb).astype(np.uint8).transpose(2, 0, 1)


def _aperio_tiles(path: Path, levels: list[Any]) -> dict[str, EncodedTiles]:
    """The JPEG tiles of an Aperio slide's levels, each a TIFF page of the same size as
    the level, so that a model on a GPU decodes them there (docs/inference.md, On a
    GPU). Other vendors' levels are not one page each as OpenSlide gives them (NDPI's
    strips, MIRAX's and Ventana's overlapping tiles, Leica's offsets): not described."""
    import tifffile

    try:
        pages = tiff_pages(str(path), 0)
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return {}  # OpenSlide reads it; the CPU decodes
    encoded = {}
    for level in levels:
        _, h, w = level.shape
        i = next((i for i, page in enumerate(pages)
                  if (page.imagelength, page.imagewidth) == (h, w)), None)
        tiles = (None if i is None
                 else jpeg_tiles(str(path), 0, i, pages[i], level.shape, MISSING_TILE))
        if tiles is not None:
            encoded[level.name] = tiles
    return encoded


def _check_dicom_series(path: Path, props: Any) -> None:
    """A DICOM series whose largest level is a resampled one has lost its original
    (full-resolution) file: OpenSlide would open the rest as a smaller slide."""
    if props.get("openslide.vendor") != "dicom":
        return
    if props.get("dicom.ImageType[3]") == "RESAMPLED":
        series = props.get("dicom.SeriesInstanceUID", "?")
        raise InputError(f"{path}: DICOM series {series} has no full-resolution level (its "
                         "largest image is resampled): a file of the series is missing",
                         "copy every .dcm file of the series into the same folder")


def _mirax_todo(path: Path) -> str:
    return (f"copy the whole folder {path.with_suffix('').name}/ (Slidedat.ini, Index.dat, "
            f"Data*.dat) next to {path.name}")


def _check_mirax_folder(path: Path) -> None:
    """A MIRAX ``.mrxs`` file is only a pointer: its pixels are in the folder of the same
    name beside it (Slidedat.ini, Index.dat, Data*.dat), often left behind in a copy."""
    slidedat = path.with_suffix("") / "Slidedat.ini"
    if not slidedat.is_file():
        raise InputError(f"{path}: MIRAX slide without its data: {slidedat} not found",
                         _mirax_todo(path))


class OpenSlideReader:
    """OpenSlide reader: vendor formats (and tiled TIFF that OpenSlide accepts)."""

    name = "openslide"

    def probe(self, path: Path) -> bool:
        import openslide

        mirax = path.suffix.lower() == ".mrxs"
        if mirax:
            _check_mirax_folder(path)
        fmt = openslide.OpenSlide.detect_format(str(path))
        if fmt is None or fmt == "generic-tiff":  # plain TIFF: the tifffile reader is more exact
            return False
        try:
            slide = _slide(str(path))
            slide.read_region((0, 0), slide.level_count - 1, (1, 1))
        except openslide.OpenSlideError as exc:
            if mirax:  # the format is known: say what is wrong with this slide
                raise InputError(f"{path}: MIRAX slide incomplete or damaged ({exc})",
                                 _mirax_todo(path)) from exc
            raise
        return True

    def open(self, path: Path, mpp: float | None = None, tile: int = 512,
             **opts: Any) -> Raster:
        """Open lazily: one dask chunk per native tile (``tile`` px where the format
        reports no tile size)."""
        import openslide

        slide = _slide(str(path))
        props = slide.properties
        _check_dicom_series(path, props)
        file_mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        base = mpp or plausible_mpp(float(file_mpp) if file_mpp else None, str(path))
        levels = []
        for level, ((w, h), ds) in enumerate(zip(slide.level_dimensions,
                                                 slide.level_downsamples, strict=True)):
            tw = int(props.get(f"openslide.level[{level}].tile-width", tile))
            th = int(props.get(f"openslide.level[{level}].tile-height", tile))
            chunks = (3, th, tw)
            levels.append(lazy_blocks(_read_tile, (3, h, w), chunks, np.uint8, str(path), level,
                                      ds))
        pixel_size = [base * ds for ds in slide.level_downsamples] if base else None
        vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        encoded = _aperio_tiles(path, levels) if vendor == "aperio" else {}
        return Raster(levels=levels, pixel_size=pixel_size, channels=("R", "G", "B"),
                      attrs={"source": str(path), "reader": self.name, "vendor": vendor,
                             "encoded": encoded,
                             "objective_power": props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER),
                             "associated": sorted(slide.associated_images),
                             "associated_sizes": {k: list(v.size) for k, v in
                                                  slide.associated_images.items()}})
