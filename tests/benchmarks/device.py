"""The model on a device: windows/s for each precision and memory layout, what each
precision costs in agreement with fp32, and ``wfe run`` against the model alone on that
device, all on the windows of one generated slide, side by side in one run.

``python -m tests.benchmarks.device [--device cuda|cpu] [--side N] [--turns N]`` prints
the table; ``make bench`` runs it on the CPU (fp32 and bf16: fp16 has no fast CPU
kernels), and a machine with a GPU runs it with ``--device cuda`` (fp32, fp16 and bf16;
docs/benchmarks.md, On a GPU, says how to take the packages there).

Each precision and layout is timed on the same batches, already on the device (the
model alone: normalisation, forward pass, softmax), and again from host memory as the
engine hands them over (upload of the uint8 pixels, the pass, download of the
probabilities). The precisions take turns, and each one's fastest turn counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.benchmarks.common import NO_MASK
from wfe.cores import cpu_name
from wfe_builtin.models.torch_thread import on_torch_thread

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "workflows/models/demo.safetensors"


def device_name(device: str) -> str:
    """The device in words: the GPU's name, or the CPU's model and core count."""
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"


def precisions(device: str) -> list[str]:
    """The precisions worth timing on ``device``: fp16 and bf16 autocast on a GPU (bf16
    where it is supported), bf16 on the CPU on request; fp32 everywhere."""
    import torch

    if device.startswith("cuda"):
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp32", "bf16"]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_on_device(model: Any, batches: list[Any]) -> float:
    """Seconds ``model`` takes over ``batches`` of raw pixels already on its device, on
    the torch thread, where the engine runs it (a second thread would make a second
    OpenMP team on the CPU: :mod:`wfe_builtin.models.torch_thread`)."""
    return on_torch_thread(_time_on_device, model, batches)


def _time_on_device(model: Any, batches: list[Any]) -> float:
    import torch

    with torch.inference_mode():
        _sync(model.device)
        start = time.perf_counter()
        for batch in batches:
            model._probabilities(batch, ())
        _sync(model.device)
    return time.perf_counter() - start


def time_from_host(model: Any, batches: list[np.ndarray]) -> float:
    """Seconds ``model.predict`` takes over host ``batches``: upload, pass, download."""
    start = time.perf_counter()
    for batch in batches:
        model.predict(batch)
    return time.perf_counter() - start


def labels_of(model: Any, batches: list[Any]) -> np.ndarray:
    """The most probable class of every pixel of ``batches`` (on the device), uint8."""
    return on_torch_thread(_labels_of, model, batches)


def _labels_of(model: Any, batches: list[Any]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([model._probabilities(b, ()).argmax(1).to(torch.uint8).cpu().numpy()
                               for b in batches])


def repeat_slide(src: Path, dst: Path, times: int) -> Path:
    """Write at ``dst`` the slide ``src`` repeated ``times`` × ``times`` at every level, its
    compressed tiles copied as they are: a slide many times larger in a fraction of a
    second (rendering one takes minutes), of the same real pixels. Each level's sides
    must be whole tiles (those of ``wfe sample`` at a power-of-two side are)."""
    import tifffile

    with tifffile.TiffFile(src) as tif, tifffile.TiffWriter(dst, bigtiff=True) as out:
        fh = tif.filehandle
        for n, level in enumerate(tif.series[0].levels):
            page = level.keyframe
            th, tw = page.tilelength, page.tilewidth
            rows, cols = page.imagelength // th, page.imagewidth // tw
            if (rows * th, cols * tw) != (page.imagelength, page.imagewidth):
                raise ValueError(f"{src}: level {n} is not made of whole tiles")

            def tiles(page: Any = page, rows: int = rows, cols: int = cols) -> Any:
                for r in range(rows * times):
                    for c in range(cols * times):
                        i = (r % rows) * cols + c % cols
                        fh.seek(page.dataoffsets[i])
                        yield fh.read(page.databytecounts[i])

            out.write(tiles(), shape=(rows * th * times, cols * tw * times, 3), dtype=np.uint8,
                      tile=(th, tw), photometric=page.photometric, compression=page.compression,
                      subsampling=page.subsampling, jpegtables=page.jpegtables,
                      resolution=(page.tags["XResolution"].value, page.tags["YResolution"].value),
                      resolutionunit=page.tags["ResolutionUnit"].value,
                      subfiletype=0 if n == 0 else 1,
                      description=page.description if n == 0 else None, metadata=None)
    return dst


def wfe_compute(slide: Path, workflow: Path, out: Path, device: str, precision: str,
                *settings: str) -> dict[str, Any]:
    """``wfe run`` of ``workflow`` on ``slide`` on ``device``: its record in run.json.
    ``settings``: more ``--set`` overrides (``seg.key=value``)."""
    done = subprocess.run([sys.executable, "-m", "wfe", "run", str(workflow), "-i", str(slide),
                           "-o", str(out), "--device", device,
                           *(a for kv in (f"seg.precision={precision}", *settings)
                             for a in ("--set", kv))], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"wfe run on {device} at {precision} failed ({done.returncode}):\n"
                 + (done.stdout + done.stderr)[-3000:])
    return json.loads((out / "run.json").read_text())["inputs"][str(slide)]


def run_labels(work: Path, slide: Path, workflow: Path, device: str,
               precision: str, *settings: str) -> np.ndarray:
    """The labels ``wfe run`` writes for ``slide`` on ``device`` at ``precision``, with
    more ``--set`` ``settings``."""
    from wfe.io import open_image
    from wfe.plugins import load_registry

    out = work / f"labels-{device}-{precision}-{len(settings)}"
    wfe_compute(slide, workflow, out, device, precision, *settings)
    labels = open_image(out / slide.stem / "labels.ome.zarr", load_registry())
    return labels.levels[0].compute()


def against_cpu(work: Path, workflow: Path, device: str) -> list[tuple[str, str]]:
    """``wfe run`` on ``device`` against ``wfe run`` on the CPU, both fp32 and the device
    at each of its precisions (and at fp32 with the CPU decoding the tiles, whose regions
    reach the device from pinned memory): the share of label pixels that agree, on a
    small slide (25 windows, so the CPU run takes seconds)."""
    slide = work / "check.tiff"
    subprocess.run([sys.executable, "-m", "wfe", "sample", str(slide), "--width", "4096",
                    "--height", "4096", "--seed", "3"], check=True, capture_output=True)
    reference = run_labels(work, slide, workflow, "cpu", "fp32")
    runs = [(p, ()) for p in precisions(device)]
    if device != "cpu":  # the regions decoded on the CPU and sent from pinned memory
        runs.append(("fp32", ("seg.decode_on_device=false",)))
    return [(f"wfe run on {device} at {p}{' (the CPU decodes)' if settings else ''} against "
             "the CPU at fp32 (2048² at 1 µm)",
             f"labels equal on "
             f"{np.mean(run_labels(work, slide, workflow, device, p, *settings) == reference):.4%}"
             " of pixels")
            for p, settings in runs]


class _Rows(list):
    """Rows that are also printed as each is measured: a run stopped at its time limit
    (as on a lent GPU machine) still shows what it measured."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"{row[0]}: {row[1]}", file=sys.stderr, flush=True)
        super().append(row)

    def __iadd__(self, rows: Any) -> _Rows:
        for row in rows:
            self.append(row)
        return self


def measure(work: Path, device: str, side: int, turns: int, repeat: int = 1,
            slide: Path | None = None) -> list[tuple[str, str]]:
    """The table's rows (see the module's docstring), on a ``side``² sample (0.5 µm, seed
    5; or ``slide``, such a sample already written) repeated ``repeat`` × ``repeat``."""
    import torch

    from tests.benchmarks.model_only import window_batches
    from wfe.grid import WindowGrid
    from wfe.io import open_image
    from wfe.plugins import load_registry
    from wfe.resolution import at_resolution
    from wfe_builtin.models.loader import load_model

    work.mkdir(parents=True, exist_ok=True)
    if slide is None:
        slide = work / f"device-{side}.tiff"
        subprocess.run([sys.executable, "-m", "wfe", "sample", str(slide), "--width", str(side),
                        "--height", str(side), "--seed", "5"], check=True, capture_output=True)
    if repeat > 1:
        slide = repeat_slide(slide, work / f"device-{side}x{repeat}.tiff", repeat)
    workflow = work / "device.yaml"
    workflow.write_text(NO_MASK.format(model=WEIGHTS))
    registry = load_registry()
    pixels = at_resolution(open_image(slide, registry), 1.0, "bench").levels[0].compute()
    grid = WindowGrid(*pixels.shape[1:], 512, 64)
    starts = [(y, x) for y in grid.ys for x in grid.xs]

    # The run first: the batch size and layout it chooses are the model alone's too.
    auto = "fp16" if device.startswith("cuda") else "fp32"
    first = wfe_compute(slide, workflow, work / "run-0", device, auto)
    seg = first["info"]["seg"]
    size = seg["batch_size"]
    host = window_batches(pixels, starts, size)
    on_device = [torch.from_numpy(b).to(device) for b in host]

    models = {(p, cl): load_model(WEIGHTS, device, p, registry, channels_last=cl)
              for p in precisions(device) for cl in (False, True)}
    for model in models.values():
        model.reuse_buffers(size)
        time_on_device(model, on_device[:2])  # first passes: kernels chosen, memory taken
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in models}
    for _ in range(turns):
        for key, model in models.items():
            times[key].append(time_on_device(model, on_device))
    reference = labels_of(models["fp32", False], on_device)
    rows = _Rows()
    rows += [("device", device_name(device)),
             ("image", f"{pixels.shape[2]} × {pixels.shape[1]} px at 1 µm, {len(starts)} windows "
                       f"of 512 px, overlap 64, batches of {size}")]
    for (p, cl), model in models.items():
        best = min(times[p, cl])
        agree = float(np.mean(labels_of(model, on_device) == reference))
        rows.append((f"model alone on the device, {p}, "
                     + ("channels-last" if cl else "contiguous"),
                     f"{len(starts) / best:.1f} windows/s "
                     f"({len(starts) * 512 * 512 / best / 1e6:.1f} Mpx/s); labels equal to "
                     f"fp32's on {agree:.4%} of pixels"))

    chosen = models[auto, bool(seg["channels_last"])]
    runs, alone, from_host, cpu_decoded, larger = [first], [], [], [], []
    for n in range(turns):
        alone.append(time_on_device(chosen, on_device))
        from_host.append(time_from_host(chosen, host))
        runs.append(wfe_compute(slide, workflow, work / f"run-{n + 1}", device, auto))
        if "decoded_on" in seg:  # the same run with the CPU decoding, beside it
            cpu_decoded.append(wfe_compute(slide, workflow, work / f"cpu-decoded-{n}", device,
                                           auto, "seg.decode_on_device=false"))
        if device != "cpu":  # regions of 81 windows rather than 25: fewer, fuller batches
            larger.append(wfe_compute(slide, workflow, work / f"chunk-4096-{n}", device, auto,
                                      "seg.chunk=4096"))
    compute = min(r["timings"]["compute"] for r in runs)
    decoded = f"tiles decoded on {seg['decoded_on']}" if "decoded_on" in seg else "CPU decodes"
    rows += [
        (f"wfe run ({auto}, channels-last {seg['channels_last']}, {decoded}), compute phase, "
         "each run (s)", " · ".join(f"{r['timings']['compute']:.2f}" for r in runs)),
        ("model alone, batches from host memory (upload, pass, download), each turn (s)",
         " · ".join(f"{t:.2f}" for t in from_host)),
        ("model alone, batches on the device, each turn (s)",
         " · ".join(f"{t:.2f}" for t in alone)),
        ("ratio wfe run / model alone on the device, compute phase",
         f"{min(alone) / compute:.3f}"),
        ("ratio wfe run / model alone from host memory, compute phase",
         f"{min(from_host) / compute:.3f}"),
    ]
    for what, records in (("the CPU decoding the tiles", cpu_decoded),
                          ("chunk 4096", larger)):
        if records:
            times = [r["timings"]["compute"] for r in records]
            rows += [(f"wfe run, {what}, compute phase, each run (s)",
                      " · ".join(f"{t:.2f}" for t in times)),
                     (f"ratio wfe run / model alone on the device, {what}",
                      f"{min(alone) / min(times):.3f}")]
    if device != "cpu":
        rows += against_cpu(work, workflow, device)
        rows += compiled_rows(slide, workflow, work, device, auto, compute)
    return rows


def compiled_rows(slide: Path, workflow: Path, work: Path, device: str, precision: str,
                  compute: float) -> list[tuple[str, str]]:
    """``wfe run`` with ``compile: true``, twice (the second finds inductor's cache): what
    compiling costs when the stage is built, and the compute phase against ``compute``
    (the same run uncompiled)."""
    runs = []
    for n in range(2):
        runs.append(wfe_compute(slide, workflow, work / f"compiled-{n}", device, precision,
                                "seg.compile=true"))
        print(f"compiled run {n}: {runs[-1]['timings']}", file=sys.stderr, flush=True)
    return [("wfe run, compile: true, building the stage (compiling) / compute phase, each "
             "run (s)", " · ".join(f"{r['timings']['build:seg']:.1f} / "
                                   f"{r['timings']['compute']:.2f}" for r in runs)),
            ("speed of wfe run compiled / not, compute phase",
             f"{compute / min(r['timings']['compute'] for r in runs):.3f}")]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from wfe.heap import fix_heap_thresholds, use_huge_pages

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--side", type=int, default=8192,
                        help="side of the generated slide at 0.5 µm (default 8192)")
    parser.add_argument("--repeat", type=int,
                        help="the slide repeated N × N (default: 6 on a GPU, 1 on the CPU)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    use_huge_pages()
    fix_heap_thresholds()
    with tempfile.TemporaryDirectory() as tmp:
        repeat = args.repeat or (1 if args.device == "cpu" else 6)
        rows = measure(Path(tmp), args.device, args.side, args.turns, repeat)
    table = Table("measure", "value", title="wfe bench: the model on a device")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
