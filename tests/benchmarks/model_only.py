"""The model alone over the windows of a slide, in a process of its own: what the model
costs a fresh process, to set beside a fresh ``wfe run``'s compute phase.

``python -m tests.benchmarks.model_only SLIDE BATCH CHANNELS_LAST`` prints the seconds
the forward passes took. The process is set up as ``wfe run`` sets up its own (huge
pages, heap thresholds, the model loaded with its one-window warm-up, its buffers kept
for the batch size); the slide's level at 1 µm is decoded into memory and cut into
the run's batches before the clock starts, so only the model is timed, memory it
touches for the first time included.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from wfe.heap import fix_heap_thresholds, use_huge_pages

ROOT = Path(__file__).resolve().parents[2]
WINDOW, OVERLAP = 512, 64


def window_batches(pixels: Any, starts: list[tuple[int, int]], size: int) -> list[Any]:
    """The windows at ``starts`` cut from ``pixels`` (c, y, x), stacked in batches of
    ``size``, in that order: what a run hands the model."""
    import numpy as np

    return [np.stack([pixels[:, y:y + WINDOW, x:x + WINDOW] for y, x in starts[i:i + size]])
            for i in range(0, len(starts), size)]


def main(slide: Path, batch: int, channels_last: bool) -> float:
    use_huge_pages()
    fix_heap_thresholds()
    from wfe.grid import WindowGrid
    from wfe.io import open_image
    from wfe.plugins import load_registry
    from wfe.resolution import at_resolution
    from wfe_builtin.models.loader import load_model

    registry = load_registry()
    model = load_model(ROOT / "workflows/models/demo.safetensors", "cpu", "auto", registry,
                       channels_last=channels_last)
    model.reuse_buffers(batch)
    pixels = at_resolution(open_image(slide, registry), 1.0, "bench").levels[0].compute()
    grid = WindowGrid(*pixels.shape[1:], WINDOW, OVERLAP)
    batches = window_batches(pixels, [(y, x) for y in grid.ys for x in grid.xs], batch)
    start = time.perf_counter()
    for b in batches:
        model.predict(b)
    return time.perf_counter() - start


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "True"))
