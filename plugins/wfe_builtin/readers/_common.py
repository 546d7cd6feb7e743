"""Helpers shared by the readers: pixel-size sanity, declared-size sanity, decode errors,
open files kept for the next chunk."""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from wfe.errors import InputError, WfeError

__all__ = ["MAX_CHUNK_BYTES", "check_declared_size", "decode_guard", "kept_open", "lazy_blocks",
           "pick_index", "plausible_mpp"]

#: Microscope pixel sizes lie well inside this range (µm); 72-dpi tags give ~352.
MPP_RANGE = (0.01, 100.0)
#: One chunk (a tile, or a band of strips) decoded may not exceed this.
MAX_CHUNK_BYTES = 1 << 30
#: Stored bytes per decoded byte below which a large image cannot be real data.
MIN_STORED_FRACTION = 1e-5


def kept_open(maxsize: int, close: Callable[[Any], None]) -> Callable[[Callable[..., Any]],
                                                                      Callable[..., Any]]:
    """Like ``functools.lru_cache(maxsize)`` for functions that open a file (a handle, a
    descriptor): the least recently used is closed with ``close`` when a new one would
    make more than ``maxsize``. ``lru_cache`` only forgets it, so over an archive every
    file read stayed open to the end of the run, until the process ran out of descriptors.

    Files are read one input at a time, so the one closed was last used ``maxsize``
    files ago; ``cache_clear()`` closes them all.
    """
    def decorate(opener: Callable[..., Any]) -> Callable[..., Any]:
        handles: OrderedDict[Hashable, Any] = OrderedDict()
        lock = threading.Lock()

        @wraps(opener)
        def cached(*args: Hashable) -> Any:
            with lock:
                if args in handles:
                    handles.move_to_end(args)
                    return handles[args]
            handle = opener(*args)
            with lock:
                if args in handles:  # another thread opened it meanwhile
                    close(handle)
                    handles.move_to_end(args)
                    return handles[args]
                handles[args] = handle
                evicted = [handles.popitem(last=False)[1] for _ in range(len(handles) - maxsize)]
            for old in evicted:
                close(old)
            return handle

        def cache_clear() -> None:
            with lock:
                evicted = list(handles.values())
                handles.clear()
            for old in evicted:
                close(old)

        cached.cache_clear = cache_clear  # type: ignore[attr-defined]
        cached.open_count = lambda: len(handles)  # type: ignore[attr-defined]
        return cached

    return decorate


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


@contextmanager
def decode_guard(path: str, level: int, y: int, x: int) -> Iterator[None]:
    """Turns a failure to decode one chunk into a one-line error naming file and place."""
    try:
        yield
    except WfeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any codec error becomes one line
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot decode the tile at level {level}, y={y}, x={x} "
                         f"({detail})", "the file is damaged; re-export or re-scan it") from exc


def pick_index(path: Path, axis: str, index: dict[str, int], n: int) -> int:
    """The position to read along an axis that is not kept (z, time, ...): ``index[axis]`` or 0."""
    i = int(index.get(axis, 0))
    if not 0 <= i < n:
        raise InputError(f"{path}: index {axis}={i} is out of range (0..{n - 1})",
                         f"give reader_options: {{index: {{{axis}: 0..{n - 1}}}}}")
    return i


def lazy_blocks(read: Any, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any,
                *args: Any) -> da.Array:
    """A dask array whose every block is ``read(*args, block_info=...)``: one task per block.

    ``read`` finds its region in ``block_info[None]["array-location"]``. No input
    array, so the graph holds one task per chunk and nothing else (its size is
    what grows with the image).
    """
    return da.map_blocks(read, *args, chunks=da.core.normalize_chunks(chunks, shape),
                         dtype=dtype, meta=np.empty((0,) * len(shape), dtype))
