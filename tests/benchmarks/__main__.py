"""``make bench``: figures measured side by side in one run, printed as a table.

Tiling: a 40,000² JPEG slide to OME-Zarr against only decoding its tiles, and
peak RSS of tiling at 1×, 4×, 16× the area (tests/benchmarks/tiling.py).

Memory: peak RSS of read → mask → segment → write at 1×, 4×, 16× the area with a
one-layer stand-in network (the engine), and at 1× and 4× with the demo model.

Writers: a lazily generated 40,000² label image with ~100,000 objects written to
each format (time, peak RSS), GeoJSON against reading a same-size source, and
peak RSS per format at 1×, 4×, 16× the area (tests/benchmarks/writers.py).

Precision: the model alone at fp32 and bf16, contiguous and channels-last, on the
windows of the large slide, with the share of labels equal to fp32's, and ``wfe run``
against it (tests/benchmarks/device.py; on a GPU also fp16, via on_gpu.sh).

Throughput: ``wfe run`` (read → [tissue mask] → segment → write OME-Zarr [+ overlay])
against the model alone on the *same windows* of the same image (real pixels,
already in memory, same batch size), for the demo (mask on) and two larger slides
(81 and 361 windows) with the mask off; and against MONAI's sliding-window inference on the same
image and model, mask off and on (tests/benchmarks/monai_compare.py).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.benchmarks.common import NO_MASK
from wfe.cores import cpu_name

ROOT = Path(__file__).resolve().parents[2]


def _machine() -> str:
    import torch

    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def throughput(work: Path, name: str, size: tuple[int, int], seed: int, workflow: Path,
               monai: bool = False) -> list[tuple[str, str]]:
    """``wfe run`` against the model alone on the same windows of the same image (and,
    with ``monai``, against MONAI's sliding-window inference on that image).

    The contenders take turns, three times, and each one's fastest run counts: this
    shared machine's speed moves by 10-20 % within minutes, and turns expose each to
    it alike.
    """
    from tests.benchmarks.model_only import window_batches
    from tests.benchmarks.monai_compare import monai_script_seconds, monai_seconds, wfe_run
    from wfe.grid import WindowGrid
    from wfe.io import open_image
    from wfe.plugins import load_registry
    from wfe.resolution import at_resolution
    from wfe.stage import StageContext
    from wfe.workflow import load_workflow
    from wfe_builtin.models.loader import load_model
    from wfe_builtin.stages.segment import tissue_windows
    from wfe_builtin.stages.tissue_mask import TissueMaskParams, TissueMaskStage

    slide = work / f"{name}.tiff"
    subprocess.run([sys.executable, "-m", "wfe", "sample", str(slide), "--width", str(size[0]),
                    "--height", str(size[1]), "--seed", str(seed)], check=True, capture_output=True)
    registry = load_registry()
    image = at_resolution(open_image(slide, registry), 1.0, "bench")
    h, w = image.shape[1:]
    masked = any(s.uses == "tissue_mask" for s in load_workflow(workflow, registry).stages)
    if masked:
        ctx = StageContext(input=slide, output=work, workflow_dir=ROOT, registry=registry)
        mask = TissueMaskStage(TissueMaskParams(image="image", mpp=8)).run(ctx, image=image)
        kept, _ = tissue_windows(mask["mask"], h, w, 512, 64, 0.01)
    else:
        grid = WindowGrid(h, w, 512, 64)
        kept = [(y, x) for y in grid.ys for x in grid.xs]
    pixels = image.levels[0].compute()
    runs, model_times, fresh_times, monai_times, script_times, again = [], [], [], [], [], []
    for n in range(3):
        runs.append(wfe_run(slide, workflow, work / f"results-{name}-{n}"))
        if n == 0:
            # The memory layout and batch size the run chose, for the model alone and
            # MONAI too.
            seg = runs[0][0]["info"]["seg"]
            model = load_model(ROOT / "workflows/models/demo.safetensors", "cpu", "auto",
                               registry, channels_last=seg["channels_last"])
            size = seg["batch_size"]
            model.reuse_buffers(size)  # the heap setting the run's segment stage makes
            # Model only: the same windows in the same batches, from the same image,
            # already decoded in memory.
            batches = window_batches(pixels, kept, size)
        model_times.append(_seconds(model.predict, batches))
        if not masked:
            fresh_times.append(_fresh_model_seconds(slide, size, seg["channels_last"]))
        if monai:
            monai_times.append(monai_seconds(pixels, model, size))
            script_times.append(monai_script_seconds(slide, model, work / f"monai-{name}.zarr",
                                                     size))
            again.append(wfe_run(slide, workflow, work / f"results-{name}-again-{n}",
                                 again=True)[0]["timings"]["compute"])
    record, wall = min(runs, key=lambda run: run[0]["timings"]["compute"])
    windows = record["info"]["seg"]["windows"]
    assert len(kept) == windows, (len(kept), windows)
    compute = record["timings"]["compute"]
    model_only = min(model_times)
    mpx = windows * 512 * 512 / 1e6
    what = "tissue windows (mask on)" if masked else "windows (mask off)"
    rows = [
        (f"{name}: image", f"{w} × {h} px at 1 µm (level 1 of 0.5 µm), {windows} {what} "
                           "of 512 px, overlap 64"),
        (f"{name}: model only (same windows, in memory)",
         f"{windows / model_only:.2f} windows/s ({mpx / model_only:.2f} Mpx/s)"),
        (f"{name}: wfe run, compute phase", f"{windows / compute:.2f} windows/s"),
        (f"{name}: wfe run, whole command", f"{wall:.1f} s wall (start-up, model load, writing)"),
        (f"{name}: each turn, model only / wfe compute"
         + (" / MONAI / MONAI script" if monai else "") + " (s)",
         " · ".join("/".join(f"{t:.1f}" for t in turn) for turn in zip(
             model_times, [r[0]["timings"]["compute"] for r in runs],
             *([monai_times, script_times] if monai else []), strict=True))),
        (f"{name}: ratio end-to-end / model-only, compute phase", f"{model_only / compute:.3f}"),
        (f"{name}: same, each turn's own ratio (median; the machine's drift between turns "
         "left out)", _paired(model_times, [r[0]["timings"]["compute"] for r in runs])),
        (f"{name}: ratio end-to-end / model-only, whole command", f"{model_only / wall:.3f}"),
    ]
    if fresh_times:
        fresh = min(fresh_times)
        rows += [
            (f"{name}: model only in a fresh process (loaded as wfe loads it), each turn (s)",
             " · ".join(f"{t:.2f}" for t in fresh_times)),
            (f"{name}: ratio end-to-end / model-only, both in a fresh process, compute phase",
             f"{fresh / compute:.3f}"),
        ]
    if monai:
        best = min(monai_times)
        rows += [
            (f"{name}: MONAI sliding_window_inference, image in memory",
             f"{windows / best:.2f} windows/s ({model_only / best:.3f} of model-only)"),
            (f"{name}: speed of wfe run (from the file) / MONAI, mask off (target ≥ 1)",
             f"{best / compute:.3f}"),
            (f"{name}: same, each turn's own ratio (median)",
             _paired(monai_times, [r[0]["timings"]["compute"] for r in runs])),
            (f"{name}: MONAI script from the file (decode, infer, argmax, write labels)",
             f"{windows / min(script_times):.2f} windows/s"),
            (f"{name}: speed of wfe run / MONAI script, both from the file to labels on disk",
             f"{min(script_times) / compute:.3f}"),
            (f"{name}: wfe run, second input of a run (process warm, as in an archive), "
             "compute phase, each turn (s)", " · ".join(f"{t:.1f}" for t in again)),
            (f"{name}: ratio end-to-end / model-only, second input of a run",
             f"{model_only / min(again):.3f}"),
            (f"{name}: speed of wfe run / MONAI, mask off, second input of a run",
             f"{best / min(again):.3f}"),
        ]
    return rows


def _paired(reference: list[float], measured: list[float]) -> str:
    """Each turn's ``reference / measured``, and their median: the two ran a minute
    apart, so the machine's speed, which moves by 10-20 % within minutes, moves both
    alike; the fastest turn of each (the headline ratio) may come from different
    phases."""
    ratios = [r / m for r, m in zip(reference, measured, strict=True)]
    return (f"{statistics.median(ratios):.3f} (turns: "
            + " · ".join(f"{r:.3f}" for r in ratios) + ")")


def _fresh_model_seconds(slide: Path, batch: int, channels_last: bool) -> float:
    """The model alone over the slide's windows, in a process of its own
    (tests/benchmarks/model_only.py): a fresh ``wfe run``'s first-input costs, page
    faults and first passes of a batch size, paid by the model too."""
    done = subprocess.run([sys.executable, "-m", "tests.benchmarks.model_only", str(slide),
                           str(batch), str(channels_last)], check=True, capture_output=True,
                          text=True, cwd=ROOT)
    return float(done.stdout.split()[-1])


def _seconds(predict: Any, batches: list[np.ndarray]) -> float:
    t = time.perf_counter()
    for batch in batches:
        predict(batch)
    return time.perf_counter() - t


def memory(work: Path, turns: int = 3) -> list[tuple[str, str]]:
    """Peak RSS of read → mask → segment → write at 1×, 4× and 16× the area: the sizes
    take turns ``turns`` times and each one's median counts (one run's peak moves by
    up to 150 MiB from the next, at any size). Each size has a cache folder of its own:
    its first turn runs with nothing remembered, later ones touch ahead the heap its
    turn before left (wfe.warm_start), as repeated runs of one workflow do."""
    from tests.memory_probe import peak_rss_mib

    sizes = {"1×": 3072, "4×": 6144, "16×": 12288}
    runs: dict[str, list[float]] = {f: [] for f in sizes}
    for turn in range(turns):
        for f, side in sizes.items():
            runs[f].append(peak_rss_mib(work / f"memory-{turn}", side,
                                        cache=work / f"memory-cache-{side}"))
    peaks = {f: statistics.median(r) for f, r in runs.items()}
    base = peaks["1×"]
    return [(f"peak RSS at {f} the area ({side} px square, 0.5 µm), median of {turns}",
             f"{peaks[f]:.0f} MiB ({peaks[f] / base - 1:+.1%} vs 1×; runs: "
             + " · ".join(f"{m:.0f}" for m in runs[f]) + ")")
            for f, side in sizes.items()]


def model_memory(work: Path, workflow: Path, turns: int = 3) -> list[tuple[str, str]]:
    """Peak RSS of ``wfe run`` with the demo model (mask off) at 1× and 4× the area: with
    a real model's pace, reading must not run ahead of it (the stand-in above is fast).
    The sizes take turns ``turns`` times, each run with nothing remembered (a cache
    folder of its own), and each size's median counts: one run's peak moves by up to
    100 MiB from the next."""
    from tests.memory_probe import peak_rss_kib

    sides = (8192, 16384)
    for side in sides:
        subprocess.run([sys.executable, "-m", "wfe", "sample", str(work / f"memory-{side}.tiff"),
                        "--width", str(side), "--height", str(side), "--seed", "5"],
                       check=True, capture_output=True)
    runs: dict[int, list[float]] = {side: [] for side in sides}
    for turn in range(turns):
        for side in sides:
            env = {**os.environ,
                   "WFE_CACHE_DIR": str(work / f"memory-cache-model-{side}-{turn}")}
            runs[side].append(peak_rss_kib(
                [sys.executable, "-m", "wfe", "run", str(workflow), "-i",
                 str(work / f"memory-{side}.tiff"), "-o",
                 str(work / f"memory-out-{side}-{turn}")], env) / 1024)
    for side in sides:
        (work / f"memory-{side}.tiff").unlink()
    small, large = (statistics.median(runs[side]) for side in sides)

    def each(side: int) -> str:
        return " · ".join(f"{m:.0f}" for m in runs[side])

    return [("peak RSS with the demo model, mask off: 8192² slide (4096² at 1 µm, 81 windows), "
             f"median of {turns}", f"{small:.0f} MiB (runs: {each(8192)})"),
            (f"peak RSS with the demo model, mask off: 16384² slide (4×, 361 windows), "
             f"median of {turns}",
             f"{large:.0f} MiB ({large / small - 1:+.1%}; runs: {each(16384)})")]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from tests.benchmarks import device, monai_compare
    from tests.benchmarks.multiscale import multiscale
    from tests.benchmarks.tiling import tiling, tiling_memory
    from tests.benchmarks.writers import writers, writers_memory
    from wfe.heap import fix_heap_thresholds, use_huge_pages

    # The model-only loop and MONAI run in this process: under the heap settings that
    # ``wfe run`` uses, so the ratios compare engines, not allocator settings.
    use_huge_pages()
    fix_heap_thresholds()
    console = Console()
    console.print(f"machine: {_machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # A cache folder of the bench's own (remembered layouts and heaps): the first turn
        # of each workflow runs as a first run does, the others as later runs do.
        os.environ["WFE_CACHE_DIR"] = str(work / "cache")
        no_mask = work / "no-mask.yaml"
        no_mask.write_text(NO_MASK.format(model=ROOT / "workflows/models/demo.safetensors"))
        rows = throughput(work, "demo", (6144, 4096), 7, ROOT / "workflows/demo.yaml")
        rows += throughput(work, "large", (8192, 8192), 5, no_mask, monai=True)
        rows += multiscale(work, work / "large.tiff", no_mask)
        # Precisions and layouts on the CPU (a GPU machine runs tests/benchmarks/on_gpu.sh).
        rows += [(f"device: {name}", value) for name, value in
                 device.measure(work / "device", "cpu", 8192, 3, slide=work / "large.tiff")]
        # 4× the area: what a fixed cost per run weighs against what grows with it.
        rows += throughput(work, "xl", (16384, 16384), 5, no_mask, monai=True)
        rows += monai_compare.mask_on(work)
        rows += memory(work)
        rows += model_memory(work, no_mask)
        rows += tiling(work)
        rows += tiling_memory(work)
        rows += writers(work)
        rows += writers_memory(work)
    table = Table("measure", "value", title="wfe bench: throughput (measured side by side in one run)")
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
