"""``make bench``: figures measured side by side in one run, printed as a table.

Demo throughput: ``wfe run workflows/demo.yaml`` on the demo slide (read → tissue
mask → segment → write OME-Zarr + overlay) against the model alone on the *same
windows* of the same image (real pixels, already in memory, same batch size).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def demo_throughput(work: Path) -> list[tuple[str, str]]:
    from wfe.io import open_image
    from wfe.plugins import load_registry
    from wfe.stage import StageContext
    from wfe_builtin.models.loader import load_model
    from wfe_builtin.stages.read import at_mpp
    from wfe_builtin.stages.segment import tissue_windows
    from wfe_builtin.stages.tissue_mask import TissueMaskParams, TissueMaskStage

    slide = work / "sample.tiff"
    subprocess.run([sys.executable, "-m", "wfe", "sample", str(slide), "--seed", "7"],
                   check=True, capture_output=True)
    out = work / "results"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wfe", "run", str(ROOT / "workflows/demo.yaml"),
                    "-i", str(slide), "-o", str(out)], check=True, capture_output=True)
    wall = time.perf_counter() - t0
    record = next(iter(json.loads((out / "run.json").read_text())["inputs"].values()))
    windows = record["info"]["seg"]["windows"]
    compute = record["timings"]["compute"]

    # Model only: the same windows, from the same image, already decoded in memory.
    registry = load_registry()
    image = at_mpp(open_image(slide, registry), 1.0, "bench")
    ctx = StageContext(input=slide, output=work, workflow_dir=ROOT, registry=registry)
    mask = TissueMaskStage(TissueMaskParams(image="image", mpp=8)).run(ctx, image=image)["mask"]
    h, w = image.shape[1:]
    kept, _ = tissue_windows(mask, h, w, 512, 64, 0.01)
    assert len(kept) == windows, (len(kept), windows)
    pixels = image.levels[0].compute()
    batches = [np.stack([pixels[:, y:y + 512, x:x + 512] for y, x in kept[i:i + 8]])
               for i in range(0, len(kept), 8)]
    model = load_model(ROOT / "workflows/models/demo.safetensors", "cpu", "auto", registry)
    model.predict(batches[0])  # warm-up, as the pipeline's first batch also pays it
    t = time.perf_counter()
    for batch in batches:
        model.predict(batch)
    model_only = time.perf_counter() - t
    mpx = windows * 512 * 512 / 1e6
    return [
        ("demo slide", f"{w} × {h} px at 1 µm (level 1 of 0.5 µm), {windows} tissue windows "
                       f"of 512 px, overlap 64"),
        ("model only (same windows, in memory)", f"{windows / model_only:.2f} windows/s "
                                                 f"({mpx / model_only:.2f} Mpx/s)"),
        ("wfe run, compute phase", f"{windows / compute:.2f} windows/s"),
        ("wfe run, whole command", f"{wall:.1f} s wall (incl. start-up, model load, writing)"),
        ("ratio end-to-end / model-only (compute phase)", f"{model_only / compute:.3f}"),
        ("ratio end-to-end / model-only (whole command)", f"{model_only / wall:.3f}"),
    ]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"machine: {_machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = demo_throughput(Path(tmp))
    table = Table("measure", "value", title="wfe bench: demo throughput (measured in one run)")
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
