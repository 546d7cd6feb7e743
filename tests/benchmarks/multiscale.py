"""Multi-scale segmentation (``scales: [1, 2]``) against the model alone over the same
windows of both scales: what the second pass's reading, blending, upsampling and
fusion cost beside its model."""

from __future__ import annotations

import time
from pathlib import Path

from tests.benchmarks.model_only import OVERLAP, WINDOW, window_batches

ROOT = Path(__file__).resolve().parents[2]
SCALES = (1.0, 2.0)


def multiscale(work: Path, slide: Path, single: Path, turns: int = 3) -> list[tuple[str, str]]:
    """``wfe run`` of the workflow ``single`` with its ``seg`` stage given two scales, over
    ``slide``, and the model alone over the windows of both scales (decoded in memory,
    the run's batch size and layout), in turns; each one's fastest turn counts."""
    import yaml

    from tests.benchmarks.monai_compare import wfe_run
    from wfe.grid import WindowGrid
    from wfe.io import open_image
    from wfe.plugins import load_registry
    from wfe.resolution import at_resolution
    from wfe_builtin.models.loader import load_model

    spec = yaml.safe_load(single.read_text())
    next(s for s in spec["stages"] if s["id"] == "seg")["with"]["scales"] = list(SCALES)
    workflow = work / "multiscale.yaml"
    workflow.write_text(yaml.safe_dump(spec))
    registry = load_registry()
    image = open_image(slide, registry)
    levels = [at_resolution(image, scale, "bench").levels[0].compute() for scale in SCALES]
    model_times, compute_times, batches = [], [], []
    for turn in range(turns):
        record, _ = wfe_run(slide, workflow, work / f"results-multiscale-{turn}")
        compute_times.append(record["timings"]["compute"])
        if turn == 0:
            seg = record["info"]["seg"]
            layouts = seg["channels_last"]  # one per scale (the same model here)
            model = load_model(ROOT / "workflows/models/demo.safetensors", "cpu", "auto",
                               registry, channels_last=layouts[0])
            model.reuse_buffers(seg["batch_size"])
            for pixels in levels:
                grid = WindowGrid(*pixels.shape[1:], WINDOW, OVERLAP)
                batches += window_batches(pixels, [(y, x) for y in grid.ys for x in grid.xs],
                                          seg["batch_size"])
            windows = sum(len(b) for b in batches)
            assert windows == seg["windows"], (windows, seg["windows"])
        t = time.perf_counter()
        for batch in batches:
            model.predict(batch)
        model_times.append(time.perf_counter() - t)
    model_only, compute = min(model_times), min(compute_times)
    return [
        ("multi-scale (large slide): windows", f"{windows}, at " + " and ".join(f"{s:g}" for s in SCALES)
         + " µm"),
        ("multi-scale: each turn, model only / wfe compute (s)",
         " · ".join(f"{m:.2f}/{c:.2f}" for m, c in zip(model_times, compute_times, strict=True))),
        ("multi-scale: ratio end-to-end / model-only, compute phase", f"{model_only / compute:.3f}"),
    ]
