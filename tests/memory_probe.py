"""Peak RSS of ``wfe run`` (read → tissue mask → segment → write OME-Zarr) on a slide.

The network is a one-layer stand-in contributed by a throw-away plugin, so the
figures measure the engine (reading, stitching, writing), not the model. Used
by tests/test_memory.py and by ``make bench``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TINY_PLUGIN = """
from wfe import ArchitectureSpec, hookimpl

@hookimpl
def wfe_architectures():
    return [ArchitectureSpec("Tiny", "tiny_arch:build")]

def build(card):
    import torch
    return torch.nn.Conv2d(card.in_channels, len(card.classes), 1)
"""

WORKFLOW = """
wfe: 1
stages:
  - {id: image, uses: read, with: {mpp: 0.5}}
  - {id: tissue, uses: tissue_mask, with: {image: image, mpp: 8}}
  - id: seg
    uses: segment
    with: {image: image, mask: tissue, min_tissue: 0, model: tiny.safetensors,
           overlap: 64, chunk: 1024}
  - {id: save, uses: write, with: {data: seg.labels, path: "{output}/l.ome.zarr"}}
  - {id: probs, uses: write, with: {data: seg.probabilities, path: "{output}/p.ome.zarr"}}
"""


_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(proc.stderr.read().decode())
print(usage.ru_maxrss)
"""


def peak_rss_kib(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Peak RSS (KiB) of running ``cmd``, from ``wait4``'s rusage; raises on failure.

    A small parent forks the command: a child's peak RSS counts the pages it shared
    with its parent at fork time, so forking from a large process would inflate it.
    """
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return float(proc.stdout.strip().splitlines()[-1])


def _prepare(work: Path) -> tuple[Path, dict[str, str]]:
    import numpy as np
    from safetensors.numpy import save_file

    site = work / "site"
    if not site.exists():
        site.mkdir(parents=True)
        (site / "tiny_arch.py").write_text(TINY_PLUGIN)
        info = site / "tiny_arch-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-arch\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[wfe]\ntiny_arch = tiny_arch\n")
        rng = np.random.default_rng(0)
        save_file({"weight": rng.normal(size=(3, 3, 1, 1)).astype(np.float32),
                   "bias": np.zeros(3, np.float32)}, str(work / "tiny.safetensors"))
        (work / "tiny.yaml").write_text(textwrap.dedent("""
            name: tiny
            architecture: Tiny
            encoder: none
            in_channels: 3
            classes: [background, tissue, nuclei]
            normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
            mpp: 0.5
            window: 512
        """))
        (work / "wf.yaml").write_text(WORKFLOW)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return work / "wf.yaml", env


def peak_rss_mib(work: Path, side: int, seed: int = 1, cache: Path | None = None) -> float:
    """Peak RSS (MiB, from wait4's rusage) of one ``wfe run`` on a ``side × side`` slide,
    with wfe's cache folder ``cache`` (default: one of this size's own under ``work``).

    A run touches ahead the heap that the last run of its workflow left
    (:mod:`wfe.warm_start`): that must be a run of the same size, never a larger one.
    """
    from wfe_builtin.synthetic import SyntheticSlide, write_slide

    workflow, env = _prepare(work)
    slide = write_slide(SyntheticSlide(side, side, mpp=0.5, seed=seed), work / f"s{side}.tiff")
    out = work / f"out-{side}"
    cmd = [sys.executable, "-m", "wfe", "run", str(workflow), "-i", str(slide), "-o", str(out),
           "--workers", "2"]
    cache = cache or work / f"cache-{side}"
    peak = peak_rss_kib(cmd, {**env, "WFE_CACHE_DIR": str(cache)})
    record = next(iter(json.loads((out / "run.json").read_text())["inputs"].values()))
    if record["status"] != "done":
        raise RuntimeError(record["error"])
    slide.unlink()
    return peak / 1024
