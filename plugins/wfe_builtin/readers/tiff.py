"""TIFF through tifffile, lazily: one dask chunk per native tile (or band of strips).

Reads pyramids stored as successive pages or SubIFDs (OME-TIFF), BigTIFF,
ImageJ hyperstacks and QPTIFF, multi-channel fluorescence (uint16) with the
channel names and pixel size of the OME-XML, and plain tiled or stripped TIFF.
Axes other than channels, y and x (z, time, ...) are reduced by picking one
index (``index: {Z: 3}`` in the reader options; 0 by default).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from wfe.errors import InputError
from wfe.raster import Raster
from wfe_builtin.readers._common import (
    check_declared_size,
    decode_guard,
    kept_open,
    lazy_blocks,
    pick_index,
    plausible_mpp,
)
from wfe_builtin.readers._tiff_tiles import OPEN_FILES, file_descriptor, jpeg_tiles, tiff_pages

__all__ = ["TiffReader"]

_UNIT_TO_UM = {2: 25400.0, 3: 10000.0}  # INCH, CENTIMETER -> µm
_OME_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_FLAGS = ("svs", "ndpi", "ome", "qpi", "imagej", "philips", "scn", "bif", "geotiff")
#: The value of a tile or strip never written (byte count 0: a sparse TIFF), as libtiff
#: and tifffile read it.
MISSING_TILE = 0
#: Chunks are whole tiles (or bands of strips) at least this many pixels on a side.
MIN_CHUNK = 512

# tifffile logs damaged structures itself; wfe reports them as one error line instead.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _mpp_from_tags(page: Any, imagej: dict[str, Any] | None) -> float | None:
    xres = page.resolution[0] if page.resolution else 0
    if not xres:
        return None
    unit = int(page.resolutionunit)
    if unit in _UNIT_TO_UM:
        return _UNIT_TO_UM[unit] / xres
    if imagej and str(imagej.get("unit", "")).lower() in ("micron", "µm", "um", "\\u00B5m"):
        return 1.0 / xres
    return None


def _ome_image(tif: Any) -> dict[str, Any]:
    """The first ``Image`` element of the OME-XML (empty if none)."""
    import tifffile

    if not tif.is_ome or not tif.ome_metadata:
        return {}
    try:
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
    except Exception:  # noqa: BLE001 - broken OME-XML: fall back to the TIFF tags
        return {}
    image = ome.get("Image", {})
    return image[0] if isinstance(image, list) else image


def _wfe_description(image: dict[str, Any]) -> dict[str, Any]:
    """What wfe's OME-TIFF writer keeps in the image description: classes, colours, CRS."""
    text = str(image.get("Description") or "")
    if not text.startswith("wfe:"):
        return {}
    try:
        found = json.loads(text[4:])
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _ome_channels(pixels: dict[str, Any]) -> list[str]:
    channels = pixels.get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    return [str(c.get("Name") or c.get("ID") or f"c{i}") for i, c in enumerate(channels)]


def _ome_mpp(pixels: dict[str, Any]) -> float | None:
    size = pixels.get("PhysicalSizeX")
    if size is None:
        return None
    return float(size) * _OME_UNIT_TO_UM.get(str(pixels.get("PhysicalSizeXUnit", "µm")), 1.0)


def _svs_mpp(page: Any) -> float | None:
    """``MPP = 0.25`` from an Aperio ImageDescription (``key = value`` fields after ``|``)."""
    if not page.is_svs:
        return None
    for field in (page.description or "").split("|")[1:]:
        key, _, value = field.partition("=")
        if key.strip() == "MPP":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _qpi_channels(series: Any) -> list[str]:
    """Channel names of a PerkinElmer/Akoya QPTIFF: each full-resolution page's QPI XML
    names its channel (``<Name>``); tifffile does not read them."""
    import xml.etree.ElementTree as ET

    names = []
    for page in series.levels[0].pages:
        try:
            name = ET.fromstring(page.description).findtext("Name")
        except (ET.ParseError, AttributeError):
            return []
        if not name:
            return []
        names.append(name.strip())
    return names


def _vendor(tif: Any) -> str:
    page = tif.pages.first
    for flag in _FLAGS:
        if getattr(page, f"is_{flag}", False) or getattr(tif, f"is_{flag}", False):
            return flag
    return "bigtiff" if tif.is_bigtiff else "tiff"


def _check_complete(path: Path, series: Any) -> None:
    """Fail early, in one line, when tile data lies past the end of the file."""
    size = path.stat().st_size
    for level in series.levels:
        for page in level.pages:
            if page is None or not page.dataoffsets:
                continue
            end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True))
            if end > size:
                raise InputError(f"{path}: the file is truncated ({size:,} bytes; its tiles "
                                 f"need {end:,})", "copy or download the file again")


def _close_levels(levels: tuple[Any, ...]) -> None:
    levels[0].store.close()


@kept_open(OPEN_FILES, _close_levels)
def _zarr_levels(path: str, series: int) -> tuple[Any, ...]:
    """The zarr arrays of one series' levels (one tifffile store per file and process)."""
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=series)
    group = zarr.open(store, mode="r")
    if isinstance(group, zarr.Array):
        return (group,)
    return tuple(group[str(i)] for i in range(len(list(group.array_keys()))))



def _decode_region(path: str, series: int, level: int,
                   block_info: Any = None) -> np.ndarray:
    """Decode the tiles (or strips) under one chunk with tifffile, straight from the file.

    Used for levels stored in one page (whole-slide pyramids): it skips a store
    layer that costs several times the decoding itself per tile.
    """
    (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    page = tiff_pages(path, series)[level]
    planes, _, height, width, contig = page.shaped
    th, tw = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip or height,
                                                                     width)
    rows, cols = -(-height // th), -(-width // tw)
    out = np.empty((planes * contig, y1 - y0, x1 - x0), page.dtype)
    fd = file_descriptor(path)
    with decode_guard(path, level, y0, x0):
        for plane in range(planes):
            for ty in range(y0 // th, -(-y1 // th)):
                for tx in range(x0 // tw, -(-x1 // tw)):
                    index = (plane * rows + ty) * cols + tx
                    offset, count = page.dataoffsets[index], page.databytecounts[index]
                    sy, sx = ty * th, tx * tw
                    ys = slice(max(y0, sy), min(y1, sy + th))
                    xs = slice(max(x0, sx), min(x1, sx + tw))
                    into = (slice(plane * contig, (plane + 1) * contig),
                            slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
                    if not count:  # never written (a sparse TIFF): 0, as libtiff reads it
                        out[into] = MISSING_TILE
                        continue
                    segment, _, _ = page.decode(os.pread(fd, count, offset), index,
                                                jpegtables=page.jpegtables)
                    tile = segment[0].transpose(2, 0, 1)  # (samples, y, x)
                    out[into] = tile[:, ys.start - sy:ys.stop - sy, xs.start - sx:xs.stop - sx]
    return out


def _read_block(path: str, series: int, level: int,
                select: tuple[Any, ...], order: tuple[int, ...], block_info: Any = None) -> np.ndarray:
    (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    arr = _zarr_levels(path, series)[level]
    key = tuple(slice(y0, y1) if s == "y" else slice(x0, x1) if s == "x" else s for s in select)
    with decode_guard(path, level, y0, x0):
        data = np.asarray(arr[key])
    data = data.transpose(order) if order else data
    return data if data.ndim == 3 else data[None]


def _layout(axes: str, shape: tuple[int, ...], index: dict[str, int],
            path: Path) -> tuple[tuple[Any, ...], tuple[int, ...], int]:
    """How to take ``(c, y, x)`` out of an array with tifffile ``axes``.

    Returns the selection (an index per extra axis, "y"/"x"/slice for the kept
    ones), the transpose after selecting, and the channel count.
    """
    kept, select = [], []
    channel_axes = [a for a in axes if a in "CS"]
    if len(channel_axes) == 2:  # e.g. CYXS: RGB planes of several channels -> pick C
        index = {"C": 0, **index}
    for axis, n in zip(axes, shape, strict=True):
        if axis == "Y":
            select.append("y")
            kept.append("Y")
        elif axis == "X":
            select.append("x")
            kept.append("X")
        elif axis in "CS" and axis not in index:
            select.append(slice(None))
            kept.append("C")
        else:
            select.append(pick_index(path, axis, index, n))
    if "Y" not in kept or "X" not in kept:
        raise InputError(f"{path}: TIFF axes {axes!r} have no y and x", "use a 2-D image")
    c = next((n for a, n in zip(axes, shape, strict=True) if a in "CS" and a not in index), 1)
    order = tuple(kept.index(a) for a in ("C", "Y", "X") if a in kept)
    return tuple(select), order if "C" in kept else (), c


class TiffReader:
    """tifffile reader: tiled or stripped TIFF, OME-TIFF, BigTIFF, ImageJ, QPTIFF (channel
    names from its QPI XML)."""

    name = "tiff"

    def probe(self, path: Path) -> bool:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.series[0].levels[0].keyframe
            try:
                codec = tifffile.COMPRESSION(page.compression).name
            except ValueError:
                raise ValueError(f"unsupported TIFF compression {page.compression}") from None
            h, w = page.imagelength, page.imagewidth
            check_declared_size(path, page, h, w, page.samplesperpixel * page.dtype.itemsize)
            # Decode one tile/strip: opening alone proves nothing about the codec.
            if page.dataoffsets and page.databytecounts[0]:
                fh = tif.filehandle
                fh.seek(page.dataoffsets[0])
                data = fh.read(page.databytecounts[0])
                try:
                    page.decode(data, 0, jpegtables=page.jpegtables)
                except Exception as exc:
                    raise ValueError(f"cannot decode its {codec} ({int(page.compression)}) "
                                     f"data: {exc}") from exc
            return True

    def open(self, path: Path, mpp: float | None = None, series: int = 0,
             index: dict[str, int] | None = None, **opts: Any) -> Raster:
        import tifffile

        index = {k.upper(): v for k, v in (index or {}).items()}
        with tifffile.TiffFile(path) as tif:
            s = tif.series[series]
            _check_complete(path, s)
            page = s.levels[0].keyframe
            axes = s.axes
            shapes = [tuple(lvl.shape) for lvl in s.levels]
            pages = [lvl.keyframe for lvl in s.levels]
            single_page = [len(lvl.pages) == 1 for lvl in s.levels]
            ome_image = _ome_image(tif)
            pixels = ome_image.get("Pixels", {})
            channels = _ome_channels(pixels) or (_qpi_channels(s) if tif.is_qpi else [])
            extra = _wfe_description(ome_image)
            file_mpp = (_ome_mpp(pixels) or _svs_mpp(page)
                        or _mpp_from_tags(page, tif.imagej_metadata))
            vendor = _vendor(tif)
            associated = [x.name for x in tif.series[1:] if x.name and not x.is_pyramidal]
            description = page.description or ""
            dtype = np.dtype(s.dtype)
        select, order, n_channels = _layout(axes, shapes[0], index, path)
        levels, encoded = [], {}
        for i, (shape, kf) in enumerate(zip(shapes, pages, strict=True)):
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            check_declared_size(path, kf, h, w, dtype.itemsize * n_channels)
            if kf.is_tiled:
                th, tw = kf.tilelength, kf.tilewidth
                th, tw = th * max(1, MIN_CHUNK // th), tw * max(1, MIN_CHUNK // tw)
            else:
                rows = kf.rowsperstrip or h
                th, tw = (rows * max(1, MIN_CHUNK // rows) if rows < h else h), w
            shape, chunks = (n_channels, h, w), (n_channels, min(th, h), min(tw, w))
            if single_page[i] and axes in ("YXS", "YX", "SYX"):
                levels.append(lazy_blocks(_decode_region, shape, chunks, dtype, str(path),
                                          series, i))
                tiles = jpeg_tiles(str(path), series, i, kf, shape, MISSING_TILE)
                if tiles is not None:
                    encoded[levels[-1].name] = tiles
            else:
                levels.append(lazy_blocks(_read_block, shape, chunks, dtype, str(path), series,
                                          i, select, order))
        crs, transform = extra.get("crs"), extra.get("transform")
        base = mpp or (None if crs else plausible_mpp(file_mpp, str(path)))
        pixel_size = None
        if base:
            pixel_size = [base * levels[0].shape[2] / lvl.shape[2] for lvl in levels]
        if len(channels) != n_channels:
            channels = list(("R", "G", "B")) if n_channels == 3 and "S" in axes else []
        return Raster(levels=levels, pixel_size=pixel_size, channels=tuple(channels),
                      crs=crs, transform=tuple(transform) if crs and transform else None,
                      attrs={"source": str(path), "reader": self.name, "vendor": vendor,
                             **{k: extra[k] for k in ("classes", "colors") if k in extra},
                             "axes": axes, "associated": associated, "encoded": encoded,
                             "description": description[:2000]})
