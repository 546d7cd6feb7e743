"""The run's heap thresholds (glibc): freed pixel blocks go back to the system, and a
forward pass's large buffers are reused rather than mapped and faulted in afresh."""

from __future__ import annotations

import subprocess
import sys

import pytest

GLIBC_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc's allocator only")

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


def _fresh_process(code: str, *args: str) -> str:
    """What ``code`` prints, run with ``args`` in a process of its own (a fresh heap)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=True).stdout


@GLIBC_ONLY
def test_freed_blocks_are_returned_once_thresholds_are_fixed():
    # What the run does (runner.run_input fixes the thresholds before computing) ...
    assert float(_fresh_process(RETAINED, "fixed")) < 2
    # ... against glibc's default, which keeps a block's worth after it is freed.
    assert float(_fresh_process(RETAINED, "default")) > 8


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


@GLIBC_ONLY
def test_large_buffers_are_reused_once_thresholds_are_fixed():
    # The freed 40 MiB block is taken again from the heap, its pages already in memory ...
    assert int(_fresh_process(REUSED, "fixed")) < 8
    # ... where glibc's default maps a block that large anew (page-faulted, zeroed).
    assert int(_fresh_process(REUSED, "default")) > 8


THREADS = """
import resource, sys, threading
import numpy as np
from numpy._core.multiarray import _set_madvise_hugepage
from wfe.heap import fix_heap_thresholds, reuse_blocks_up_to

_set_madvise_hugepage(False)  # 4 KiB pages, as torch's buffers: faults count pages

def in_thread(work):
    result = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]

if sys.argv[1] == "thread first":
    # A thread (a pool's worker, say) allocates before the settings are made, then does
    # the work once they are: it keeps the arena it was given.
    from concurrent.futures import ThreadPoolExecutor

    worker = ThreadPoolExecutor(1)
    worker.submit(lambda: np.ones(1 << 10)).result()
    in_thread = lambda work: worker.submit(work).result()  # noqa: E731
assert fix_heap_thresholds()
if sys.argv[1] != "not raised":
    assert reuse_blocks_up_to(160 << 20, 512 << 20)

def faults_of_reallocating():
    # A forward pass's large activation, in a worker thread: made, freed, made again.
    freed = np.ones(150 << 17)  # 150 MiB
    kept = np.ones(1 << 17)     # allocated after it and still alive
    del freed
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    again = np.ones(150 << 17)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

print(in_thread(faults_of_reallocating))
"""


@GLIBC_ONLY
def test_worker_threads_reuse_blocks_above_the_threshold_once_raised():
    # What a run with a CPU model does: one arena, thresholds raised to the pass's blocks.
    assert int(_fresh_process(THREADS, "raised")) < 8
    # Not raised: a 150 MiB block is mapped anew (~38,000 pages faulted in and zeroed) ...
    assert int(_fresh_process(THREADS, "not raised")) > 10_000
    # ... and so it is in a thread's own arena, whatever the threshold: the arena
    # setting must come before any thread allocates.
    assert int(_fresh_process(THREADS, "thread first")) > 10_000


MODEL_FAULTS = """
import resource, sys
from pathlib import Path
import numpy as np
from wfe.heap import fix_heap_thresholds
from wfe.plugins import load_registry
from wfe_builtin.models.loader import load_model

assert fix_heap_thresholds()
model = load_model(Path(sys.argv[2]), "cpu", "fp32", load_registry(), channels_last=False)
size = int(sys.argv[3])
batch = np.random.default_rng(0).integers(0, 255, (size, 3, 512, 512), dtype=np.uint8)
if sys.argv[1] == "reused":
    model.reuse_buffers(len(batch))
model.predict(batch)
model.predict(batch)
# Three batches after two, counted together: a single batch may happen not to return
# the heap's top (a small block left above it), which made the count 0 now and then.
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    model.predict(batch)
print(model.largest_buffer, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@GLIBC_ONLY
def test_a_cpu_model_reuses_its_forward_buffers():
    from conftest import MODEL

    def measure(mode: str, size: int = 4) -> tuple[int, int]:
        largest, faults = _fresh_process(MODEL_FAULTS, mode, str(MODEL), str(size)).split()
        return int(largest), int(faults)

    largest, faults = measure("reused")
    assert largest >= 512 * 512 * 4 * 8  # measured at load: a full-size 8-channel layer
    # Three batches after two: their buffers come from the heap, their pages mostly in
    # memory (0-16,000 faults a batch seen), where without it every batch maps its
    # largest buffers anew (74,000-120,000 a batch).
    assert faults * 4 < measure("default")[1]
    # Batches of one window: every buffer is under the mmap threshold, but freed memory
    # at the top of the heap went back to the system after each batch until the trim
    # threshold was raised too (40,000-67,000 faults in three batches; 0-2,048 now).
    assert measure("reused", 1)[1] * 5 < measure("default", 1)[1]


HUGE_PAGES = """
import re
from wfe.heap import use_huge_pages

use_huge_pages()
import torch

block = torch.ones(32 << 20)  # a forward pass's buffer: 128 MiB, touched
text = open("/proc/self/smaps_rollup").read()
print(int(re.search(r"AnonHugePages:\\s+(\\d+) kB", text).group(1)) // 1024)
"""


def _huge_pages_offered() -> bool:
    try:
        setting = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False
    return "[never]" not in setting


@pytest.mark.skipif(not _huge_pages_offered(), reason="the kernel offers no huge pages")
def test_torch_tensors_are_backed_by_huge_pages_unless_turned_off(monkeypatch):
    """A first input faults its forward passes' buffers in: a fault per 2 MiB with huge
    pages instead of per 4 KiB page. ``THP_MEM_ALLOC_ENABLE=0`` in the environment wins."""
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert int(_fresh_process(HUGE_PAGES)) >= 64  # MiB of the 128 in huge pages
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert int(_fresh_process(HUGE_PAGES)) < 64


def test_the_command_asks_for_huge_pages_before_torch_is_imported(monkeypatch):
    code = ("import os, sys\nfrom wfe.cli import main\nsys.argv = ['wfe', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert _fresh_process(code).split()[-2:] == ["1", "False"]


TOUCHED = """
import resource, sys
import numpy as np
from numpy._core.multiarray import _set_madvise_hugepage
from wfe.heap import fix_heap_thresholds, heap_usage, touch_heap

_set_madvise_hugepage(False)  # 4 KiB pages: faults count pages
assert fix_heap_thresholds()
if sys.argv[1] == "touched":
    touch_heap(256 << 20).join()
    assert heap_usage().free >= 256 << 20  # freed into the heap, not back to the system
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
blocks = [np.ones(40 << 17) for _ in range(5)]  # 200 MiB of an input's sums and activations
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@GLIBC_ONLY
def test_a_touched_heap_serves_later_blocks_without_faulting_them_in():
    # Touched ahead (as a run does while it starts up): the blocks' pages are in memory ...
    assert int(_fresh_process(TOUCHED, "touched")) < 500
    # ... where otherwise each of their 51,200 pages is faulted in and zeroed as it is used.
    assert int(_fresh_process(TOUCHED, "untouched")) > 40_000
