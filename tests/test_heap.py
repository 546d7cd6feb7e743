"""The run's heap thresholds (glibc): freed pixel blocks go back to the system, and a
forward pass's large buffers are reused rather than mapped and faulted in afresh."""

from __future__ import annotations

import subprocess
import sys

import pytest

RETAINED = """
import sys
import numpy as np
import psutil
from wfe.heap import fix_heap_thresholds

if sys.argv[1] == "fixed":
    assert fix_heap_thresholds()
process = psutil.Process()
block = np.ones(12 << 17)  # a 12 MiB chunk buffer, freed: glibc raises its thresholds
del block
base = process.memory_info().rss
small = []
for _ in range(8):
    block = np.ones(12 << 17)
    small.append(np.ones(16))  # a small live object allocated after it
    del block
print((process.memory_info().rss - base) / 2**20)
"""


def _fresh_process(code: str, mode: str) -> str:
    """What ``code`` prints, run with ``mode`` in a process of its own (a fresh heap)."""
    return subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_freed_blocks_are_returned_once_thresholds_are_fixed():
    def retained(mode: str) -> float:
        return float(_fresh_process(RETAINED, mode))

    # What the run does (runner.run_input fixes the thresholds before computing) ...
    assert retained("fixed") < 2
    # ... against glibc's default, which keeps a block's worth after it is freed.
    assert retained("default") > 8


REUSED = """
import resource, sys
import numpy as np
from wfe.heap import fix_heap_thresholds

if sys.argv[1] == "fixed":
    assert fix_heap_thresholds()
held = np.ones(40 << 17)   # 40 MiB buffers, as a CPU forward pass's activations
freed = np.ones(40 << 17)
after = np.ones(1 << 17)   # allocated after it and still alive
del freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = np.ones(40 << 17)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_large_buffers_are_reused_once_thresholds_are_fixed():
    def page_faults(mode: str) -> int:
        return int(_fresh_process(REUSED, mode))

    # The freed 40 MiB block is taken again from the heap, its pages already in memory ...
    assert page_faults("fixed") < 8
    # ... where glibc's default maps a block that large anew (page-faulted, zeroed).
    assert page_faults("default") > 8
