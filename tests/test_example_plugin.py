"""The example third-party plugin, pip-installed into the environment as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, ome_zarr_level, run_cli

PLUGIN = ROOT / "docs" / "example-plugin"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed_plugin():
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(PLUGIN)],
                   check=True, capture_output=True)
    yield
    subprocess.run([*pip, "uninstall", "-y", "wfe-gamma"], check=True, capture_output=True)


def test_plugin_is_listed(installed_plugin):
    result = run_cli("plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["wfe-gamma"]["version"] == "0.1.0"
    assert plugins["wfe-gamma"]["contributions"] == {"stages": ["gamma"]}
    assert "gamma" in run_cli("stages").stdout


def test_plugin_stage_runs_in_a_workflow(installed_plugin, sample_slide, tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text("""
wfe: 1
stages:
  - {id: image, uses: read, with: {mpp: 4.0}}
  - {id: dark, uses: gamma, with: {image: image, gamma: 2.0}}
  - {id: save, uses: write, with: {data: dark, path: "{output}/dark.ome.zarr"}}
  - {id: orig, uses: write, with: {data: image, path: "{output}/orig.ome.zarr"}}
""")
    result = run_cli("run", wf, "-i", sample_slide, "-o", tmp_path / "out")
    assert result.code == 0, result.stderr
    dark = ome_zarr_level(tmp_path / "out/slide/dark.ome.zarr")
    orig = ome_zarr_level(tmp_path / "out/slide/orig.ome.zarr")
    expected = np.rint(255 * (orig / 255.0) ** 2.0)
    assert np.abs(dark.astype(float) - expected).max() <= 1
    assert dark.mean() < orig.mean() - 10
