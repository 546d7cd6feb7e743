"""Plugin discovery: entry points, duplicates, broken plugins, laziness."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from conftest import run_cli
from wfe import StageSpec, hookimpl
from wfe.errors import PluginError
from wfe.plugins import load_registry


def test_builtins_come_through_the_entry_point(registry):
    builtin = next(p for p in registry.plugins if p.name == "wfe")
    assert builtin.module == "wfe_builtin"
    assert {"read", "tissue_mask", "segment", "write"} <= set(builtin.contributions["stages"])
    assert {"tiff", "openslide"} <= set(builtin.contributions["readers"])
    assert "Unet" in builtin.contributions["architectures"]
    assert "wfe_stages" in builtin.hooks


def test_plugins_json_lists_versions_and_contributions():
    result = run_cli("plugins", "--json")
    assert result.code == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["wfe"]["version"] == "0.1.0"
    assert "ome-zarr" in plugins["wfe"]["contributions"]["writers"]


def _plugin(stage_name: str) -> types.ModuleType:
    mod = types.ModuleType(f"fake_{stage_name}")

    @hookimpl
    def wfe_stages():
        return [StageSpec(stage_name, "wfe_builtin.stages.read:ReadStage")]

    mod.wfe_stages = wfe_stages
    return mod


def test_duplicate_stage_names_name_both_plugins():
    with pytest.raises(PluginError) as err:
        load_registry(autoload=False, extra_plugins=[("acme-seg", _plugin("segment"))])
    assert "'wfe'" in str(err.value) and "'acme-seg'" in str(err.value)
    assert "segment" in str(err.value)


def _fake_distribution(site: Path, name: str, module_source: str) -> None:
    """An installed distribution with a wfe entry point, as pip would leave it."""
    module = name.replace("-", "_")
    (site / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = site / f"{module}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[wfe]\n{module} = {module}\n")


def _registry_in_subprocess(site: Path, env_extra: str = "") -> dict:
    code = textwrap.dedent(f"""
        import json, sys, warnings
        sys.path.insert(0, {str(site)!r})
        {env_extra}
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            from wfe.plugins import load_registry
            r = load_registry()
        print(json.dumps({{"plugins": [p.name for p in r.plugins], "stages": sorted(r.stages),
                          "warnings": [str(x.message) for x in w], "failures": r.failures}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_third_party_distribution_is_discovered(tmp_path):
    _fake_distribution(tmp_path, "acme-stage", """
        from wfe import StageSpec, hookimpl
        @hookimpl
        def wfe_stages():
            return [StageSpec("acme", "wfe_builtin.stages.read:ReadStage", "an acme stage")]
    """)
    seen = _registry_in_subprocess(tmp_path)
    assert "acme-stage" in seen["plugins"] and "acme" in seen["stages"]
    off = _registry_in_subprocess(
        tmp_path, "import os; os.environ['WFE_DISABLE_PLUGIN_AUTOLOAD'] = '1'")
    assert "acme-stage" not in off["plugins"] and "read" in off["stages"]


def test_broken_plugin_warns_and_the_rest_works(tmp_path):
    _fake_distribution(tmp_path, "broken-plugin", "raise ImportError('needs libfoo')\n")
    seen = _registry_in_subprocess(tmp_path)
    assert any("broken-plugin" in w and "libfoo" in w for w in seen["warnings"])
    assert "broken-plugin" in seen["failures"]
    assert {"read", "segment", "write"} <= set(seen["stages"])


def test_listing_and_validating_import_no_heavy_library(tmp_path):
    """`wfe plugins` and `wfe validate` must not import torch, smp or OpenSlide."""
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"")
    (tmp_path / "m.yaml").write_text(
        "name: m\narchitecture: Unet\nencoder: resnet18\nin_channels: 3\nclasses: [a, b]\n"
        "normalize: {mean: [0, 0, 0], std: [1, 1, 1]}\nmpp: 1.0\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text(textwrap.dedent("""
        wfe: 1
        stages:
          - {id: image, uses: read, with: {mpp: 1.0}}
          - {id: seg, uses: segment, with: {image: image, model: m.safetensors}}
          - {id: out, uses: write, with: {data: seg.labels, path: x.ome.zarr}}
    """))
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from wfe.cli import app
        r = CliRunner().invoke(app, ["plugins"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(app, ["validate", {str(wf)!r}])
        assert r.exit_code == 0, r.output
        heavy = {{"torch", "segmentation_models_pytorch", "openslide", "timm"}}
        print(sorted(heavy & set(sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
