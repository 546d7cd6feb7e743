"""Workflow files: YAML in, a validated :class:`Workflow` out.

The whole file is checked before any pixel is read, and every problem is
reported, each as ``file:line:col: stage <id>: message`` with the closest
valid name where one was misspelt. YAML is parsed with ruamel.yaml's safe
round-trip loader, which keeps the line and column of every key and value.
"""

from __future__ import annotations

import difflib
import graphlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from wfe.errors import PluginError, WorkflowError
from wfe.plugins import Registry
from wfe.stage import Stage, StageParams, ref_fields

__all__ = ["StageNode", "Workflow", "load_workflow", "parse_override"]

DEFAULT_OUTPUT = "results/{input.stem}"


class _StageDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str
    uses: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class _WorkflowDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wfe: Literal[1]
    name: str = ""
    description: str = ""
    inputs: list[str] = Field(default_factory=list)
    output: str = DEFAULT_OUTPUT
    stages: list[_StageDoc] = Field(min_length=1)


@dataclass
class StageNode:
    """One validated stage: its class, its parameters and what it reads."""

    id: str
    uses: str
    stage_class: type[Stage]
    params: StageParams
    refs: dict[str, tuple[str, str]] = field(default_factory=dict)  # param -> (stage id, output)

    def build(self) -> Stage:
        return self.stage_class(self.params)


@dataclass
class Workflow:
    """A validated workflow; ``stages`` are in an order that respects references."""

    path: Path
    name: str
    inputs: list[str]
    output: str
    stages: list[StageNode]

    @property
    def directory(self) -> Path:
        return self.path.parent

    def parameters(self) -> list[list[Any]]:
        """Every stage's id, ``uses`` and parameters, as JSON values: what the run's
        results depend on in the workflow itself."""
        return [[node.id, node.uses, node.params.model_dump(mode="json")]
                for node in self.stages]


def parse_override(text: str) -> tuple[str, str, Any]:
    """``stage.key=value`` -> ``(stage, key, value)``, the value parsed as YAML."""
    target, sep, raw = text.partition("=")
    stage_id, dot, key = target.strip().partition(".")
    if not sep or not dot or not stage_id or not key:
        raise WorkflowError([f"--set {text!r}: expected STAGE.KEY=VALUE, e.g. seg.overlap=32"])
    value = YAML(typ="safe", pure=True).load(raw) if raw.strip() else ""
    return stage_id, key, value


class _Locator:
    """Turns a path of keys/indices into ``file:line:col`` using ruamel's marks."""

    def __init__(self, path: Path, doc: Any, overridden: dict[tuple[str, str], str]) -> None:
        self.path = path
        self.doc = doc
        self.overridden = overridden

    def at(self, loc: tuple[Any, ...], key: bool = False) -> str:
        node, line, col = self.doc, 0, 0
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            try:
                if isinstance(node, dict) and part in node:
                    line, col = node.lc.key(part) if (key and last) else node.lc.value(part)
                    node = node[part]
                elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                    line, col = node.lc.item(part)
                    node = node[part]
                else:
                    if hasattr(node, "lc"):
                        line, col = node.lc.line, node.lc.col
                    break
            except (AttributeError, KeyError, TypeError):
                break
        return f"{self.path}:{line + 1}:{col + 1}"

    def stage_at(self, index: int, stage_id: str, loc: tuple[Any, ...], key: bool = False) -> str:
        if len(loc) >= 1 and (stage_id, str(loc[0])) in self.overridden:
            return f"--set {self.overridden[(stage_id, str(loc[0]))]}"
        return self.at(("stages", index, "with", *loc), key=key)


def _closest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_branch(part: Any) -> bool:
    """Whether a location part names a branch of a union type, not a key or an index."""
    return isinstance(part, str) and ("[" in part or part.startswith("constrained-")
                                      or part in ("int", "float", "str", "bool"))


def _union_merged(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors with union branch names taken out of their locations, and one error
    per location: for a value that matched no branch of its type's union, pydantic
    reports one error per branch, at a location naming the branch (``constrained-int``,
    ``literal['auto']``, ``list[str]``), which means nothing to a user."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        keyed = err["type"] in ("extra_forbidden", "missing")  # the location is a user's key
        loc = tuple(err["loc"]) if keyed else tuple(p for p in err["loc"] if not _is_branch(p))
        if loc in merged and loc != tuple(err["loc"]):
            merged[loc]["msg"] += f", or {err['msg'][0].lower()}{err['msg'][1:]}"
        else:
            merged.setdefault(loc, {**err, "loc": loc})
    return list(merged.values())


def _describe(err: dict[str, Any], fields: list[str]) -> tuple[str, bool]:
    """A message for one pydantic error, and whether it points at a key."""
    loc = err["loc"]
    where = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        return f"unknown key {str(loc[-1])!r}{_closest(loc[-1], fields)}", True
    if err["type"] == "missing":
        return f"missing required key {where!r}", True
    got = err.get("input")
    got_text = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
    return f"{where}: {err['msg']}{got_text}", False


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise WorkflowError([f"{path}: no such workflow file"])
    yaml = YAML(typ="rt")
    try:
        return yaml.load(path.read_text(encoding="utf-8"))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise WorkflowError([f"{pos}: invalid YAML: {exc.problem or exc.context}"]) from None


def load_workflow(path: str | Path, registry: Registry, overrides: list[str] = ()) -> Workflow:
    """Read, override and validate a workflow; raise :class:`WorkflowError` listing every problem."""
    path = Path(path)
    doc = _read_yaml(path)
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise WorkflowError([f"{path}:1:1: a workflow is a mapping with keys wfe, stages, ..."])

    overridden: dict[tuple[str, str], str] = {}
    stage_docs = doc.get("stages") if isinstance(doc.get("stages"), list) else []
    for text in overrides:
        stage_id, key, value = parse_override(text)
        matches = [s for s in stage_docs if isinstance(s, dict) and s.get("id") == stage_id]
        if not matches:
            ids = [s.get("id") for s in stage_docs if isinstance(s, dict)]
            problems.append(f"--set {text}: no stage with id {stage_id!r}{_closest(stage_id, ids)}")
            continue
        matches[0].setdefault("with", {})[key] = value
        overridden[(stage_id, key)] = text
    loc = _Locator(path, doc, overridden)

    try:
        wf = _WorkflowDoc.model_validate(doc)
    except ValidationError as exc:
        for err in _union_merged(exc.errors()):
            fields = list(_WorkflowDoc.model_fields) if len(err["loc"]) == 1 else ["id", "uses", "with"]
            message, is_key = _describe(err, fields)
            problems.append(f"{loc.at(err['loc'], key=is_key)}: {message}")
        raise WorkflowError(problems) from None

    nodes: dict[str, StageNode] = {}
    classes: dict[str, type[Stage]] = {}
    raw_refs: dict[str, list[tuple[int, str, str]]] = {}
    for index, sd in enumerate(wf.stages):
        prefix = f"stage {sd.id}"
        if sd.id in nodes or sd.id in raw_refs:
            problems.append(f"{loc.at(('stages', index, 'id'))}: {prefix}: id used twice")
            continue
        try:
            stage_class: type[Stage] = registry.stage(sd.uses).load()
        except PluginError as exc:
            problems.append(f"{loc.at(('stages', index, 'uses'))}: {prefix}: {exc.line()}")
            raw_refs[sd.id] = []
            continue
        classes[sd.id] = stage_class
        params_model = stage_class.Params
        refs = ref_fields(params_model)
        try:
            params = params_model.model_validate(sd.with_)
        except ValidationError as exc:
            for err in _union_merged(exc.errors()):
                message, is_key = _describe(err, list(params_model.model_fields))
                problems.append(f"{loc.stage_at(index, sd.id, err['loc'], is_key)}: {prefix}: {message}")
            raw_refs[sd.id] = []
            continue
        for message in stage_class.check(params, path.parent):
            problems.append(f"{loc.at(('stages', index, 'with'))}: {prefix}: {message}")
        raw_refs[sd.id] = [(index, f, getattr(params, f)) for f in refs
                           if getattr(params, f) is not None]
        nodes[sd.id] = StageNode(sd.id, sd.uses, stage_class, params)

    graph: dict[str, set[str]] = {}
    all_ids = list(raw_refs)
    for stage_id, refs in raw_refs.items():
        graph[stage_id] = set()
        for index, fname, value in refs:
            target, _, output = str(value).partition(".")
            where = loc.stage_at(index, stage_id, (fname,))
            if target not in raw_refs:
                problems.append(f"{where}: stage {stage_id}: {fname}: no stage with id "
                                f"{target!r}{_closest(target, all_ids)}")
                continue
            graph[stage_id].add(target)
            if target in classes:
                outs = classes[target].outputs
                if output and output not in outs:
                    problems.append(f"{where}: stage {stage_id}: {fname}: stage {target!r} has no "
                                    f"output {output!r}{_closest(output, outs)} (it has "
                                    f"{', '.join(outs) or 'none'})")
                    continue
                if not outs:
                    problems.append(f"{where}: stage {stage_id}: {fname}: stage {target!r} "
                                    "produces nothing to read")
                    continue
                if stage_id in nodes:
                    nodes[stage_id].refs[fname] = (target, output or outs[0])
    order: list[str] = []
    position = {s.id: i for i, s in enumerate(wf.stages)}
    try:
        sorter = graphlib.TopologicalSorter(graph)
        sorter.prepare()
        while sorter.is_active():  # file order among stages that are ready together
            ready = sorted(sorter.get_ready(), key=lambda i: position.get(i, 0))
            order.extend(ready)
            sorter.done(*ready)
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        first = exc.args[1][0]
        index = next(i for i, s in enumerate(wf.stages) if s.id == first)
        problems.append(f"{loc.at(('stages', index, 'id'))}: stage {first}: "
                        f"references form a cycle: {cycle}")
    if problems:
        raise WorkflowError(problems)
    return Workflow(path=path, name=wf.name or path.stem, inputs=list(wf.inputs),
                    output=wf.output, stages=[nodes[i] for i in order])
