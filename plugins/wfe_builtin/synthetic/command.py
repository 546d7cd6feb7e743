"""``wfe sample``: write a synthetic slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sample(
    path: Annotated[Path, typer.Argument(help="Where to write the slide (.tiff).")],
    width: Annotated[int, typer.Option(help="Level-0 width in pixels.")] = 6144,
    height: Annotated[int, typer.Option(help="Level-0 height in pixels.")] = 4096,
    mpp: Annotated[float, typer.Option(help="Level-0 pixel size in µm.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Same seed, same slide.")] = 0,
) -> None:
    """Write a deterministic synthetic H&E-like slide (pyramidal tiled JPEG TIFF)."""
    from wfe_builtin.synthetic.slide import SyntheticSlide, write_slide

    slide = SyntheticSlide(width, height, mpp=mpp, seed=seed)
    write_slide(slide, path)
    typer.echo(f"wrote {path} ({width} × {height} px at {mpp} µm/px, seed {seed})")
