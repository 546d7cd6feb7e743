"""OME-Zarr (NGFF 0.5, Zarr v3) multiscale images: arrays stored by dask, blocks of whole
chunks at a time; the multiscales metadata by ome-zarr-py.

Each level's transforms put its pixel centres on level 0's (``scale`` plus the
half-pixel ``translation`` of a factor-2 reduction), so napari and other NGFF
viewers overlay the levels, and labels written from the same source, exactly.
The pixel size is in micrometres for slides; for geodata the CRS, the affine
transform and the unit go into ``attrs["wfe"]`` (NGFF has no CRS yet), and
wfe's zarr reader gives the same geometry back.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from wfe.errors import WfeError
from wfe.raster import Raster
from wfe.resample import downsample
from wfe.sink import Sink, TemporaryOutput

__all__ = ["COMPRESSORS", "WRITE_BLOCK", "OmeZarrWriter", "codecs", "pyramid", "pyramid_raster"]

MIN_CHUNK = 256
#: Pixels a side the tile stage writes in one task (a whole number of chunks): zarr-python
#: costs a few milliseconds per call beyond the bytes, about as much as compressing a
#: 512² chunk; one call per 4 × 4 chunks shares that cost among them.
WRITE_BLOCK = 2048
COMPRESSORS = ("zstd", "blosc-lz4", "none")
_UNIT_NAMES = {"µm": "micrometer", "m": "meter", "ft": "foot"}


def codecs(compressor: str, level: int | None) -> list[Any]:
    """Zarr v3 bytes-to-bytes codecs for a compressor name."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if compressor == "zstd":
        # Level 1: on decoded slide pixels it compresses within 5 % of level 3, 4 × faster.
        return [ZstdCodec(level=1 if level is None else level)]
    if compressor == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=5 if level is None else level, shuffle="shuffle")]
    if compressor == "none":
        return []
    raise WfeError(f"unknown compressor {compressor!r}", f"use one of {', '.join(COMPRESSORS)}")


def pyramid(raster: Raster, chunk: int | None, labels: bool,
            block: int | None = None) -> list[Any]:
    """Level 0 and factor-2 reductions down to one chunk: mean for images, nearest for labels.

    By default each level keeps the chunks the data arrives in (halved from level
    to level), so no level needs pixels from its neighbours' chunks and memory
    stays bounded; chunks smaller than ``MIN_CHUNK`` are merged. With ``block``
    (and a ``chunk``), level 0 comes in blocks of whole chunks about that size and
    each level is reduced from its own blocks (halved until they are one chunk), so
    one task writes many chunks and memory still holds a few blocks.
    """
    level0 = raster.levels[0]
    if chunk is not None:
        step = chunk * max(1, (block or chunk) // chunk)
        level0 = level0.rechunk((raster.shape[0], step, step))
    else:
        level0 = level0.rechunk((raster.shape[0], *(c[0] for c in level0.chunks[1:])))
    blocked = block is not None and chunk is not None
    levels = [level0]
    while max(levels[-1].shape[1:]) > (
            chunk if blocked else max(levels[-1].chunks[1][0], levels[-1].chunks[2][0])):
        nxt = downsample(levels[-1], 2, "nearest" if labels else "mean")
        if blocked:
            # Blocks stay whole numbers of chunks: two tasks never write one chunk.
            size = max(c[0] for c in nxt.chunks[1:])
            if size % chunk:
                size = chunk * max(1, size // chunk)
                nxt = nxt.rechunk((raster.shape[0], size, size))
            levels.append(nxt)
            continue
        size = max(MIN_CHUNK, min(c[0] for c in nxt.chunks[1:]))
        if chunk is not None:
            size = chunk
        levels.append(nxt.rechunk((raster.shape[0], size, size)))
    return levels


def pyramid_raster(raster: Raster, chunk: int | None, block: int | None = None) -> Raster:
    """``raster`` with the factor-2 pyramid the writer stores (same geometry at level 0);
    ``block``: see :func:`pyramid`."""
    levels = pyramid(raster, chunk, raster.is_labels, block)
    pixel_size = None
    if raster.pixel_size is not None:
        pixel_size = [float(raster.pixel_size[0]) * 2**i for i in range(len(levels))]
    valid = None
    if raster.valid is not None:
        valid = [raster.valid[0].rechunk((1, *levels[0].chunksize[1:]))]
        for lvl in levels[1:]:
            valid.append(downsample(valid[-1], 2, "nearest").rechunk((1, *lvl.chunksize[1:])))
    return replace(raster, levels=levels, pixel_size=pixel_size, valid=valid)


class OmeZarrWriter:
    """Writes a Raster as an OME-Zarr image with a multiscale pyramid and its geometry."""

    name = "ome-zarr"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False,
              chunk: int | None = None, compressor: Literal["zstd", "blosc-lz4", "none"] = "zstd",
              compression_level: int | None = None, shard: int | None = None,
              is_pyramid: bool = False, **_: Any) -> Sink:
        """Write ``raster``; ``is_pyramid`` says its levels already are the factor-2 pyramid
        (as :func:`pyramid_raster` makes them) and are to be stored as they are."""
        import dask.array as da
        import zarr
        from ome_zarr.writer import write_multiscales_metadata

        levels = list(raster.levels) if is_pyramid else pyramid(raster, chunk,
                                                                raster.is_labels)
        if shard is not None:
            size = chunk or levels[0].chunks[1][0]
            if shard % size:
                raise WfeError(f"shard {shard} is not a multiple of the chunk size {size}",
                               f"use shard: {size * max(1, round(shard / size))}")
        factors = [levels[0].shape[2] / lvl.shape[2] for lvl in levels]
        image = _labelled_image(path) if raster.is_labels else None
        # Labels of an image go into its labels/ group only once the image is complete.
        temp = TemporaryOutput(path, overwrite, temp_dir=None if image is None else image.parent)
        group = zarr.open_group(str(temp.temp), mode="w")
        res = raster.resolutions()
        unit = _UNIT_NAMES.get(raster.unit or "", None)
        axes = [{"name": "c", "type": "channel"},
                {"name": "y", "type": "space", **({"unit": unit} if unit else {})},
                {"name": "x", "type": "space", **({"unit": unit} if unit else {})}]
        base = res[0] if res else 1.0
        transforms = [[{"type": "scale", "scale": [1.0, base * f, base * f]},
                       {"type": "translation",
                        "translation": [0.0, base * (f - 1) / 2, base * (f - 1) / 2]}]
                      for f in factors]
        nominal = chunk or levels[0].chunks[1][0]
        compressors = codecs(compressor, compression_level)
        work = []
        for i, lvl in enumerate(levels):
            # The nominal chunk, even where a level is smaller: shards must be multiples of
            # it; without a chunk asked for, each level's own dask chunk.
            size = nominal if shard is not None or chunk is not None else lvl.chunks[1][0]
            array = group.create_array(
                f"s{i}", shape=lvl.shape, dtype=lvl.dtype, chunks=(lvl.shape[0], size, size),
                shards=None if shard is None else (lvl.shape[0], shard, shard),
                compressors=compressors,
                dimension_names=[a["name"] for a in axes],
                # Writing every chunk, blank ones too, skips a per-chunk scan for blankness
                # that costs more than writing (a blank chunk compresses to almost nothing).
                config={"write_empty_chunks": True})
            # One task a shard (no two tasks write one shard), else one a dask chunk.
            if shard is not None:
                lvl = lvl.rechunk((lvl.shape[0], shard, shard))
            work.append(da.store(lvl, array, lock=False, compute=False))
        write_multiscales_metadata(
            group, [{"path": f"s{i}", "coordinateTransformations": t}
                    for i, t in enumerate(transforms)],
            axes=axes, name=Path(raster.attrs.get("source", "image")).name)
        group.attrs["wfe"] = {
            "channels": list(raster.channels),
            **{k: raster.attrs[k] for k in ("classes", "colors", "source", "crs_unit")
               if k in raster.attrs},
            **({"crs": raster.crs} if raster.crs else {}),
            **({"transform": list(raster.transform)} if raster.transform else {}),
        }
        if raster.is_labels:
            group.attrs["ome"] = {**group.attrs["ome"], "image-label": _image_label(raster, path)}
        finalize = temp.commit if image is None else (lambda: _add_label(image, temp))
        return Sink(path=path, work=work, finalize=finalize, abort=temp.discard)


def _labelled_image(path: Path) -> Path | None:
    """The image ``path`` labels when it is ``<image>.zarr/labels/<name>`` (NGFF layout)."""
    if path.parent.name == "labels" and path.parent.parent.suffix == ".zarr":
        return path.parent.parent
    return None


def _image_label(raster: Raster, path: Path) -> dict[str, Any]:
    """NGFF ``image-label`` metadata: a colour and a class name per label value."""
    from wfe_builtin.writers._labels import label_classes, rgb_of

    classes, colors = label_classes(raster, path)
    return {
        "version": "0.5",
        "colors": [{"label-value": i, "rgba": [*rgb_of(c), 0 if i == 0 else 255]}
                   for i, c in enumerate(colors)],
        "properties": [{"label-value": i, "class": name} for i, name in enumerate(classes)],
        "source": {"image": "../../"},
    }


def _add_label(image: Path, temp: TemporaryOutput) -> None:
    """Move a finished label image into ``image/labels/`` and list it there."""
    import zarr

    if not (image / "zarr.json").exists():
        temp.discard()
        raise WfeError(f"{temp.final}: {image} is not an OME-Zarr image",
                       "write the image first (a tile stage before this one), or write the "
                       "labels to a path of their own")
    labels = zarr.open_group(str(image / "labels"), mode="a")
    temp.commit()
    names = list(labels.attrs.get("ome", {}).get("labels", []))
    if temp.final.name not in names:
        names.append(temp.final.name)
    labels.attrs["ome"] = {"version": "0.5", "labels": names}
