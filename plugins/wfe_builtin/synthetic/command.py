"""``wfe sample``: write a synthetic slide, or a synthetic satellite scene."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sample(
    path: Annotated[Path, typer.Argument(help="Where to write it (.tiff / .tif).")],
    width: Annotated[int | None, typer.Option(help="Level-0 width in pixels.")] = None,
    height: Annotated[int | None, typer.Option(help="Level-0 height in pixels.")] = None,
    mpp: Annotated[float, typer.Option(help="Level-0 pixel size of a slide in µm.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Same seed, same image.")] = 0,
    tissue: Annotated[float | None, typer.Option(
        min=0.01, max=0.8, help="Slide: about this fraction covered by tissue (default: "
                                 "about a quarter).")] = None,
    scene: Annotated[bool, typer.Option("--scene", help="A 4-band GeoTIFF scene (10 m, UTM "
                                                        "33N) instead of a slide.")] = False,
    cog: Annotated[bool, typer.Option("--cog", help="With --scene: a Cloud-Optimised "
                                                    "GeoTIFF.")] = False,
) -> None:
    """Write a deterministic synthetic H&E-like slide (pyramidal tiled JPEG TIFF) or scene."""
    if scene:
        from wfe_builtin.synthetic.scene import SyntheticScene, write_scene

        w, h = width or 2048, height or 2048
        write_scene(path, SyntheticScene(w, h, seed=seed), cog=cog)
        typer.echo(f"wrote {path} ({w} × {h} px at 10 m, EPSG:32633, 4 bands, seed {seed})")
        return
    from wfe_builtin.synthetic.slide import SyntheticSlide, write_slide

    w, h = width or 6144, height or 4096
    write_slide(SyntheticSlide(w, h, mpp=mpp, seed=seed, tissue=tissue), path)
    typer.echo(f"wrote {path} ({w} × {h} px at {mpp} µm/px, seed {seed})")
