"""Peak memory stays flat as the image grows (read → mask → segment → write OME-Zarr).

The network is a one-layer stand-in contributed by a throw-away plugin, so the
figures measure the engine (reading, stitching, writing), not the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from safetensors.numpy import save_file

pytestmark = pytest.mark.slow

TINY_PLUGIN = """
from wfe import ArchitectureSpec, hookimpl

@hookimpl
def wfe_architectures():
    return [ArchitectureSpec("Tiny", "tiny_arch:build")]

def build(card):
    import torch
    return torch.nn.Conv2d(card.in_channels, len(card.classes), 1)
"""


def _peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS of one child process (MiB), measured with wait4's rusage."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    return usage.ru_maxrss / 1024


def test_peak_memory_is_flat_from_1x_to_4x_area(tmp_path):
    import numpy as np

    from wfe_builtin.synthetic import SyntheticSlide, write_slide

    site = tmp_path / "site"
    site.mkdir()
    (site / "tiny_arch.py").write_text(TINY_PLUGIN)
    info = site / "tiny_arch-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-arch\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[wfe]\ntiny_arch = tiny_arch\n")
    rng = np.random.default_rng(0)
    save_file({"weight": rng.normal(size=(3, 3, 1, 1)).astype(np.float32),
               "bias": np.zeros(3, np.float32)}, str(tmp_path / "tiny.safetensors"))
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent("""
        name: tiny
        architecture: Tiny
        encoder: none
        in_channels: 3
        classes: [background, tissue, nuclei]
        normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
        mpp: 0.5
        window: 512
    """))
    wf = tmp_path / "wf.yaml"
    wf.write_text(textwrap.dedent("""
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
    """))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    peaks = {}
    for scale, side in (("1x", 3072), ("4x", 6144)):
        slide = write_slide(SyntheticSlide(side, side, mpp=0.5, seed=1), tmp_path / f"{scale}.tiff")
        out = tmp_path / f"out-{scale}"
        peaks[scale] = _peak_rss_mib([sys.executable, "-m", "wfe", "run", str(wf), "-i", str(slide),
                                      "-o", str(out), "--workers", "2"], env)
        record = next(iter(json.loads((out / "run.json").read_text())["inputs"].values()))
        assert record["status"] == "done"
    growth = peaks["4x"] / peaks["1x"] - 1
    print(f"peak RSS: 1x {peaks['1x']:.0f} MiB, 4x {peaks['4x']:.0f} MiB, growth {growth:.1%}")
    assert growth < 0.15, peaks
