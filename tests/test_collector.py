"""The cyclic garbage collector is kept out of the imports a model load makes."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wfe.collector import collection_paused

DEMO = Path(__file__).parents[1] / "workflows" / "models" / "demo.safetensors"


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the test process's collector as it found it: on, nothing frozen."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def test_collector_is_off_inside_and_what_exists_is_frozen_after(collector: None) -> None:
    gc.enable()
    gc.unfreeze()
    with collection_paused():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(made)


def test_collector_that_was_off_stays_off(collector: None) -> None:
    gc.disable()
    with collection_paused():
        pass
    assert not gc.isenabled()


def test_nested_and_concurrent_blocks_resume_once(collector: None) -> None:
    gc.enable()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with collection_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with collection_paused():
        thread.start()
        assert inside.wait(10)
        with collection_paused():
            pass
        assert not gc.isenabled()  # the inner block ended, the others run on
    assert not gc.isenabled()  # this thread's block ended, the other's has not
    release.set()
    thread.join(10)
    assert gc.isenabled()


FULL_COLLECTIONS_DURING_LOAD = """
import contextlib, gc, sys
from pathlib import Path
import wfe_builtin.models.loader as loader
from wfe.plugins import load_registry

if sys.argv[2] == "off":
    loader.collection_paused = contextlib.nullcontext
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2
                    and full.append(1))
registry = load_registry()
loader.load_model(Path(sys.argv[1]), "cpu", "fp32", registry)
frozen = gc.get_freeze_count()
later = [[i] for i in range(1000)]  # made after the first load, as by an input
loader.load_model(Path(sys.argv[1]), "cpu", "fp32", registry)
print(len(full), gc.get_freeze_count() - frozen)
"""


def _load_twice(variant: str) -> tuple[int, int]:
    """Full collections during a fresh process's first model load, and objects frozen by
    a second load of it."""
    out = subprocess.run([sys.executable, "-c", FULL_COLLECTIONS_DURING_LOAD, str(DEMO),
                          variant], capture_output=True, text=True, check=True).stdout
    full, frozen_later = out.split()[-2:]
    return int(full), int(frozen_later)


@pytest.mark.slow
def test_first_model_load_makes_no_full_collection() -> None:
    """A fresh process's first load (importing torch and smp) with the collector paused
    runs no full collection; the same load without the pause runs several. A later load
    freezes nothing: what later inputs leave stays collectable."""
    assert _load_twice("on") == (0, 0)
    full_without_pause, _ = _load_twice("off")
    assert full_without_pause >= 3
