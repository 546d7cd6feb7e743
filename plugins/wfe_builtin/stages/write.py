"""``write``: hand an artifact to the writer of its format (the only place pixels are computed).

Before the writer sees it, a raster can be put on another grid of the source
(``mpp:`` / ``gsd:``): a segmentation run at 2 µm/px written at the slide's
0.25 µm/px covers exactly the slide's pixels. The path is checked before any
pixel is read: only known template fields, and nothing outside the output root.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from wfe.errors import WfeError
from wfe.raster import Raster
from wfe.resolution import on_grid
from wfe.stage import Ref, Stage, StageContext, StageParams

__all__ = ["WriteStage", "template_problems"]

#: Fields a write path may name.
TEMPLATE_FIELDS = ("output", "input", "input.stem", "input.name")


class WriteParams(StageParams):
    data: Ref = Field(description="What to write (a stage output).")
    path: str = Field(description="Where; {output}, {input.stem} and {input.name} are filled in. "
                                  "A path without {output} goes inside the input's output folder; "
                                  "it may not lead out of the output root.")
    format: str | None = Field(None, description="Writer format (ome-zarr, ome-tiff, cog, "
                                                 "geojson, png, csv); default: from the suffix.")
    overwrite: bool = Field(False, description="Replace an existing output.")
    mpp: float | None = Field(None, gt=0, description="Write a slide's result at this pixel size "
                                                      "(µm), on the source's grid; default: as is.")
    gsd: float | None = Field(None, gt=0, description="Write geodata at this ground sample "
                                                      "distance (CRS units), on the source's grid.")
    background: Ref | None = Field(None, description="Image drawn under labels (overlays).")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Passed to the writer (e.g. chunk, max_size).")

    @model_validator(mode="after")
    def _one_resolution(self) -> WriteParams:
        if self.mpp is not None and self.gsd is not None:
            raise ValueError("give mpp (slides) or gsd (geodata), not both")
        return self


def template_problems(template: str) -> list[str]:
    """What is wrong with a write path template, before any input is known."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return [f"path {template!r}: {exc}; write braces as {{{{ and }}}}"]
    problems = [f"path {template!r} names an unknown field {{{f}}}; use "
                + ", ".join("{" + k + "}" for k in TEMPLATE_FIELDS)
                for f in fields if f not in TEMPLATE_FIELDS]
    rest = template.replace("{output}", "", 1) if template.startswith("{output}") else template
    parts = Path(rest.lstrip("/\\")).parts
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            problems.append(f"path {template!r} leads out of the output folder; "
                            "write inside {output}")
            break
    return problems


def _writer_for(ctx: StageContext, fmt: str | None, path: Path) -> Any:
    if fmt:
        return ctx.registry.writer_for(fmt)
    if any(part.endswith(".zarr") for part in path.parent.parts):
        # Inside a Zarr store: NGFF labels of its image (``image.ome.zarr/labels/NAME``).
        return ctx.registry.writer_for("ome-zarr")
    name = path.name.lower()
    matches = [(len(s), c.spec) for c in ctx.registry.writers.values()
               for s in c.spec.suffixes if name.endswith(s)]
    if matches:
        return max(matches, key=lambda m: m[0])[1]
    raise WfeError(f"stage {ctx.stage_id}: no writer for {path.name!r}",
                   "give format: (one of " + ", ".join(sorted(ctx.registry.writers)) + ")")


class WriteStage(Stage):
    """Write ``data`` to ``path`` with the writer for ``format``."""

    name = "write"
    outputs = ()
    Params = WriteParams

    @staticmethod
    def check(params: Any, base: Path) -> list[str]:
        return template_problems(params.path)

    def run(self, ctx: StageContext, *, data: Any, background: Any = None,
            **_: Any) -> dict[str, Any]:
        p: WriteParams = self.params  # type: ignore[assignment]
        path = ctx.format_path(p.path)
        if "{output}" not in p.path and not path.is_absolute():
            path = ctx.output / path
        root = (ctx.root or ctx.output).resolve()
        if not path.resolve().is_relative_to(root):
            raise WfeError(f"stage {ctx.stage_id}: {path} is outside the output folder {root}",
                           "write inside {output}")
        size = p.mpp if p.mpp is not None else p.gsd
        if size is not None:
            if not isinstance(data, Raster):
                raise WfeError(f"stage {ctx.stage_id}: mpp/gsd apply to images, and "
                               f"{p.data} is not one", "drop mpp:/gsd: from this stage")
            if p.gsd is not None and data.crs is None:
                raise WfeError(f"stage {ctx.stage_id}: gsd: needs georeferenced data, and "
                               f"{p.data} has no CRS", "use mpp: for slides")
            if p.mpp is not None and data.pixel_size is None and data.crs is not None:
                raise WfeError(f"stage {ctx.stage_id}: mpp: is for slides; {p.data} is "
                               "georeferenced", "use gsd: (ground units per pixel) instead")
            data = on_grid(data, size, f"stage {ctx.stage_id}")
        spec = _writer_for(ctx, p.format, path)
        writer = spec.load()()
        options = dict(p.options)
        if background is not None:
            options["background"] = background
        ctx.add_sink(writer.write(data, path, overwrite=ctx.may_replace(path, p.overwrite),
                                  **options))
        return {}
