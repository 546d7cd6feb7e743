"""OME-Zarr (NGFF) multiscale images, written chunk by chunk with ome-zarr-py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wfe.raster import Raster
from wfe.resample import downsample
from wfe.sink import Sink, TemporaryOutput

__all__ = ["OmeZarrWriter"]


def pyramid(raster: Raster, chunk: int, labels: bool) -> tuple[list[Any], list[float] | None]:
    """Level 0 and factor-2 reductions down to one chunk: mean for images, nearest for labels."""
    levels = [raster.levels[0].rechunk((raster.shape[0], chunk, chunk))]
    sizes = None if raster.pixel_size is None else [float(raster.pixel_size[0])]
    while max(levels[-1].shape[1:]) > chunk:
        nxt = downsample(levels[-1], 2, "nearest" if labels else "mean")
        levels.append(nxt.rechunk((raster.shape[0], chunk, chunk)))
        if sizes is not None:
            sizes.append(sizes[-1] * 2)
    return levels, sizes


class OmeZarrWriter:
    """Writes a Raster as an OME-Zarr image with a multiscale pyramid and its pixel size."""

    name = "ome-zarr"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False, chunk: int = 1024,
              **_: Any) -> Sink:
        import zarr
        from ome_zarr.writer import write_multiscale

        labels = "classes" in raster.attrs and raster.shape[0] == 1
        levels, sizes = pyramid(raster, chunk, labels)
        temp = TemporaryOutput(path, overwrite)
        group = zarr.open_group(str(temp.temp), mode="w")
        unit = "micrometer" if sizes is not None else None
        axes = [{"name": "c", "type": "channel"},
                {"name": "y", "type": "space", **({"unit": unit} if unit else {})},
                {"name": "x", "type": "space", **({"unit": unit} if unit else {})}]
        widths = [lvl.shape[2] for lvl in levels]
        transforms = [[{"type": "scale",
                        "scale": [1.0, *(2 * [sizes[i] if sizes else widths[0] / widths[i]])]}]
                      for i in range(len(levels))]
        work = write_multiscale(levels, group, axes=axes, coordinate_transformations=transforms,
                                storage_options={"chunks": (raster.shape[0], chunk, chunk)},
                                name=Path(raster.attrs.get("source", "image")).name,
                                compute=False)
        group.attrs["wfe"] = {
            "channels": list(raster.channels),
            **{k: raster.attrs[k] for k in ("classes", "colors", "source") if k in raster.attrs},
            **({"crs": raster.crs, "transform": list(raster.transform)} if raster.crs else {}),
        }
        return Sink(path=path, work=list(work), finalize=temp.commit, abort=temp.discard)
