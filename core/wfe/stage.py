"""The Stage base class, stage references, and the context a stage runs in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from wfe.checkpoint import Checkpoints, KeptArray
from wfe.errors import WfeError
from wfe.plugins import Registry
from wfe.raster import Raster
from wfe.sink import Sink

__all__ = ["InputFields", "Ref", "Stage", "StageContext", "StageParams", "ref_fields"]


class _RefMarker:
    """Marks a parameter whose value names another stage's output (``id`` or ``id.output``)."""

    def __repr__(self) -> str:
        return "Ref"


#: Type of a stage parameter that names another stage's output.
Ref = Annotated[str, _RefMarker()]


class StageParams(BaseModel):
    """Base of every stage's ``Params``: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _is_ref(annotation: Any) -> bool:
    if get_origin(annotation) is Annotated:
        return any(isinstance(a, _RefMarker) for a in get_args(annotation)[1:])
    return any(_is_ref(a) for a in get_args(annotation))


def ref_fields(params: type[BaseModel]) -> list[str]:
    """Names of the ``Params`` fields typed :data:`Ref` (or ``Ref | None``)."""
    out = []
    for name, info in params.model_fields.items():
        if any(isinstance(m, _RefMarker) for m in info.metadata) or _is_ref(info.annotation):
            out.append(name)
    return out


class Stage:
    """A step of a workflow.

    Subclasses set ``name`` (what ``uses:`` says), ``outputs`` (the names of
    what ``run`` returns; the first is the default when a reference names only
    the stage id) and ``Params`` (a :class:`StageParams` model: the stage's YAML
    schema). ``run`` receives the artifacts named by the ``Ref`` fields as
    keyword arguments and must stay lazy: return dask-backed artifacts, and hand
    anything that must be computed to ``ctx.add_sink``.
    """

    name: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[StageParams]] = StageParams

    def __init__(self, params: StageParams) -> None:
        self.params = params

    @staticmethod
    def check(params: Any, base: Path) -> list[str]:
        """Problems visible before any pixel is read (e.g. a model file that does not
        exist), one message each; ``base`` is the workflow file's folder. None by default."""
        return []

    def run(self, ctx: StageContext, **inputs: Any) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class StageContext:
    """What a running stage may use: the current input, paths, plugins, sinks.

    One context exists per input; ``stage_id`` changes as the runner moves
    from stage to stage.
    """

    input: Path
    output: Path
    workflow_dir: Path
    registry: Registry
    device: str = "auto"
    #: The output root of the whole run (run.json's folder); outputs may not leave it.
    root: Path | None = None
    stage_id: str = ""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("wfe"))
    sinks: list[Sink] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    #: Existing outputs that may be replaced without ``overwrite``: those an earlier run
    #: of this input wrote and nobody has changed since (:mod:`wfe.ledger`).
    replaceable: frozenset[Path] = frozenset()
    #: Where the input's chunk checkpoints go (:mod:`wfe.checkpoint`); ``None``: none kept.
    checkpoints: Checkpoints | None = None
    #: The current stage's outputs that later stages read (``None``: not known, all).
    used: frozenset[str] | None = None

    def uses(self, output: str) -> bool:
        """Whether a later stage reads the current stage's ``output`` (what is never read
        need not be computed, nor kept)."""
        return self.used is None or output in self.used

    def kept(self, name: str, chunks: tuple[tuple[int, ...], ...],
             dtype: Any) -> KeptArray | None:
        """The checkpoint of the current stage's result ``name`` (a dask array of
        ``chunks`` and ``dtype``), or ``None`` when this run keeps none: see
        :class:`wfe.checkpoint.KeptArray`."""
        if self.checkpoints is None:
            return None
        return self.checkpoints.array(self.stage_id, name, chunks, dtype)

    def may_replace(self, path: Path, overwrite: bool) -> bool:
        """Whether a writer may replace an existing ``path``: ``overwrite`` was asked
        for, or an earlier run of this input wrote it."""
        return overwrite or path.resolve() in self.replaceable

    def resolve(self, path: str | Path) -> Path:
        """A path from the workflow, relative to the workflow file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.workflow_dir / p

    def format_path(self, template: str) -> Path:
        """Fill ``{output}``, ``{input.stem}``, ``{input.name}`` in an output path."""
        values = {"output": str(self.output), "input": InputFields(self.input)}
        try:
            text = template.format(**values)
        except (KeyError, AttributeError) as exc:
            raise WfeError(
                f"stage {self.stage_id}: path {template!r} names an unknown field {exc}",
                "use {output}, {input.stem} or {input.name}",
            ) from None
        return Path(text)

    def open_image(self, path: str | Path, reader: str | None = None, **opts: Any) -> Raster:
        """Open an image with the reader that accepts it (or the one named)."""
        from wfe.io import open_image

        return open_image(Path(path), self.registry, reader=reader, **opts)

    def add_sink(self, sink: Sink) -> None:
        """Register lazy output work; the runner computes all sinks of an input together."""
        sink.stage = self.stage_id
        self.sinks.append(sink)

    def record(self, key: str, value: Any) -> None:
        """Keep a figure for run.json under this stage's id (e.g. the fraction skipped)."""
        self.info.setdefault(self.stage_id, {})[key] = value


class InputFields:
    """What ``{input.stem}``, ``{input.name}`` and ``{input}`` stand for in a path template."""

    def __init__(self, path: Path) -> None:
        self.stem = path.name.split(".")[0] if path.name else path.stem
        self.name = path.name
        self.path = str(path)

    def __format__(self, spec: str) -> str:
        return self.path
