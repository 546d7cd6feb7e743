"""wfe against MONAI's ``sliding_window_inference`` with the same model and windows.

MONAI gets the whole image already decoded in memory (a float tensor: how it is
used), the same network in the memory layout the wfe run chose, the same window
(512), overlap (64), batch (the one the wfe run chose), Gaussian blending (sigma 0.125) and the same
normalisation inside its predictor; its output stays
in memory. wfe gets the slide file and writes its labels as OME-Zarr
(``wfe run``, compute phase). Two slides:

- mask off: the bench's larger slide, every window run by both (timed in turns
  with the throughput rows, ``tests/benchmarks/__main__.py``);
- mask on: a slide that is mostly background (tissue gathered in one section,
  as on a real slide); wfe runs only the windows its tissue mask keeps, MONAI
  runs them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "workflows/models/demo.safetensors"
OVERLAP = 64
# The mostly-background slide: side (level-0 px at 0.5 µm), seed, tissue fraction.
SIDE, SEED, TISSUE = 16384, 0, 0.3

MASKED = """
wfe: 1
stages:
  - {{id: image, uses: read, with: {{mpp: 1.0}}}}
  - {{id: tissue, uses: tissue_mask, with: {{image: image, mpp: 8}}}}
  - id: seg
    uses: segment
    with: {{image: image, mask: tissue, model: {model}, overlap: 64}}
  - {{id: labels, uses: write, with: {{data: seg.labels, path: "{{output}}/labels.ome.zarr"}}}}
"""


def wfe_run(slide: Path, workflow: Path, out: Path, again: bool = False) -> tuple[dict, float]:
    """``wfe run`` of ``workflow`` on ``slide``: its run.json record and wall time.

    With ``again``, the same slide (a link to it under another name) is the run's second
    input, and its record is the one returned: a process that has already run one
    input, as in an archive run (the wall time is then the whole command's, both inputs).
    """
    inputs = [slide]
    if again:
        inputs.append(out.parent / f"{slide.stem}-again{slide.suffix}")
        inputs[1].unlink(missing_ok=True)
        inputs[1].hardlink_to(slide)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wfe", "run", str(workflow),
                    *(arg for path in inputs for arg in ("-i", str(path))), "-o", str(out)],
                   check=True, capture_output=True)
    wall = time.perf_counter() - t0
    records = json.loads((out / "run.json").read_text())["inputs"]
    return records[str(inputs[-1])], wall


def _sliding_window(pixels: np.ndarray, model: Any, batch: int,
                    then: Callable[[Any], Any] = lambda out: out) -> Any:
    """MONAI's sliding-window inference over ``pixels`` (c, y, x) with ``model`` (a loaded
    wfe model: its network and normalisation), ``batch`` windows per call: ``then`` of
    the (1, k, y, x) probabilities.

    All of it, ``then`` included, runs on the thread wfe's model runs on in this process
    (the float image, the passes, the blending): torch work on a second thread would
    make a second OpenMP team and slow every pass after it, MONAI's and the model-only
    loop's alike (``wfe_builtin.models.torch_thread``)."""
    import torch
    from monai.inferers import sliding_window_inference

    from wfe_builtin.models.torch_thread import on_torch_thread

    scale = model.card.normalize.scale
    window = model.card.window

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model.net((x / scale - model.mean) / model.std), dim=1)

    def infer() -> Any:
        image = torch.from_numpy(np.ascontiguousarray(pixels))[None].float()
        with torch.inference_mode():
            out = sliding_window_inference(image, window, batch, predictor,
                                           overlap=OVERLAP / window, mode="gaussian",
                                           sigma_scale=0.125)
            assert out.shape[-2:] == image.shape[-2:]
            return then(out)

    return on_torch_thread(infer)


def monai_seconds(pixels: np.ndarray, model: Any, batch: int) -> float:
    """Seconds MONAI's sliding-window inference takes over ``pixels`` already in memory."""
    t = time.perf_counter()
    _sliding_window(pixels, model, batch)
    return time.perf_counter() - t


def monai_script_seconds(slide: Path, model: Any, out: Path, batch: int) -> float:
    """Seconds a MONAI script takes from the slide file to labels on disk, as ``wfe run``
    does: decode the level at 1 µm into memory, ``sliding_window_inference``, argmax,
    write the labels as Zarr (zstd level 1, 2048² chunks, as wfe; level 0 only, where
    wfe also writes a pyramid)."""
    import torch
    import zarr
    from zarr.codecs import ZstdCodec

    from wfe.io import open_image
    from wfe.plugins import load_registry
    from wfe.resolution import at_resolution

    registry = load_registry()
    t = time.perf_counter()
    pixels = at_resolution(open_image(slide, registry), 1.0, "bench").levels[0].compute()
    labels = _sliding_window(pixels, model, batch,
                             lambda out: out.argmax(1).to(torch.uint8).numpy())
    zarr.create_array(store=str(out), data=labels, chunks=(1, 2048, 2048),
                      compressors=ZstdCodec(level=1), overwrite=True)
    return time.perf_counter() - t


def mask_on(work: Path) -> list[tuple[str, str]]:
    """A ``SIDE``² slide at 0.5 µm with ``TISSUE`` of it tissue in one section, mask on:
    three turns each (a fresh ``wfe run``, then MONAI), each one's fastest counts."""
    from wfe.grid import WindowGrid
    from wfe.io import open_image
    from wfe.plugins import load_registry
    from wfe.resolution import at_resolution
    from wfe_builtin.models.loader import load_model
    from wfe_builtin.synthetic.slide import SyntheticSlide

    slide = work / "background.tiff"
    subprocess.run([sys.executable, "-m", "wfe", "sample", str(slide), "--width", str(SIDE),
                    "--height", str(SIDE), "--seed", str(SEED), "--tissue", str(TISSUE)],
                   check=True, capture_output=True)
    workflow = work / "masked.yaml"
    workflow.write_text(MASKED.format(model=MODEL))
    registry = load_registry()
    pixels = at_resolution(open_image(slide, registry), 1.0, "bench").levels[0].compute()
    computes, monais = [], []
    for n in range(3):
        record, _ = wfe_run(slide, workflow, work / f"results-background-{n}")
        info = record["info"]["seg"]
        computes.append(record["timings"]["compute"])
        if n == 0:
            model = load_model(MODEL, "cpu", "auto", registry,
                               channels_last=info["channels_last"])
            model.reuse_buffers(info["batch_size"])
        monais.append(monai_seconds(pixels, model, info["batch_size"]))
    compute, seconds = min(computes), min(monais)
    windows = len(WindowGrid(*pixels.shape[1:], model.card.window, OVERLAP))
    del pixels
    skipped = info["windows_skipped_fraction"]
    background = 1 - SyntheticSlide(SIDE, SIDE, 0.5, SEED, tissue=TISSUE).tissue_fraction()
    return [
        ("MONAI, mask on: slide",
         f"{SIDE:,}² px at 0.5 µm, run at 1 µm: {background:.0%} of its pixels background, "
         f"{skipped:.0%} of its {windows} windows skipped by the tissue mask"),
        ("MONAI, mask on: MONAI sliding_window_inference (all windows, image in memory)",
         f"{seconds:.1f} s (turns: {' · '.join(f'{t:.1f}' for t in monais)})"),
        ("MONAI, mask on: wfe run from the file, compute phase (mask + kept windows)",
         f"{compute:.1f} s ({info['windows']} windows; turns: "
         f"{' · '.join(f'{t:.1f}' for t in computes)})"),
        ("MONAI, mask on: speed-up of wfe over MONAI (target ≥ 2)",
         f"{seconds / compute:.2f} (all windows / kept windows: "
         f"{windows / info['windows']:.2f})"),
    ]
