"""A rerun resumes: inputs done before are skipped, a killed run costs only the input it
was on, and what earlier runs wrote is replaced only when unchanged (wfe.ledger)."""

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

import pytest

from conftest import ome_zarr_level, run_cli
from wfe_builtin.synthetic import SyntheticSlide, write_slide

pytestmark = pytest.mark.slow

TILE = """
wfe: 1
stages:
  - {id: image, uses: read, with: {mpp: 0.5}}
  - {id: tiled, uses: tile, with: {image: image, path: "{output}/image.ome.zarr", chunk: 256}}
  - {id: tissue, uses: tissue_mask, with: {image: image, mpp: 8}}
  - {id: mask, uses: write, with: {data: tissue, path: "{output}/tissue.png"}}
"""


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("slides")
    first = write_slide(SyntheticSlide(2048, 2048, mpp=0.5, seed=11), folder / "a.tiff")
    second = write_slide(SyntheticSlide(2048, 2048, mpp=0.5, seed=12), folder / "b.tiff")
    return [first, second]


def _workflow(tmp_path: Path) -> Path:
    path = tmp_path / "tile.yaml"
    path.write_text(TILE)
    return path


def _inputs(out: Path) -> dict[str, dict]:
    return json.loads((out / "run.json").read_text())["inputs"]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _entry(out: Path, slide: Path) -> tuple[str, int]:
    with sqlite3.connect(out / "ledger.sqlite") as db:
        return db.execute("SELECT status, pid FROM inputs WHERE input = ?",
                          (str(slide.resolve()),)).fetchone()


def test_a_rerun_skips_what_is_done_and_leaves_it_untouched(slides, tmp_path):
    workflow, out = _workflow(tmp_path), tmp_path / "out"
    first = run_cli("run", workflow, "-i", slides[0], "-i", slides[1], "-o", out)
    assert first.code == 0, first.stderr
    before = _mtimes(out / "a") | _mtimes(out / "b")
    again = run_cli("run", workflow, "-i", slides[0], "-i", slides[1], "-o", out)
    assert again.code == 0, again.stderr
    assert "2 of 2 inputs done (2 by an earlier run)" in again.stdout
    records = _inputs(out)
    assert all(r["status"] == "done" and r["resumed"] for r in records.values())
    assert all(r["outputs"] and r["timings"]["compute"] > 0 for r in records.values())
    assert _mtimes(out / "a") | _mtimes(out / "b") == before
    assert (out / "wfe.log").read_text().count("done by an earlier run") == 2


def test_a_changed_input_or_workflow_runs_again_and_replaces_its_outputs(slides, tmp_path):
    workflow, out = _workflow(tmp_path), tmp_path / "out"
    a, b = (shutil.copy(s, tmp_path / s.name) for s in slides)
    a, b = Path(a), Path(b)
    assert run_cli("run", workflow, "-i", a, "-i", b, "-o", out).code == 0
    b_before = _mtimes(out / "b")
    # The slide at a.tiff is replaced by another one.
    write_slide(SyntheticSlide(2048, 1536, mpp=0.5, seed=13), a)
    result = run_cli("run", workflow, "-i", a, "-i", b, "-o", out)
    assert result.code == 0, result.stderr  # not "exists already": wfe wrote those
    records = _inputs(out)
    assert not records[str(a)].get("resumed") and records[str(b)]["resumed"]
    assert ome_zarr_level(out / "a" / "image.ome.zarr")[0].shape[-2:] == (1536, 2048)
    assert _mtimes(out / "b") == b_before
    # A parameter changes: every input runs again.
    result = run_cli("run", workflow, "-i", a, "-i", b, "-o", out, "--set", "tissue.mpp=16")
    assert result.code == 0, result.stderr
    assert not any(r.get("resumed") for r in _inputs(out).values())


def test_no_resume_runs_again_but_keeps_outputs_someone_changed(slides, tmp_path):
    workflow, out = _workflow(tmp_path), tmp_path / "out"
    assert run_cli("run", workflow, "-i", slides[0], "-i", slides[1], "-o", out).code == 0
    result = run_cli("run", workflow, "-i", slides[0], "-i", slides[1], "-o", out,
                     "--no-resume")
    assert result.code == 0, result.stderr
    assert not any(r.get("resumed") for r in _inputs(out).values())
    # Someone edits an output wfe wrote: a run that would replace it fails for that
    # input only, and the edit stays.
    edited = out / "a" / "tissue.png"
    edited.write_bytes(b"my annotations")
    result = run_cli("run", workflow, "-i", slides[0], "-i", slides[1], "-o", out,
                     "--no-resume")
    assert result.code == 1
    assert "exists already" in _inputs(out)[str(slides[0])]["error"]
    assert _inputs(out)[str(slides[1])]["status"] == "done"
    assert edited.read_bytes() == b"my annotations"


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    """Killed while on its second input: the rerun skips the first, runs the other two,
    and leaves no temporary output behind."""
    slide = write_slide(SyntheticSlide(4096, 4096, mpp=0.5, seed=21), tmp_path / "s1.tiff")
    inputs = [slide, Path(shutil.copy(slide, tmp_path / "s2.tiff")),
              Path(shutil.copy(slide, tmp_path / "s3.tiff"))]
    workflow, out = _workflow(tmp_path), tmp_path / "out"
    args = [sys.executable, "-m", "wfe", "run", str(workflow), *[f"-i{p}" for p in inputs],
            "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if (_entry(out, inputs[0]) or ("",))[0] == "done" and \
                        (_entry(out, inputs[1]) or ("",))[0] == "running":
                    break
            except sqlite3.Error:
                pass  # not created yet
            time.sleep(0.01)
        time.sleep(0.05)  # into the second input's work
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert _entry(out, inputs[1])[0] == "running"
    result = run_cli("run", workflow, *[f"-i{p}" for p in inputs], "-o", out)
    assert result.code == 0, result.stderr
    records = _inputs(out)
    assert [bool(records[str(p)].get("resumed")) for p in inputs] == [True, False, False]
    assert not list(out.rglob("*.partial"))
    for name in ("s1", "s2", "s3"):
        assert ome_zarr_level(out / name / "image.ome.zarr")[0].shape[-2:] == (4096, 4096)


def test_outputs_of_an_interrupted_attempt_are_replaced_and_its_leftovers_removed(slides,
                                                                                  tmp_path):
    """A run killed between two outputs of an input (one renamed into place, the other
    still under its temporary name): the rerun runs it again, replacing the first."""
    workflow, out = _workflow(tmp_path), tmp_path / "out"
    assert run_cli("run", workflow, "-i", slides[0], "-o", out).code == 0
    (out / "a" / "tissue.png").unlink()
    leftover = out / "a" / ".tissue.png.0123abcd.partial"
    leftover.write_bytes(b"half a png")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with sqlite3.connect(out / "ledger.sqlite") as db:
        db.execute("UPDATE inputs SET status = 'running', pid = ?", (gone.pid,))
    result = run_cli("run", workflow, "-i", slides[0], "-o", out)
    assert result.code == 0, result.stderr
    assert not _inputs(out)[str(slides[0])].get("resumed")
    assert (out / "a" / "tissue.png").exists() and not leftover.exists()
    assert _entry(out, slides[0])[0] == "done"


def test_a_damaged_ledger_is_set_aside_and_nothing_is_overwritten(slides, tmp_path):
    workflow, out = _workflow(tmp_path), tmp_path / "out"
    assert run_cli("run", workflow, "-i", slides[0], "-o", out).code == 0
    (out / "ledger.sqlite").write_bytes(b"not a database" * 100)
    before = _mtimes(out / "a")
    result = run_cli("run", workflow, "-i", slides[0], "-o", out)
    # Nothing tells wfe it wrote those outputs any more: it will not replace them.
    assert result.code == 1 and "exists already" in result.stderr
    assert _mtimes(out / "a") == before
    assert list(out.glob("ledger.sqlite.damaged-*"))
    assert "could not be read" in (out / "wfe.log").read_text()


def test_a_killed_process_not_yet_reaped_counts_as_stopped():
    """A run started again at once after a kill finds the killed process a zombie (its
    parent has not waited for it yet): it is stopped, and what it left is cleaned up."""
    import socket

    from wfe.ledger import Entry

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and \
            Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        time.sleep(0.01)  # exited, not reaped: no wait() yet
    try:
        entry = Entry("f", "running", child.pid, socket.gethostname(), {}, {})
        assert not entry.process_alive()
        assert Entry("f", "running", os.getppid(), socket.gethostname(), {}, {}).process_alive()
    finally:
        child.wait()
