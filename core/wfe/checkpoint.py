"""Chunk checkpoints: a stage's costly results kept on disk chunk by chunk as they are made,
so that a run killed in the middle of an input resumes from the chunks already done.

One :class:`Checkpoints` folder exists per input (``.wfe-checkpoint`` in its output
folder), tied to the input's fingerprint (:mod:`wfe.ledger`): a different workflow,
input or device empties it. A stage asks for a :class:`KeptArray` per result
(``ctx.kept``), learns which chunks an earlier attempt finished (``done``) and builds
only what the others need; :meth:`KeptArray.keep` then gives the result's array back,
the done chunks read from disk and every other one stored as soon as it is computed.
Each chunk is a Zarr chunk written under a temporary name and renamed (zarr-python's
local store), so a chunk on disk is a whole chunk. The runner removes the folder once
the input is done.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from itertools import product
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from wfe.sink import remove_output

__all__ = ["CHECKPOINT_FOLDER", "Checkpoints", "KeptArray"]

log = logging.getLogger("wfe")

#: The folder of an input's checkpoints, inside its output folder.
CHECKPOINT_FOLDER = ".wfe-checkpoint"
_FINGERPRINT = "fingerprint.json"


class Checkpoints:
    """The checkpoints of one input, valid for one fingerprint.

    Nothing is created until a stage asks for an array. A folder left by an attempt
    with another fingerprint is removed then, whole.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self._checked = False

    def _open(self) -> None:
        if self._checked:
            return
        stamp = self.folder / _FINGERPRINT
        try:
            earlier = json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            earlier = None
        if earlier != self.fingerprint:
            if self.folder.exists():
                log.info("removing %s: made by a run of another workflow, input or device",
                         self.folder)
            remove_output(self.folder)
            self.folder.mkdir(parents=True)
            tmp = stamp.with_name(f".{stamp.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint}), encoding="utf-8")
            os.replace(tmp, stamp)
        self._checked = True

    def array(self, stage: str, name: str, chunks: tuple[tuple[int, ...], ...],
              dtype: Any) -> KeptArray:
        """The checkpoint of ``stage``'s result ``name``, an array of dask ``chunks`` and
        ``dtype``; one left by an earlier attempt is reused when its shape, chunks and
        dtype match, and replaced otherwise."""
        self._open()
        return KeptArray(self.folder / stage / f"{name}.zarr", chunks, dtype)

    def remove(self) -> None:
        """Remove every checkpoint of the input (it is done)."""
        remove_output(self.folder)
        self._checked = False


def _regular_chunks(chunks: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """The Zarr chunk shape of dask ``chunks``: each axis's first chunk, which every
    chunk but the last must equal."""
    shape = []
    for axis in chunks:
        if any(c != axis[0] for c in axis[:-1]) or axis[-1] > axis[0]:
            raise ValueError(f"chunks {axis} are not regular: a checkpoint stores whole "
                             "Zarr chunks")
        shape.append(axis[0])
    return tuple(shape)


def _compressors(dtype: np.dtype) -> list[Any]:
    """The fastest codec that still shrinks the data: zstd level 1 for integers (labels:
    a 2240² chunk in 7-20 ms, 14 times smaller), LZ4 with byte shuffling for floats
    (probabilities: a 3 × 2240² float32 chunk in 65 ms against 99 ms with zstd, 1.27
    times smaller; stored raw it still takes 41 ms)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if dtype.kind == "f":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    return [ZstdCodec(level=1)]


class KeptArray:
    """One result's checkpoint: a Zarr array with the result's shape and chunks."""

    def __init__(self, path: Path, chunks: tuple[tuple[int, ...], ...], dtype: Any) -> None:
        import zarr

        self.path = path
        self.chunks = tuple(tuple(int(c) for c in axis) for axis in chunks)
        dtype = np.dtype(dtype)
        shape = tuple(sum(axis) for axis in self.chunks)
        chunk_shape = _regular_chunks(self.chunks)
        array = None
        if path.exists():
            try:
                array = zarr.open_array(str(path), mode="r+")
            except Exception:  # noqa: BLE001 - anything unreadable is made anew
                array = None
            if array is not None and (array.shape != shape or array.chunks != chunk_shape
                                      or array.dtype != dtype):
                array = None
            if array is None:
                remove_output(path)
        if array is None:
            # Every chunk is written, blank ones too: a chunk on disk marks it done.
            array = zarr.create_array(str(path), shape=shape, chunks=chunk_shape,
                                      dtype=dtype, compressors=_compressors(dtype),
                                      config={"write_empty_chunks": True})
        self._array = array
        blocks = product(*(range(len(axis)) for axis in self.chunks))
        self.done: frozenset[tuple[int, ...]] = frozenset(
            b for b in blocks if (path / array.metadata.encode_chunk_key(b)).exists())

    def _region(self, block: tuple[int, ...]) -> tuple[slice, ...]:
        starts = [sum(axis[:i]) for axis, i in zip(self.chunks, block, strict=True)]
        return tuple(slice(s, s + axis[i])
                     for s, axis, i in zip(starts, self.chunks, block, strict=True))

    def _load(self, block: tuple[int, ...]) -> np.ndarray:
        return self._array[self._region(block)]

    def _store(self, block: tuple[int, ...], value: np.ndarray) -> np.ndarray:
        self._array[self._region(block)] = value
        return value

    def keep(self, array: da.Array) -> da.Array:
        """``array`` (chunked as the checkpoint) with its done chunks read from disk, and
        every other chunk stored as it is computed. A done chunk's own tasks are never
        run: nothing asks for them."""
        if array.chunks != self.chunks or array.dtype != self._array.dtype:
            raise ValueError(f"{array.dtype} {array.chunks} differ from the checkpoint's "
                             f"{self._array.dtype} {self.chunks}")
        name = f"kept-{uuid.uuid4().hex}"
        layer: dict[Any, Any] = {}
        for block in product(*(range(len(axis)) for axis in self.chunks)):
            if block in self.done:
                layer[(name, *block)] = (self._load, block)
            else:
                layer[(name, *block)] = (self._store, block, (array.name, *block))
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[array])
        return da.Array(graph, name, chunks=self.chunks, dtype=array.dtype)
