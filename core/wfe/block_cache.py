"""Image blocks that neighbouring regions share, decoded once.

A sliding-window pass reads the image region by region, and each region reaches
``overlap`` pixels past its chunk into the next: every block under that margin (a
column of blocks to its right, a row below it) is decoded again by the region on the
other side. On the bench's 4096² level in 512² tiles that was 81 decodes for 64
tiles, on an 8192² level 361 for 256. Here a block decoded for one region waits for
the other regions that need it, whatever order dask reads them in.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable

import numpy as np

__all__ = ["SharedBlocks"]

#: Bytes a pass keeps at most: a row of 512² RGB tiles across a 40,000-pixel-wide
#: level, if the regions are read row by row. Beyond it the blocks kept longest go
#: first (and are decoded again when asked for).
DEFAULT_BUDGET = 64 << 20


class SharedBlocks:
    """Decoded blocks, by their dask key, kept for as many reads as will ask for them.

    The pass says up front which blocks each of its reads will ask for
    (:meth:`expect`); a block decoded by one read is kept while reads still to come
    need it, and let go when the last has taken it. Thread-safe: a pass reads its next
    region while a worker finishes the one before, and two reads may decode the same
    block at once (both count as its uses).
    """

    def __init__(self, budget: int | None = None) -> None:
        self._budget = DEFAULT_BUDGET if budget is None else budget
        self._uses: dict[Hashable, int] = {}  # reads still to come, per block
        self._blocks: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def expect(self, keys: Iterable[Hashable]) -> None:
        """One more read will ask for each of ``keys``."""
        with self._lock:
            for key in keys:
                self._uses[key] = self._uses.get(key, 0) + 1

    def take(self, key: Hashable) -> np.ndarray | None:
        """The block kept under ``key`` (one of its uses), or None if it is not kept."""
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                self._used(key)
            return block

    def keep(self, key: Hashable, block: np.ndarray) -> None:
        """``block`` was decoded for one of its uses: keep it if more reads will ask
        for it; the blocks kept longest go while over budget."""
        with self._lock:
            if self._used(key) and key not in self._blocks and block.nbytes <= self._budget:
                self._blocks[key] = block
                self._bytes += block.nbytes
                while self._bytes > self._budget:
                    _, evicted = self._blocks.popitem(last=False)
                    self._bytes -= evicted.nbytes

    def _used(self, key: Hashable) -> bool:
        """Count one use of ``key``; whether reads to come still need it (if not, it is
        let go)."""
        left = self._uses.pop(key, 0) - 1
        if left > 0:
            self._uses[key] = left
            return True
        block = self._blocks.pop(key, None)
        if block is not None:
            self._bytes -= block.nbytes
        return False

    @property
    def nbytes(self) -> int:
        """Bytes kept now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._blocks)
