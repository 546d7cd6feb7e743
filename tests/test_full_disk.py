"""A disk that fills up during a night's run: the run stops at the input it was on with one
line, nothing written before is damaged, and once there is room again the same command
goes on where it stopped."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import SEGMENT_LABELS, ome_zarr_level, run_cli
from wfe.errors import NoSpaceError, is_out_of_space
from wfe_builtin.synthetic import SyntheticSlide, write_slide

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A file system of 400 KiB (tmpfs), made larger by calling the value with a size."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_with_one_line_and_a_rerun_goes_on(small_disk, tmp_path):
    disk, resize = small_disk
    slides = [write_slide(SyntheticSlide(3072, 3072, mpp=0.5, seed=60 + i),
                          tmp_path / f"s{i}.tiff") for i in range(4)]
    workflow = tmp_path / "seg.yaml"
    workflow.write_text(SEGMENT_LABELS)
    out = disk / "out"
    full = run_cli("run", workflow, "-i", tmp_path / "s*.tiff", "-o", out)
    assert full.code == 1, full.stderr
    assert "Traceback" not in full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, full.stderr
    assert "no space left on the disk" in errors[0]
    assert "run the same command again" in errors[0]
    # run.json is whole, and says which input the run stopped at and which it never began.
    records = json.loads((out / "run.json").read_text())["inputs"]
    statuses = [records[str(s)]["status"] for s in slides]
    stopped_at = statuses.index("failed")
    assert statuses == ["done"] * stopped_at + ["failed"] + ["not run"] * (3 - stopped_at)
    assert stopped_at < 3  # the disk is too small for all four
    log = (out / "wfe.log").read_text()
    assert sum(log.count(f"start {s}") for s in slides) == stopped_at + 1
    # Nothing half-written carries a final name or lingers under a temporary one.
    assert not list(out.rglob("*.partial"))
    for slide in slides[:stopped_at]:
        assert ome_zarr_level(out / slide.stem / "labels.ome.zarr").shape[-2:] == (1536, 1536)
    assert not (out / slides[stopped_at].stem / "labels.ome.zarr").exists()

    resize("20m")
    again = run_cli("run", workflow, "-i", tmp_path / "s*.tiff", "-o", out)
    assert again.code == 0, again.stderr
    assert f"4 of 4 inputs done ({stopped_at} by an earlier run)" in again.stdout \
        if stopped_at else "4 of 4 inputs done" in again.stdout
    for slide in slides:
        assert ome_zarr_level(out / slide.stem / "labels.ome.zarr").shape[-2:] == (1536, 1536)


def test_what_counts_as_a_full_disk():
    import errno
    import sqlite3

    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_out_of_space(sqlite3.OperationalError("database or disk is full"))
    assert is_out_of_space(NoSpaceError("x"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("a chunk could not be stored") from exc
    except RuntimeError as wrapped:
        assert is_out_of_space(wrapped)
    assert not is_out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not is_out_of_space(sqlite3.OperationalError("database is locked"))
    assert not is_out_of_space(ValueError("no space"))
