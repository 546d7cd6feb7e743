"""channels_last: auto is timed once per model and machine, then remembered."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import MODEL
from wfe_builtin.models import layout, loader


@pytest.fixture
def fresh_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Loads that build the model anew (as a new process would), with a cache folder of
    this test's own; counts the layout timings."""
    monkeypatch.setenv("WFE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "collection_paused", contextlib.nullcontext)
    timings = []
    original = layout.channels_last_is_faster

    def counting(model, window):
        timings.append(1)
        return original(model, window)

    monkeypatch.setattr(layout, "channels_last_is_faster", counting)

    def load(registry):
        loader._load.cache_clear()
        return loader.load_model(MODEL, "cpu", "fp32", registry, channels_last="auto")

    yield load, timings, tmp_path / "cache" / layout.LAYOUTS
    loader._load.cache_clear()


def test_layout_is_timed_once_then_remembered(fresh_loads, registry, caplog):
    load, timings, path = fresh_loads
    with caplog.at_level(logging.INFO, logger="wfe"):
        first = load(registry)
        assert len(timings) == 1 and "timed at load" in caplog.text
        (remembered,) = json.loads(path.read_text()).values()
        assert remembered == first.channels_last
        second = load(registry)
    assert len(timings) == 1 and "remembered in" in caplog.text
    assert second is not first and second.channels_last == first.channels_last
    conv = next(m for m in second.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == second.channels_last


def test_a_remembered_layout_is_used_as_stored(fresh_loads, registry):
    """What the file says is what the load does (here: the opposite of the timing)."""
    load, timings, path = fresh_loads
    timed = load(registry).channels_last
    key = next(iter(json.loads(path.read_text())))
    path.write_text(json.dumps({key: not timed}))
    assert load(registry).channels_last is (not timed)
    assert len(timings) == 1


def test_the_key_names_what_the_decision_depends_on(demo_model):
    threads = torch.get_num_threads()
    key = layout.layout_key(demo_model, MODEL)
    try:
        torch.set_num_threads(threads + 1)
        assert layout.layout_key(demo_model, MODEL) != key
    finally:
        torch.set_num_threads(threads)
    assert layout.layout_key(demo_model, MODEL) == key
    assert torch.__version__ in key


def test_a_corrupt_or_unwritable_cache_only_costs_a_timing(fresh_loads, registry, tmp_path,
                                                           monkeypatch):
    load, timings, path = fresh_loads
    path.parent.mkdir(parents=True)
    path.write_text("{ half a fil")
    load(registry)
    assert len(timings) == 1 and len(json.loads(path.read_text())) == 1  # rewritten whole
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("WFE_CACHE_DIR", str(blocker / "cache"))  # cannot be made
    assert isinstance(load(registry).channels_last, bool)
    assert len(timings) == 2
