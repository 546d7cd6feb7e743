"""Several ``wfe run``s sharing one output root (started twice, or once per machine over a
shared folder): each input runs in one of them, each waits for the inputs the others
hold, and an input whose holder stopped is taken over (wfe.ledger claims and stamps)."""

from __future__ import annotations

import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

import wfe.batch
import wfe.ledger
from conftest import ROOT, SEGMENT_LABELS, ome_zarr_level
from wfe.ledger import Ledger
from wfe_builtin.synthetic import SyntheticSlide, write_slide

pytestmark = pytest.mark.slow

#: No model: an input runs in a fraction of a second.
MASK = """
wfe: 1
stages:
  - {id: image, uses: read, with: {mpp: 1.0}}
  - {id: tissue, uses: tissue_mask, with: {image: image, mpp: 8}}
  - {id: mask, uses: write, with: {data: tissue, path: "{output}/tissue.png"}}
"""


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("shared")
    return [write_slide(SyntheticSlide(2048, 2048, mpp=0.5, seed=40 + i), folder / f"s{i}.tiff")
            for i in range(6)]


def _ledger(root: Path) -> dict[str, tuple[str, int, str]]:
    with sqlite3.connect(root / "ledger.sqlite") as db:
        return {k: (s, p, h) for k, s, p, h in db.execute("SELECT input, status, pid, host "
                                                          "FROM inputs")}


def _wfe(*args: str | Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "wfe", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_on_one_output_root_share_its_inputs(slides, tmp_path):
    workflow, out = tmp_path / "seg.yaml", tmp_path / "out"
    workflow.write_text(SEGMENT_LABELS)
    # Started together, each on one of the two cores (two runs of two threads each on two
    # cores would spend most of their time waiting for each other's cores).
    first, second = (_wfe("run", workflow, "-i", slides[0].parent / "s*.tiff", "-o", out)
                     for _ in range(2))
    outs = [proc.communicate(timeout=600) for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outs
    # Each input ran once, in one of the two, and both took a share.
    log = (out / "wfe.log").read_text()
    for slide in slides:
        assert log.count(f"start {slide}") == 1, log
    ledger = _ledger(out)
    assert {s for s, _, _ in ledger.values()} == {"done"}
    assert {p for _, p, _ in ledger.values()} == {first.pid, second.pid}
    # Each says every input is done, those of the other among them.
    assert "6 of 6 inputs done" in outs[0][0] and "6 of 6 inputs done" in outs[1][0]
    assert "by another run at the same time" in outs[1][0]
    records = json.loads((out / "run.json").read_text())["inputs"]
    assert {r["status"] for r in records.values()} == {"done"}
    for slide in slides:
        assert ome_zarr_level(out / slide.stem / "labels.ome.zarr").shape[-2:] == (1024, 1024)
    assert not list(out.rglob("*.partial")) and not list(out.rglob(".wfe-checkpoint"))


def test_claims_made_at_once_grant_one(tmp_path):
    """Four processes claim one input at the same moment: exactly one holds it."""
    code = ("import sys, time; sys.path[:0] = sys.argv[3:]\n"
            "from pathlib import Path\n"
            "from wfe.ledger import Ledger\n"
            "ledger = Ledger(Path(sys.argv[1]))\n"
            "while time.time() < float(sys.argv[2]): time.sleep(0.001)\n"
            "print(ledger.claim('slide', 'print').granted)\n")
    Ledger(tmp_path)
    at = str(time.time() + 3)
    paths = [str(ROOT / "core"), str(ROOT / "plugins")]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), at, *paths],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    granted = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert sorted(granted) == ["False", "False", "False", "True"]


def test_a_ledger_of_an_earlier_version_gains_its_stamps(tmp_path):
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        db.execute("CREATE TABLE inputs (input TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, "
                   "status TEXT NOT NULL, pid INTEGER, host TEXT, started REAL, record TEXT)")
        db.execute("INSERT INTO inputs VALUES ('a', 'f', 'done', 1, 'h', 0, '{}')")
    ledger = Ledger(tmp_path)
    assert ledger.claim("b", "f").granted
    ledger.beat("b")
    entry = ledger.entry("b")
    assert entry.status == "running" and entry.beat >= entry.started
    assert ledger.entry("a").status == "done"


def _run(workflow: Path, inputs: list[Path], out: Path) -> wfe.batch.BatchResult:
    from wfe.plugins import load_registry
    from wfe.workflow import load_workflow

    registry = load_registry()
    return wfe.batch.run_batch(load_workflow(workflow, registry), inputs, registry,
                               output_template=str(out / "{input.stem}"),
                               console=Console(file=io.StringIO()))


def _hold(out: Path, slide: Path, workflow: Path, pid: int, host: str) -> None:
    """Make the ledger say ``host:pid`` is running ``slide``, as a run sharing ``out``
    would, with this run's fingerprint."""
    from wfe.ledger import input_fingerprint, workflow_fingerprint
    from wfe.plugins import load_registry
    from wfe.workflow import load_workflow

    print_ = input_fingerprint(workflow_fingerprint(load_workflow(workflow, load_registry()),
                                                    "auto"), slide, out / slide.stem)
    out.mkdir(parents=True, exist_ok=True)
    Ledger(out)
    now = time.time()
    with sqlite3.connect(out / "ledger.sqlite") as db:
        db.execute("INSERT INTO inputs (input, fingerprint, status, pid, host, started, beat) "
                   "VALUES (?, ?, 'running', ?, ?, ?, ?)",
                   (str(slide.resolve()), print_, pid, host, now, now))


@pytest.fixture
def quick(monkeypatch):
    """Stamps, looks and patience of a fraction of a second."""
    monkeypatch.setattr(wfe.ledger, "BEAT_S", 0.1)
    monkeypatch.setattr(wfe.batch, "POLL_S", 0.1)
    monkeypatch.setattr(wfe.batch, "STALE_S", 1.5)


def test_an_input_another_machine_runs_is_waited_for_not_run(slides, tmp_path, quick):
    workflow, out = tmp_path / "mask.yaml", tmp_path / "out"
    workflow.write_text(MASK)
    _hold(out, slides[1], workflow, 4242, "elsewhere")
    key = str(slides[1].resolve())

    def other_machine() -> None:  # stamps for three seconds, then finishes the input
        for _ in range(30):
            time.sleep(0.1)
            with sqlite3.connect(out / "ledger.sqlite") as db:
                db.execute("UPDATE inputs SET beat = ? WHERE input = ?", (time.time(), key))
        with sqlite3.connect(out / "ledger.sqlite") as db:
            db.execute("UPDATE inputs SET status = 'done', record = ? WHERE input = ?",
                       (json.dumps({"status": "done", "outputs": [], "error": None}), key))

    thread = threading.Thread(target=other_machine)
    t0 = time.monotonic()
    thread.start()
    result = _run(workflow, slides[:3], out)
    thread.join()
    assert time.monotonic() - t0 >= 3  # it waited, past STALE_S, while the stamps moved on
    record = result.records[str(slides[1])]
    assert record["status"] == "done" and record["concurrent"]
    assert record["process"] == "elsewhere:4242"
    assert not (out / slides[1].stem / "tissue.png").exists()  # not run here
    assert all((out / s.stem / "tissue.png").exists() for s in (slides[0], slides[2]))
    assert result.concurrent == [str(slides[1])]


def test_an_input_whose_holder_stopped_stamping_is_taken_over(slides, tmp_path, quick):
    """A machine that died under an input (its stamp no longer moves): the input is run
    here after STALE_S, and what that attempt left is removed."""
    workflow, out = tmp_path / "mask.yaml", tmp_path / "out"
    workflow.write_text(MASK)
    _hold(out, slides[0], workflow, 4242, "elsewhere")
    leftover = out / slides[0].stem / ".tissue.png.0123abcd.partial"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a png")
    t0 = time.monotonic()
    result = _run(workflow, slides[:1], out)
    assert time.monotonic() - t0 >= 1.5
    record = result.records[str(slides[0])]
    assert record["status"] == "done" and not record.get("concurrent")
    assert record["process"] == f"{socket.gethostname()}:{os.getpid()}"
    assert (out / slides[0].stem / "tissue.png").exists() and not leftover.exists()
    assert _ledger(out)[str(slides[0].resolve())][1] == os.getpid()


def test_an_input_held_here_is_run_as_soon_as_its_process_ends(slides, tmp_path, quick,
                                                               monkeypatch):
    """A run on this machine that is killed under an input: taken over when its process is
    gone, without waiting for its stamp to go stale."""
    monkeypatch.setattr(wfe.batch, "STALE_S", 600.0)
    workflow, out = tmp_path / "mask.yaml", tmp_path / "out"
    workflow.write_text(MASK)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    try:
        _hold(out, slides[0], workflow, holder.pid, socket.gethostname())
        reaper = threading.Thread(target=holder.wait)
        reaper.start()
        t0 = time.monotonic()
        result = _run(workflow, slides[:1], out)
        elapsed = time.monotonic() - t0
        reaper.join()
    finally:
        holder.kill()
    assert 1 <= elapsed < 60
    record = result.records[str(slides[0])]
    assert record["status"] == "done" and not record.get("concurrent")
    assert _ledger(out)[str(slides[0].resolve())][1] == os.getpid()
