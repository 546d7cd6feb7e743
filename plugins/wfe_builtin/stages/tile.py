"""``tile``: store an image as chunked OME-Zarr with a multiscale pyramid, and pass it on.

The stage's output is the pyramid being written (the same lazy chunks), so later
stages read what the Zarr holds without a second decode of the source; the
store keeps it for the next run and for viewers (napari, ome-zarr).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from wfe.raster import Raster
from wfe.stage import Ref, Stage, StageContext, StageParams

__all__ = ["TileStage"]


class TileParams(StageParams):
    image: Ref = Field(description="The image to tile (e.g. read at the mpp/gsd wanted).")
    path: str = Field("image.ome.zarr", description="Where to write; relative paths go in the "
                                                    "input's output folder.")
    chunk: int = Field(512, ge=16, description="Chunk size in pixels (y and x).")
    compressor: Literal["zstd", "blosc-lz4", "none"] = Field("zstd", description="Codec.")
    compression_level: int | None = Field(None, ge=0, le=22,
                                          description="Codec level; default: zstd 1, lz4 5.")
    shard: int | None = Field(None, gt=0, description="Zarr v3 shard size in pixels (a "
                                                      "multiple of chunk); one file per shard.")
    overwrite: bool = Field(False, description="Replace an existing store.")

    @model_validator(mode="after")
    def _shard_multiple(self) -> TileParams:
        if self.shard is not None and self.shard % self.chunk:
            raise ValueError(f"shard {self.shard} must be a multiple of chunk {self.chunk}")
        return self


class TileStage(Stage):
    """Write ``image`` as OME-Zarr (pyramid, chunking, compressor, sharding) and output it."""

    name = "tile"
    outputs = ("image",)
    Params = TileParams

    def run(self, ctx: StageContext, *, image: Raster, **_: Any) -> dict[str, Any]:
        from wfe_builtin.writers.ome_zarr import WRITE_BLOCK, OmeZarrWriter, pyramid_raster

        p: TileParams = self.params  # type: ignore[assignment]
        path = ctx.format_path(p.path)
        if "{output}" not in p.path and not path.is_absolute():
            path = ctx.output / path
        tiled = pyramid_raster(image, p.chunk, p.shard or WRITE_BLOCK)
        ctx.add_sink(OmeZarrWriter().write(tiled, path,
                                           overwrite=ctx.may_replace(path, p.overwrite),
                                           chunk=p.chunk,
                                           compressor=p.compressor,
                                           compression_level=p.compression_level,
                                           shard=p.shard, is_pyramid=True))
        ctx.record("levels", len(tiled.levels))
        ctx.record("chunk", p.chunk)
        return {"image": tiled}
