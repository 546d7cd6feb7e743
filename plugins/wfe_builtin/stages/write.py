"""``write``: hand an artifact to the writer of its format (the only place pixels are computed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from wfe.errors import WfeError
from wfe.stage import Ref, Stage, StageContext, StageParams

__all__ = ["WriteStage"]


class WriteParams(StageParams):
    data: Ref = Field(description="What to write (a stage output).")
    path: str = Field(description="Where; {output}, {input.stem} and {input.name} are filled in. "
                                  "A path without {output} goes inside the input's output folder.")
    format: str | None = Field(None, description="Writer format; default: from the path suffix.")
    overwrite: bool = Field(False, description="Replace an existing output.")
    background: Ref | None = Field(None, description="Image drawn under labels (overlays).")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Passed to the writer (e.g. chunk, max_size).")


def _writer_for(ctx: StageContext, fmt: str | None, path: Path) -> Any:
    if fmt:
        return ctx.registry.writer_for(fmt)
    name = path.name.lower()
    for c in ctx.registry.writers.values():
        if any(name.endswith(s) for s in c.spec.suffixes):
            return c.spec
    raise WfeError(f"stage {ctx.stage_id}: no writer for {path.name!r}",
                   "give format: (one of " + ", ".join(sorted(ctx.registry.writers)) + ")")


class WriteStage(Stage):
    """Write ``data`` to ``path`` with the writer for ``format``."""

    name = "write"
    outputs = ()
    Params = WriteParams

    def run(self, ctx: StageContext, *, data: Any, background: Any = None,
            **_: Any) -> dict[str, Any]:
        p: WriteParams = self.params  # type: ignore[assignment]
        path = ctx.format_path(p.path)
        if "{output}" not in p.path and not path.is_absolute():
            path = ctx.output / path
        spec = _writer_for(ctx, p.format, path)
        writer = spec.load()()
        options = dict(p.options)
        if background is not None:
            options["background"] = background
        ctx.add_sink(writer.write(data, path, overwrite=p.overwrite, **options))
        return {}
