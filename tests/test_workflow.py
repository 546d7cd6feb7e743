"""Workflow validation: every problem, with file:line:col, stage id and a hint."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from wfe.errors import WorkflowError
from wfe.workflow import load_workflow

GOOD = """\
wfe: 1
name: t
stages:
  - id: image
    uses: read
    with: {mpp: 1.0}
  - id: seg
    uses: segment
    with:
      image: image
      model: MODEL
      overlap: 64
  - id: save
    uses: write
    with: {data: seg.labels, path: "{output}/labels.ome.zarr"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(text.replace("MODEL", str(ROOT / "workflows/models/demo.safetensors")))
    return path


def _problems(tmp_path: Path, text: str, registry, overrides=()) -> list[str]:
    with pytest.raises(WorkflowError) as err:
        load_workflow(_write(tmp_path, text), registry, list(overrides))
    return err.value.problems


def test_good_workflow_is_ordered_by_references(tmp_path, registry):
    wf = load_workflow(_write(tmp_path, GOOD), registry)
    assert [s.id for s in wf.stages] == ["image", "seg", "save"]
    assert wf.stages[1].refs == {"image": ("image", "image")}
    assert wf.stages[2].refs == {"data": ("seg", "labels")}


def test_misspelt_key_gives_position_and_suggestion(tmp_path, registry):
    problems = _problems(tmp_path, GOOD.replace("overlap: 64", "overlpa: 64"), registry)
    assert len(problems) == 1
    assert re.fullmatch(r".*wf\.yaml:12:7: stage seg: unknown key 'overlpa'; "
                        r"did you mean 'overlap'\?", problems[0]), problems[0]


def test_unknown_stage_suggests_the_closest(tmp_path, registry):
    problems = _problems(tmp_path, GOOD.replace("uses: segment", "uses: segmnet"), registry)
    assert any(":8:11: stage seg: unknown stage 'segmnet'; did you mean 'segment'?" in p
               for p in problems), problems


def test_all_problems_are_reported_together(tmp_path, registry):
    text = (GOOD.replace("overlap: 64", "overlap: lots")
            .replace("{data: seg.labels", "{data: seg.masks")
            .replace("{mpp: 1.0}", "{mpp: 1.0, colour: red}"))
    problems = _problems(tmp_path, text, registry)
    joined = "\n".join(problems)
    assert len(problems) == 3, joined
    assert ":6:" in joined and "stage image: unknown key 'colour'" in joined
    assert ":12:16: stage seg: overlap: Input should be a valid integer" in joined
    assert "stage save: data: stage 'seg' has no output 'masks'" in joined


def test_a_value_matching_no_type_of_a_union_is_one_line(tmp_path, registry):
    # batch_size is a number above 0 or "auto"; model a path or a list of paths.
    text = (GOOD.replace("overlap: 64", "overlap: 64\n      batch_size: 0")
            .replace("model: MODEL", "model: [MODEL, 7]"))
    problems = _problems(tmp_path, text, registry)
    joined = "\n".join(problems)
    assert [p for p in problems if "batch_size" in p] == [
        f"{tmp_path / 'wf.yaml'}:13:19: stage seg: batch_size: Input should be greater than 0, "
        "or input should be 'auto' (got 0)"], joined
    item = next(p for p in problems if "model.1" in p)  # points at the 7, not the list
    line, col = map(int, re.search(r":(\d+):(\d+): stage seg: model.1: Input should be a valid "
                                   r"string \(got 7\)$", item).groups())
    written = (tmp_path / "wf.yaml").read_text().splitlines()
    assert written[line - 1][col - 1] == "7", item
    assert "constrained" not in joined and "[str]" not in joined and "literal" not in joined


def test_unknown_reference_and_cycle(tmp_path, registry):
    text = GOOD.replace("image: image\n", "image: imgae\n")
    assert any("no stage with id 'imgae'; did you mean 'image'?" in p
               for p in _problems(tmp_path, text, registry))
    cyclic = textwrap.dedent("""\
        wfe: 1
        stages:
          - {id: a, uses: tissue_mask, with: {image: b}}
          - {id: b, uses: tissue_mask, with: {image: a}}
    """)
    problems = _problems(tmp_path, cyclic, registry)
    assert any("references form a cycle" in p for p in problems), problems


def test_set_overrides_and_its_errors(tmp_path, registry):
    wf = load_workflow(_write(tmp_path, GOOD), registry, ["seg.overlap=32", "seg.tta=[rot90]"])
    seg = next(s for s in wf.stages if s.id == "seg")
    assert seg.params.overlap == 32 and seg.params.tta == ["rot90"]
    problems = _problems(tmp_path, GOOD, registry, ["seg.overlap=many"])
    assert problems[0].startswith("--set seg.overlap=many: stage seg: overlap:"), problems
    problems = _problems(tmp_path, GOOD, registry, ["sge.overlap=3"])
    assert "no stage with id 'sge'; did you mean 'seg'?" in problems[0]


def test_yaml_syntax_error_has_a_position(tmp_path, registry):
    problems = _problems(tmp_path, GOOD.replace("with: {mpp: 1.0}", "with: {mpp: 1.0"), registry)
    assert re.match(r".*wf\.yaml:\d+:\d+: invalid YAML", problems[0]), problems


def test_missing_model_is_caught_before_any_pixel(tmp_path, registry):
    problems = _problems(tmp_path, GOOD.replace("MODEL", "nowhere/m.safetensors"), registry)
    assert any("stage seg: model:" in p and "not found" in p for p in problems)


def test_design_example_validates(registry):
    wf = load_workflow(ROOT / "workflows/slide-segmentation.yaml", registry)
    seg = next(s for s in wf.stages if s.id == "seg")
    assert seg.params.scales == [0.5, 2.0] and seg.params.tta == ["rot90"]


def test_cli_validate_exit_codes(tmp_path):
    bad = _write(tmp_path, GOOD.replace("overlap: 64", "overlpa: 64"))
    result = run_cli("validate", bad)
    assert result.code == 2
    assert "did you mean 'overlap'?" in result.stderr and "Traceback" not in result.stderr
    good = _write(tmp_path, GOOD)
    assert run_cli("validate", good).code == 0
