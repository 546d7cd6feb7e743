"""A run touches, while it starts up, the heap its workflow's first input needed the
last time: remembered per workflow in wfe's cache folder."""

from __future__ import annotations

import json
import re
import sys

import pytest

from conftest import ROOT, run_cli
from wfe.warm_start import HEAPS, heap_key
from wfe.workflow import load_workflow

GLIBC_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc's allocator only")


def _touched_mib(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"touching (\d+) MiB of heap", log)]


@pytest.mark.slow
@GLIBC_ONLY
def test_the_next_run_touches_what_the_first_input_left_in_the_heap(sample_slide, tmp_path):
    env = {"WFE_CACHE_DIR": str(tmp_path / "cache")}
    workflow = ROOT / "workflows" / "demo.yaml"

    def run(name: str, **extra: str) -> tuple[dict, str]:
        out = tmp_path / name
        result = run_cli("run", workflow, "-i", sample_slide, "-o", out, env={**env, **extra})
        assert result.code == 0, result.stderr
        remembered = json.loads((tmp_path / "cache" / HEAPS).read_text())
        return remembered, (out / "wfe.log").read_text()

    first, log = run("first")
    assert _touched_mib(log) == []  # nothing remembered yet
    (key, nbytes), = first.items()
    assert nbytes > 64 << 20  # the model's buffers and the chunks' sums, freed, kept
    _, log = run("second")
    assert _touched_mib(log) == [nbytes >> 20]
    _, log = run("off", WFE_TOUCH_HEAP="0")
    assert _touched_mib(log) == []


@GLIBC_ONLY
def test_a_run_without_a_model_remembers_no_heap(sample_slide, tmp_path):
    # Tiling gives freed memory back to the system: nothing stays to be touched ahead.
    result = run_cli("run", ROOT / "workflows" / "tile.yaml", "-i", sample_slide,
                     "-o", tmp_path / "out", env={"WFE_CACHE_DIR": str(tmp_path / "cache")})
    assert result.code == 0, result.stderr
    assert not (tmp_path / "cache" / HEAPS).exists()


def test_the_heap_is_remembered_per_workflow_parameters_device_and_workers(registry):
    demo = ROOT / "workflows" / "demo.yaml"
    key = heap_key(load_workflow(demo, registry), "auto", None)
    assert key == heap_key(load_workflow(demo, registry), "auto", None)
    assert key != heap_key(load_workflow(demo, registry, ["seg.overlap=32"]), "auto", None)
    assert key != heap_key(load_workflow(demo, registry), "cpu", None)
    assert key != heap_key(load_workflow(demo, registry), "auto", 7)


def test_only_a_process_first_run_touches_ahead_and_remembers(monkeypatch, tmp_path):
    from wfe import warm_start
    from wfe.heap import HeapUsage

    monkeypatch.setenv("WFE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(warm_start, "_done", set())
    touched: list[int] = []
    monkeypatch.setattr(warm_start, "touch_heap", lambda n: touched.append(n))
    warm_start.remember(HEAPS, "k", 100 << 20)
    warm_start.touch_remembered_heap("k")
    warm_start.touch_remembered_heap("k")  # a second run_batch in the same process
    assert touched == [100 << 20]
    monkeypatch.setattr(warm_start, "keeps_freed_memory", lambda: True)
    monkeypatch.setattr(warm_start, "heap_usage", lambda: HeapUsage(1 << 30, 300 << 20))
    warm_start.remember_heap("k")
    monkeypatch.setattr(warm_start, "heap_usage", lambda: HeapUsage(1 << 30, 5 << 20))
    warm_start.remember_heap("k")  # a later input: its heap was warm, and is not recorded
    assert warm_start.recall(HEAPS) == {"k": 300 << 20}
