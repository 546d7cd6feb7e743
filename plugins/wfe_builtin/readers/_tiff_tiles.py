"""A TIFF's pages and compressed tiles, read straight from the file, for the readers of
formats stored as TIFF (the tifffile reader, and the OpenSlide reader's Aperio slides).

Files stay open between chunks (:func:`~wfe_builtin.readers._common.kept_open`): a
TiffFile per file and series for the pages' tile offsets, and a descriptor per file for
positioned reads that several threads may make at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

from wfe.encoded import EncodedTiles
from wfe_builtin.readers._common import kept_open

__all__ = ["OPEN_FILES", "file_descriptor", "jpeg_tiles", "tiff_pages"]

#: Files kept open for the next chunk (each as a descriptor and a TiffFile; the tifffile
#: reader keeps as many Zarr stores).
OPEN_FILES = 32


def _close_pages(pages: tuple[Any, ...]) -> None:
    pages[0].parent.close()


@kept_open(OPEN_FILES, _close_pages)
def tiff_pages(path: str, series: int) -> tuple[Any, ...]:
    """Level-0..n pages of one series, from a TiffFile kept open per file and process."""
    import tifffile

    tif = tifffile.TiffFile(path)
    return tuple(lvl.pages[0] for lvl in tif.series[series].levels)


@kept_open(OPEN_FILES, os.close)
def file_descriptor(path: str) -> int:
    """A read-only descriptor for ``os.pread`` (positioned reads are safe across threads)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))


def _jpeg_streams(path: str, series: int, level: int,
                  indices: Sequence[tuple[int, int]]) -> list[bytes]:
    """The JPEG tiles at ``indices`` (row, column) of one level, each a complete stream:
    a level's shared tables (TIFF's JPEGTables), where it has them, go into each tile's
    stream after its start marker. A tile never written is ``b""``."""
    page = tiff_pages(path, series)[level]
    cols = -(-page.imagewidth // page.tilewidth)
    tables = page.jpegtables[2:-2] if page.jpegtables else b""  # without SOI and EOI
    fd = file_descriptor(path)
    streams = []
    for row, col in indices:
        i = row * cols + col
        count = page.databytecounts[i]
        data = os.pread(fd, count, page.dataoffsets[i]) if count else b""
        streams.append(data[:2] + tables + data[2:] if data and tables else data)
    return streams


def jpeg_tiles(path: str, series: int, level: int, page: Any, shape: tuple[int, int, int],
               fill: int = 0) -> EncodedTiles | None:
    """The JPEG tiles of ``page`` (level ``level`` of ``series``), for a model that decodes
    them on its device (:mod:`wfe.encoded`): 8-bit grey or three-sample tiles,
    interleaved; None for any other page. ``fill``: the value of a tile never written,
    as the reader gives it."""
    if not (page.is_tiled and page.compression == 7 and page.bitspersample == 8
            and page.samplesperpixel in (1, 3) and page.planarconfig == 1):
        return None
    return EncodedTiles("jpeg", shape, (page.tilelength, page.tilewidth),
                        partial(_jpeg_streams, path, series, level), fill)
