"""OME-Zarr (NGFF) multiscale images, written chunk by chunk with ome-zarr-py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wfe.raster import Raster
from wfe.resample import downsample
from wfe.sink import Sink, TemporaryOutput

__all__ = ["OmeZarrWriter"]


MIN_CHUNK = 256


def pyramid(raster: Raster, chunk: int | None, labels: bool) -> list[Any]:
    """Level 0 and factor-2 reductions down to one chunk: mean for images, nearest for labels.

    By default each level keeps the chunks the data arrives in (halved from level
    to level), so no level needs pixels from its neighbours' chunks and memory
    stays bounded; chunks smaller than ``MIN_CHUNK`` are merged.
    """
    level0 = raster.levels[0]
    if chunk is not None:
        level0 = level0.rechunk((raster.shape[0], chunk, chunk))
    else:
        level0 = level0.rechunk((raster.shape[0], *(c[0] for c in level0.chunks[1:])))
    levels = [level0]
    while max(levels[-1].shape[1:]) > max(levels[-1].chunks[1][0], levels[-1].chunks[2][0]):
        nxt = downsample(levels[-1], 2, "nearest" if labels else "mean")
        size = max(MIN_CHUNK, min(c[0] for c in nxt.chunks[1:]))
        levels.append(nxt.rechunk((raster.shape[0], size, size)))
    return levels


class OmeZarrWriter:
    """Writes a Raster as an OME-Zarr image with a multiscale pyramid and its pixel size."""

    name = "ome-zarr"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False,
              chunk: int | None = None, **_: Any) -> Sink:
        import zarr
        from ome_zarr.writer import write_multiscale

        labels = "classes" in raster.attrs and raster.shape[0] == 1
        levels = pyramid(raster, chunk, labels)
        factors = [2.0**i for i in range(len(levels))]
        temp = TemporaryOutput(path, overwrite)
        group = zarr.open_group(str(temp.temp), mode="w")
        unit = "micrometer" if raster.pixel_size is not None else None
        axes = [{"name": "c", "type": "channel"},
                {"name": "y", "type": "space", **({"unit": unit} if unit else {})},
                {"name": "x", "type": "space", **({"unit": unit} if unit else {})}]
        base = float(raster.pixel_size[0]) if raster.pixel_size is not None else 1.0
        transforms = [[{"type": "scale", "scale": [1.0, base * f, base * f]}] for f in factors]
        work = write_multiscale(levels, group, axes=axes, coordinate_transformations=transforms,
                                storage_options=[{"chunks": lvl.chunksize} for lvl in levels],
                                name=Path(raster.attrs.get("source", "image")).name,
                                compute=False)
        group.attrs["wfe"] = {
            "channels": list(raster.channels),
            **{k: raster.attrs[k] for k in ("classes", "colors", "source") if k in raster.attrs},
            **({"crs": raster.crs, "transform": list(raster.transform)} if raster.crs else {}),
        }
        return Sink(path=path, work=list(work), finalize=temp.commit, abort=temp.discard)
