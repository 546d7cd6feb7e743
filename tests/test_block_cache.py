"""The store of decoded blocks that neighbouring regions share (wfe.block_cache)."""

from __future__ import annotations

import numpy as np

from wfe.block_cache import SharedBlocks


def _block(value: int, nbytes: int = 1024) -> np.ndarray:
    return np.full(nbytes, value, np.uint8)


def test_a_block_is_kept_for_the_reads_that_expect_it_and_let_go_by_the_last():
    shared = SharedBlocks(budget=1 << 20)
    shared.expect(["a", "b"])
    shared.expect(["a"])
    shared.expect(["a", "c"])  # "a": three reads; "b" and "c": one each
    shared.keep("a", _block(1))  # decoded by the first read: two more will ask
    shared.keep("b", _block(2))  # its only read: nothing to keep it for
    assert len(shared) == 1 and shared.nbytes == 1024
    assert shared.take("b") is None
    assert shared.take("a")[0] == 1 and len(shared) == 1
    assert shared.take("a")[0] == 1  # the last read that expected it ...
    assert len(shared) == 0 and shared.nbytes == 0 and shared.take("a") is None  # ... let it go


def test_a_block_no_read_expects_is_not_kept():
    shared = SharedBlocks()
    shared.keep("x", _block(1))
    assert len(shared) == 0


def test_blocks_kept_longest_go_first_over_budget():
    shared = SharedBlocks(budget=3 * 1024)
    for key in "abcd":
        shared.expect([key, key])
    for i, key in enumerate("abcd"):
        shared.keep(key, _block(i))
    assert shared.nbytes == 3 * 1024
    assert shared.take("a") is None  # gone: decoded again by whoever asks
    assert [shared.take(k)[0] for k in "bcd"] == [1, 2, 3]
    assert len(shared) == 0
