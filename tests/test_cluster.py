"""``wfe run --scheduler ADDRESS``: inputs run on a dask.distributed cluster's workers,
one input per task (wfe.cluster); a bad input or a lost worker costs only that input's
work, and a rerun resumes as a local one does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SEGMENT_LABELS, ome_zarr_level, run_cli, wait_for_files
from wfe.checkpoint import CHECKPOINT_FOLDER
from wfe_builtin.synthetic import SyntheticSlide, write_slide

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def cluster():
    """A cluster of two worker processes, one thread each, on this machine."""
    from distributed import Client, LocalCluster

    environ = dict(os.environ)  # dask's nanny sets its workers' variables here too
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as local, Client(local) as client:
            yield local.scheduler_address, client
    finally:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("workflow") / "seg.yaml"
    path.write_text(SEGMENT_LABELS)
    return path


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _ledger_pids(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / "ledger.sqlite") as db:
        return dict(db.execute("SELECT input, pid FROM inputs"))


def test_inputs_run_on_the_workers_and_a_bad_one_is_its_own_failure(tmp_path, cluster,
                                                                     workflow):
    address, client = cluster
    first = write_slide(SyntheticSlide(1024, 1024, mpp=0.5, seed=21), tmp_path / "a.tiff")
    second = write_slide(SyntheticSlide(1024, 1536, mpp=0.5, seed=22), tmp_path / "b.tiff")
    bad = tmp_path / "c.tiff"
    bad.write_bytes(first.read_bytes()[:5000])
    out = tmp_path / "out"

    result = run_cli("run", workflow, "-i", tmp_path / "*.tiff", "-o", out,
                     "--scheduler", address)
    assert result.code == 1, result.stderr
    records = json.loads((out / "run.json").read_text())["inputs"]
    assert {Path(k).name: r["status"] for k, r in records.items()} == {
        "a.tiff": "done", "b.tiff": "done", "c.tiff": "failed"}
    assert "the file is truncated" in records[str(bad)]["error"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "c.tiff" in errors[0]
    # Each input ran in a worker process, not in the one that was given the command.
    workers = set(client.run(os.getpid).values())
    pids = _ledger_pids(out)
    assert {pids[str(p.resolve())] for p in (first, second, bad)} <= workers
    log = (out / "wfe.log").read_text()
    assert any(f":{pid}] done {first}" in log for pid in workers)
    # A worker of one thread runs its model on every core (dask starts it with
    # OMP_NUM_THREADS=1).
    cores = len(os.sched_getaffinity(0))
    assert set(client.run(_torch_threads).values()) == {cores}
    # The same labels as a run in this process.
    local = run_cli("run", workflow, "-i", first, "-i", second, "-o", tmp_path / "local")
    assert local.code == 0, local.stderr
    for name in ("a", "b"):
        np.testing.assert_array_equal(ome_zarr_level(out / name / "labels.ome.zarr"),
                                      ome_zarr_level(tmp_path / "local" / name
                                                     / "labels.ome.zarr"))

    again = run_cli("run", workflow, "-i", tmp_path / "*.tiff", "-o", out,
                    "--scheduler", address)
    assert again.code == 1
    assert "2 of 3 inputs done (2 by an earlier run)" in " ".join(again.stdout.split())
    records = json.loads((out / "run.json").read_text())["inputs"]
    assert records[str(first)]["resumed"] and records[str(second)]["resumed"]


def test_a_worker_killed_midway_costs_only_the_chunks_under_way(tmp_path, cluster, workflow):
    """SIGKILL the worker running a slide: the scheduler gives the input to another
    worker, which goes on from the chunks the killed one had kept."""
    address, client = cluster
    slide = write_slide(SyntheticSlide(6144, 6144, mpp=0.5, seed=8), tmp_path / "s.tiff")
    out = tmp_path / "out"
    checkpoint = out / "s" / CHECKPOINT_FOLDER / "seg" / "labels.zarr" / "c"
    proc = subprocess.Popen([sys.executable, "-m", "wfe", "run", str(workflow), "-i", str(slide),
                             "-o", str(out), "--scheduler", address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        if wait_for_files(checkpoint, 3, proc):
            killed = _ledger_pids(out)[str(slide.resolve())]
            os.kill(killed, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "the input ended before its worker could be killed"
    assert proc.returncode == 0, stderr
    record = json.loads((out / "run.json").read_text())["inputs"][str(slide)]
    assert record["status"] == "done"
    assert record["info"]["seg"]["chunks_resumed"] >= 3
    assert _ledger_pids(out)[str(slide.resolve())] != killed
    assert not (out / "s" / CHECKPOINT_FOLDER).exists()
    assert not any(p.name.endswith(".partial") for p in (out / "s").iterdir())

    fresh = run_cli("run", workflow, "-i", slide, "-o", tmp_path / "fresh")
    assert fresh.code == 0, fresh.stderr
    np.testing.assert_array_equal(ome_zarr_level(out / "s" / "labels.ome.zarr"),
                                  ome_zarr_level(tmp_path / "fresh" / "s" / "labels.ome.zarr"))
    shutil.rmtree(tmp_path / "fresh")


def test_a_scheduler_that_cannot_be_reached_is_one_clear_line(tmp_path, workflow):
    slide = write_slide(SyntheticSlide(512, 512, mpp=0.5, seed=1), tmp_path / "s.tiff")
    t0 = time.monotonic()
    result = run_cli("run", workflow, "-i", slide, "-o", tmp_path / "out",
                     "--scheduler", "tcp://127.0.0.1:9")
    assert result.code == 2
    assert time.monotonic() - t0 < 60
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--scheduler tcp://127.0.0.1:9: cannot reach a dask scheduler" in lines[0]
    assert "dask worker" in lines[0] and "Traceback" not in result.stderr


def test_workers_and_scheduler_exclude_each_other(tmp_path, workflow):
    result = run_cli("run", workflow, "-i", tmp_path / "s.tiff", "--workers", "2",
                     "--scheduler", "tcp://127.0.0.1:9")
    assert result.code == 2
    assert "--workers and --scheduler exclude each other" in result.stderr
