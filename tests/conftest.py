"""Shared fixtures: generated images, the shipped model, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "workflows" / "models" / "demo.safetensors"

#: Segment with the demo model at 1 µm in chunks of 448 and write the labels as OME-Zarr:
#: a slide in many chunks, for stopping one midway.
SEGMENT_LABELS = f"""
wfe: 1
stages:
  - {{id: image, uses: read, with: {{mpp: 1.0}}}}
  - id: seg
    uses: segment
    with: {{image: image, model: {MODEL}, window: 512, overlap: 64, chunk: 448, batch_size: 4}}
  - {{id: save, uses: write, with: {{data: seg.labels, path: "{{output}}/labels.ome.zarr"}}}}
"""


def kept_chunk_files(folder: Path) -> int:
    """How many whole chunks a checkpoint's ``folder`` holds: its files, less any chunk
    being written (zarr writes it under a ``.partial`` name, then renames it)."""
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix != ".partial")


def wait_for_files(folder: Path, count: int, proc: subprocess.Popen,
                   timeout: float = 300) -> bool:
    """Wait until ``folder`` holds ``count`` whole chunks (:func:`kept_chunk_files`) while
    ``proc`` runs; whether it got there."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.exists() and kept_chunk_files(folder) >= count:
            return True
        time.sleep(0.01)
    return False


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> CliResult:
    """Run ``python -m wfe ARGS`` as a user would, capturing its output."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "wfe", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session", autouse=True)
def wfe_cache(tmp_path_factory: pytest.TempPathFactory):
    """wfe's cache folder (remembered model layouts) of the test session's own, for the
    tests and the commands they run."""
    path = tmp_path_factory.mktemp("wfe-cache")
    before = os.environ.get("WFE_CACHE_DIR")
    os.environ["WFE_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("WFE_CACHE_DIR", None)
    else:
        os.environ["WFE_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def sample_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2048 × 2048 synthetic slide at 0.5 µm/px (4 pyramid levels), seed 3."""
    from wfe_builtin.synthetic import SyntheticSlide, write_slide

    path = tmp_path_factory.mktemp("slides") / "slide.tiff"
    return write_slide(SyntheticSlide(2048, 2048, mpp=0.5, seed=3), path)


@pytest.fixture(scope="session")
def registry():
    from wfe.plugins import load_registry

    return load_registry()


@pytest.fixture(scope="session")
def demo_model():
    """The shipped demo model, loaded once."""
    from wfe.plugins import load_registry
    from wfe_builtin.models.loader import load_model

    return load_model(MODEL, "cpu", "fp32", load_registry())


def ome_zarr_level(path: Path, level: int = 0):
    """Pixels of one level of an OME-Zarr image, found through its multiscales metadata."""
    import numpy as np
    import zarr

    group = zarr.open_group(str(path), mode="r")
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    return np.asarray(group[datasets[level]["path"]])


def counted_chunks(fill, dtype, chunks):
    """A lazy array whose chunk at ``(y0, x0)`` is ``fill(c0, c1, y0, y1, x0, x1)``, and
    a Counter of how many times each chunk was computed (keyed by ``(y0, x0)``)."""
    import threading
    from collections import Counter

    import dask.array as da

    computed: Counter = Counter()
    lock = threading.Lock()

    def block(block_info=None):
        (c0, c1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        with lock:
            computed[(y0, x0)] += 1
        return fill(c0, c1, y0, y1, x0, x1)

    return da.map_blocks(block, dtype=dtype, chunks=chunks), computed
