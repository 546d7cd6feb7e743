"""Helpers shared by the readers: pixel-size sanity, declared-size sanity, decode errors."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import dask.array as da
import numpy as np

from wfe.errors import InputError, WfeError

__all__ = ["MAX_CHUNK_BYTES", "DecodeGuard", "check_declared_size", "lazy_blocks",
           "plausible_mpp"]

#: Microscope pixel sizes lie well inside this range (µm); 72-dpi tags give ~352.
MPP_RANGE = (0.01, 100.0)
#: One chunk (a tile, or a band of strips) decoded may not exceed this.
MAX_CHUNK_BYTES = 1 << 30
#: Stored bytes per decoded byte below which a large image cannot be real data.
MIN_STORED_FRACTION = 1e-5


def plausible_mpp(value: float | None, source: str) -> float | None:
    """``value`` if it looks like a microscope pixel size, else ``None`` with a warning."""
    if value is None or not value > 0:
        return None
    if not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        warnings.warn(f"{source}: pixel size {value:.4g} µm is not a microscope's "
                      "(resolution tags of a screen image?); ignored; give mpp: in the reader "
                      "options", stacklevel=3)
        return None
    return value


def check_declared_size(path: Path, page: Any, h: int, w: int, pixel_bytes: int) -> None:
    """Reject TIFF pages whose declared size their data cannot back.

    A header can claim 10⁶ × 10⁶ pixels in a few kilobytes; reading it would try
    to allocate terabytes or return garbage. Checked: the number of tiles or strips
    the size implies, the size of one decoded chunk, and the stored bytes per
    decoded byte.
    """
    decoded = h * w * pixel_bytes
    if page.is_tiled:
        expected = math.ceil(h / page.tilelength) * math.ceil(w / page.tilewidth)
        chunk_bytes = page.tilelength * page.tilewidth * pixel_bytes
    else:
        rows = page.rowsperstrip or h
        expected = math.ceil(h / rows)
        chunk_bytes = min(rows, h) * w * pixel_bytes
    if int(page.planarconfig) == 2:
        expected *= page.samplesperpixel
    found = len(page.dataoffsets)
    if found < expected:
        raise InputError(f"{path}: declares {w:,} × {h:,} pixels but holds {found:,} of the "
                         f"{expected:,} tiles or strips that needs", "the file is damaged or not "
                         "a real image; re-export it")
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise InputError(f"{path}: one strip or tile decodes to {chunk_bytes / 2**30:.1f} GiB "
                         f"({w:,} × {h:,} pixels), too large to read piece by piece",
                         "re-save it as a tiled TIFF (e.g. tiles of 512 × 512)")
    stored = sum(page.databytecounts)
    if decoded > MAX_CHUNK_BYTES and stored < decoded * MIN_STORED_FRACTION:
        raise InputError(f"{path}: declares {w:,} × {h:,} pixels but stores only {stored:,} "
                         "bytes of image data", "the file is damaged or not a real image")


class DecodeGuard:
    """Turns a failure to decode one chunk into a one-line error naming file and place."""

    def __init__(self, path: str, level: int, y: int, x: int) -> None:
        self.where = (path, level, y, x)

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, WfeError) or not isinstance(exc, Exception):
            return False
        path, level, y, x = self.where
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot decode the tile at level {level}, y={y}, x={x} "
                         f"({detail})", "the file is damaged; re-export or re-scan it") from exc


def lazy_blocks(read: Any, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any,
                *args: Any) -> da.Array:
    """A dask array whose every block is ``read(*args, block_info=...)``: one task per block.

    ``read`` finds its region in ``block_info[None]["array-location"]``. No input
    array, so the graph holds one task per chunk and nothing else (its size is
    what grows with the image).
    """
    return da.map_blocks(read, *args, chunks=da.core.normalize_chunks(chunks, shape),
                         dtype=dtype, meta=np.empty((0,) * len(shape), dtype))
