"""Chunk checkpoints: an input stopped midway resumes from the chunks it finished
(wfe.checkpoint, the ``needed`` chunks of wfe.stitch, the segment stage)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest

from conftest import (
    MODEL,
    SEGMENT_LABELS,
    counted_chunks,
    kept_chunk_files,
    ome_zarr_level,
    run_cli,
    wait_for_files,
)
from wfe.checkpoint import CHECKPOINT_FOLDER, Checkpoints, KeptArray
from wfe.grid import WindowGrid
from wfe.stage import StageContext
from wfe.stitch import chunk_edges, sliding_window_sums


def _fill(c0, c1, y0, y1, x0, x1):
    y, x = np.mgrid[y0:y1, x0:x1]
    return np.stack([(y * 7 + x * 3 + c) % 251 for c in range(c0, c1)]).astype(np.uint8)


def test_kept_chunks_are_read_back_and_never_computed_again(tmp_path):
    array, computed = counted_chunks(_fill, np.uint8, ((1,), (40, 40, 17), (40, 23)))
    kept = Checkpoints(tmp_path / "cp", "print-1").array("seg", "labels", array.chunks,
                                                         np.uint8)
    assert kept.done == frozenset()
    # An attempt that finishes two chunks and stops.
    first = kept.keep(array)
    dask.compute(first.blocks[0, 0, 0], first.blocks[0, 2, 1], scheduler="sync")
    again = Checkpoints(tmp_path / "cp", "print-1").array("seg", "labels", array.chunks,
                                                          np.uint8)
    assert again.done == {(0, 0, 0), (0, 2, 1)}
    computed.clear()
    np.testing.assert_array_equal(again.keep(array).compute(scheduler="sync"),
                                  _fill(0, 1, 0, 97, 0, 63))
    assert (0, 0) not in computed and (80, 40) not in computed
    assert set(computed) == {(0, 40), (40, 0), (40, 40), (80, 0)}


def test_another_fingerprint_or_shape_starts_afresh(tmp_path):
    array, _ = counted_chunks(_fill, np.uint8, ((1,), (40, 40), (40,)))
    kept = Checkpoints(tmp_path / "cp", "print-1").array("seg", "labels", array.chunks,
                                                         np.uint8)
    kept.keep(array).compute(scheduler="sync")
    same = Checkpoints(tmp_path / "cp", "print-1").array("seg", "labels", array.chunks,
                                                         np.uint8)
    assert len(same.done) == 2
    other = Checkpoints(tmp_path / "cp", "print-2").array("seg", "labels", array.chunks,
                                                          np.uint8)
    assert other.done == frozenset()
    kept = Checkpoints(tmp_path / "cp", "print-2").array("seg", "labels", array.chunks,
                                                         np.uint8)
    kept.keep(array).compute(scheduler="sync")
    wider = Checkpoints(tmp_path / "cp", "print-2").array("seg", "labels",
                                                          ((1,), (40, 40), (40, 9)), np.uint8)
    assert wider.done == frozenset()
    with pytest.raises(ValueError, match="not regular"):
        Checkpoints(tmp_path / "cp", "print-2").array("seg", "x", ((1,), (40, 41, 3)), np.uint8)


def test_sums_of_needed_chunks_equal_a_whole_pass_and_rerun_only_edge_windows():
    rng = np.random.default_rng(5)
    image = da.from_array(rng.random((2, 331, 287)).astype(np.float32), chunks=(2, 64, 64))
    calls: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.concatenate([batch.mean(1, keepdims=True) + 0 * batch[:, :1],
                               batch[:, :1] ** 2], axis=1)

    args = {"out_channels": 2, "window": 32, "overlap": 8, "chunk": 120, "batch_size": 3}
    whole = sliding_window_sums(image, predict, **args).compute(scheduler="sync")
    all_windows = sum(calls)
    ys, xs = chunk_edges(331, 287, 32, 8, 120)
    assert (len(ys), len(xs)) == (4, 4)  # 3 × 3 chunks of 120 (5 × 5 windows each)
    done = {(0, 0), (0, 1), (1, 0), (2, 2)}
    calls.clear()
    part = sliding_window_sums(image, predict, needed=lambda i, j: (i, j) not in done, **args)
    wanted = [(i, j) for i in range(3) for j in range(3) if (i, j) not in done]
    blocks = dask.compute(*[part.blocks[:, i, j] for i, j in wanted], scheduler="sync")
    for (i, j), block in zip(wanted, blocks, strict=True):
        np.testing.assert_allclose(block, whole[:, ys[i]:ys[i + 1], xs[j]:xs[j + 1]],
                                   atol=1e-5)
    # A done chunk's windows run again only where they reach a needed chunk (the last
    # row or column of its windows), each once however many needed chunks it reaches.
    grid = WindowGrid(331, 287, 32, 8)

    def box(i: int, j: int) -> tuple[int, int, int, int]:
        return ys[i], ys[i + 1], xs[j], xs[j + 1]

    def reaches(y: int, x: int, i: int, j: int) -> bool:
        y0, y1, x0, x1 = box(i, j)
        return y < y1 and y0 < y + 32 and x < x1 and x0 < x + 32

    own = sum(len(grid.owned_by(*box(i, j))) for i, j in wanted)
    rerun = sum(1 for d in done for y, x in grid.owned_by(*box(*d))
                if any(reaches(y, x, i, j) for i, j in wanted))
    twice = sum(1 for d in done for y, x in grid.owned_by(*box(*d))
                if sum(reaches(y, x, i, j) for i, j in wanted) > 1)
    assert twice > 0  # some windows reach two needed chunks: they still run once
    assert 0 < rerun < own / 3
    assert sum(calls) == own + rerun < all_windows
    with pytest.raises(RuntimeError, match="marked as not needed"):
        part.blocks[:, 0, 0].compute(scheduler="sync")


@pytest.fixture(scope="module")
def slide_at_1um(sample_slide, registry):
    from wfe.io import open_image
    from wfe.resolution import at_resolution

    return at_resolution(open_image(sample_slide, registry), 1.0, "t")  # 1024² at 1 µm


class _Stop(Exception):
    """Stands for the process being stopped in the middle of an input."""


@pytest.mark.slow
def test_a_stopped_segmentation_resumes_from_its_chunks(tmp_path, registry, slide_at_1um,
                                                          monkeypatch):
    """Two scales, probabilities and labels: stopped after a few batches, the next attempt
    runs only what the unfinished chunks need, and gives what one attempt gives."""
    from wfe_builtin.models.loader import LoadedModel
    from wfe_builtin.stages.segment import SegmentParams, SegmentStage

    # Chunks of 4 × 4 windows: a kept chunk's windows that run again (those reaching an
    # unfinished chunk) are fewer than its own, whichever chunks were kept.
    params = SegmentParams(image="image", model=MODEL.name, scales=[1.0, 2.0], window=128,
                           overlap=16, chunk=448, batch_size=2)

    def segment(checkpoints):
        ctx = StageContext(input=tmp_path, output=tmp_path, workflow_dir=MODEL.parent,
                           registry=registry, device="cpu", stage_id="seg",
                           checkpoints=checkpoints)
        out = SegmentStage(params).run(ctx, image=slide_at_1um)
        return out, ctx.info.get("seg", {})

    plain, _ = segment(None)
    expected = dask.compute(plain["probabilities"].data, plain["labels"].data,
                            scheduler="threads", optimize_graph=False)
    predict, store = LoadedModel.predict, KeptArray._store
    windows: list[int] = []
    stored: list[tuple[int, ...]] = []
    stop = False

    def counted(self, batch, tta=()):
        windows.append(len(batch))
        return predict(self, batch, tta)

    def storing(self, block, value):
        kept = store(self, block, value)
        stored.append(block)
        if stop and len(stored) == 6:  # three chunks of both outputs, as dask orders them
            raise _Stop
        return kept

    monkeypatch.setattr(LoadedModel, "predict", counted)
    monkeypatch.setattr(KeptArray, "_store", storing)
    segment(None)[0]["labels"].data.compute(scheduler="sync")
    whole = sum(windows)  # 81 at 1 µm and 25 at 2 µm

    checkpoints = Checkpoints(tmp_path / CHECKPOINT_FOLDER, "print")
    stop, windows[:] = True, []
    first, info = segment(checkpoints)
    with pytest.raises(_Stop):
        dask.compute(first["probabilities"].data, first["labels"].data, scheduler="sync",
                     optimize_graph=False)
    assert "chunks_resumed" not in info

    stop, windows[:] = False, []
    second, info = segment(Checkpoints(tmp_path / CHECKPOINT_FOLDER, "print"))
    assert 0 < info["chunks_resumed"] < 9  # a 1024² image in chunks of 448
    got = dask.compute(second["probabilities"].data, second["labels"].data,
                       scheduler="threads", optimize_graph=False)
    assert sum(windows) < whole
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    assert (got[1] == expected[1]).mean() > 0.9999  # argmax of ties within float rounding

    params = params.model_copy(update={"checkpoint": False})
    elsewhere = Checkpoints(tmp_path / "other", "print")
    _, info = segment(elsewhere)
    assert not elsewhere.folder.exists() and "chunks_resumed" not in info




@pytest.mark.slow
def test_a_killed_run_keeps_the_chunks_it_finished(tmp_path):
    """SIGKILL in the middle of a slide: the rerun keeps the chunks already finished,
    writes labels equal to an uninterrupted run's, and removes the checkpoints."""
    from wfe_builtin.synthetic import SyntheticSlide, write_slide

    slide = write_slide(SyntheticSlide(6144, 6144, mpp=0.5, seed=8), tmp_path / "s.tiff")
    workflow = tmp_path / "seg.yaml"
    workflow.write_text(SEGMENT_LABELS)
    out = tmp_path / "out"
    checkpoint = out / "s" / CHECKPOINT_FOLDER / "seg" / "labels.zarr" / "c"
    proc = subprocess.Popen([sys.executable, "-m", "wfe", "run", str(workflow), "-i", str(slide),
                             "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_files(checkpoint, 3, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    # A chunk being written when the kill came is a ``.partial`` file: not kept.
    finished = kept_chunk_files(checkpoint)
    assert 3 <= finished < 49  # 3072² at 1 µm in chunks of 448 (7 × 7)

    result = run_cli("run", workflow, "-i", slide, "-o", out)
    assert result.code == 0, result.stderr
    record = json.loads((out / "run.json").read_text())["inputs"][str(slide)]
    assert record["info"]["seg"]["chunks_resumed"] >= finished
    assert not (out / "s" / CHECKPOINT_FOLDER).exists()
    resumed = ome_zarr_level(out / "s" / "labels.ome.zarr")

    fresh = run_cli("run", workflow, "-i", slide, "-o", tmp_path / "fresh")
    assert fresh.code == 0, fresh.stderr
    np.testing.assert_array_equal(resumed, ome_zarr_level(tmp_path / "fresh" / "s"
                                                          / "labels.ome.zarr"))

