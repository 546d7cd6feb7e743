"""A chunked scratch copy of lazy levels, for writers whose format must be written in order.

TIFF tiles (and GeoTIFF blocks) go into the file one after another, but dask
computes chunks in whatever order its workers finish them. The levels are
therefore first stored, chunk by chunk and in parallel, into a Zarr store beside
the output (zstd level 1: cheap, and label images shrink to almost nothing); the
file is then written from it in order, one tile in memory at a time. This is the
two-step conversion bioformats2raw + raw2ometiff use, for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from wfe.sink import chunks_of

__all__ = ["spool", "tiles"]


def spool(levels: list[da.Array], where: Path, tile: int, channels_last: bool = True) -> Any:
    """Store each level as ``where/<i>``, in chunks of ``tile``² where the level's dask
    chunks are multiples of it and in its dask chunks otherwise (all channels together
    when ``channels_last``, else one per chunk); a Delayed that computes to ``where``
    once every chunk is stored."""
    import dask
    import zarr
    from zarr.codecs import ZstdCodec

    group = zarr.open_group(str(where), mode="w")
    stores = []
    for i, lvl in enumerate(levels):
        planes = lvl.shape[0] if channels_last else 1
        cy, cx = lvl.chunks[1][0], lvl.chunks[2][0]
        lvl = lvl.rechunk((planes, cy, cx))  # regular, as zarr needs (a no-op when it is)
        # Stored tiles never span two dask chunks, and no dask chunk is split or merged:
        # a split would be fused with the chunk's computation (computing it once per
        # tile), a merge would hold pyramid chunks until their neighbours are done.
        stored = (planes, tile if cy % tile == 0 else cy, tile if cx % tile == 0 else cx)
        target = group.create_array(str(i), shape=lvl.shape, dtype=lvl.dtype, chunks=stored,
                                    compressors=[ZstdCodec(level=1)],
                                    config={"write_empty_chunks": True})
        stores.append(da.store(lvl, target, lock=False, compute=False))
    # Through the chunks (see ``chunks_of``): given the arrays, delayed would compute
    # the source once per pyramid level.
    return dask.delayed(lambda *_: where)(*chunks_of(*stores))


def tiles(where: Path, level: int, tile: int, channels_last: bool) -> Iterator[np.ndarray]:
    """The tiles of one spooled level in TIFF order (row by row; plane by plane when the
    channels are stored separately), each ``(tile, tile[, c])`` or smaller at the edges."""
    import zarr

    arr = zarr.open_array(str(where / str(level)), mode="r")
    c, h, w = arr.shape
    planes = [slice(None)] if channels_last else [slice(i, i + 1) for i in range(c)]
    for plane in planes:
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                block = arr[plane, y:y + tile, x:x + tile]
                yield np.moveaxis(block, 0, -1) if channels_last else block[0]
