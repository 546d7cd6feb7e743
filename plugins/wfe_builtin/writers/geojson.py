"""GeoJSON vectors of a label image: one feature per connected object, for QuPath and QGIS.

Each feature carries what QuPath reads (``objectType``, ``classification`` with
``name`` and an ``[r, g, b]`` colour) and flat ``class`` / ``area`` fields that
QGIS shows as columns. Coordinates are level-0 pixels of the source slide
(QuPath's image space), or the CRS's coordinates for geodata (with the legacy
``crs`` member GDAL and QGIS read, since RFC 7946 only knows WGS 84).
Objects are found chunk by chunk (``_objects``); complete ones are written to a
part file per chunk as soon as their chunk is done, objects cut by chunk
borders are merged at the end, so nothing is split at a seam and memory holds
only the border pieces.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wfe.raster import Raster
from wfe.resolution import source_pixel_size
from wfe.sink import Sink, TemporaryOutput
from wfe_builtin.writers._labels import label_classes, rgb_of
from wfe_builtin.writers._objects import (
    ChunkObjects,
    chunk_objects,
    merge_border,
    per_chunk,
    totals,
)

__all__ = ["GeoJsonWriter"]


class _Geometry:
    """From label-pixel coordinates to the output's, and the area of one label pixel."""

    def __init__(self, raster: Raster) -> None:
        res = raster.resolutions()
        self.geo = raster.transform is not None and raster.pixel_size is None
        if self.geo:
            self.affine = tuple(raster.transform)  # type: ignore[arg-type]
            self.unit = f"{raster.unit}²"
        else:
            base = source_pixel_size(raster)
            self.scale = 1.0 if res is None or base is None else res[0] / base
            self.unit = "µm²" if res is not None else "px²"
        self.pixel_area = 1.0 if res is None else res[0] * res[0]

    def place(self, poly: Any) -> Any:
        import shapely

        if self.geo:
            a, b, c, d, e, f = self.affine
            return shapely.affinity.affine_transform(poly, (a, b, d, e, c, f))
        if self.scale == 1.0:
            return poly
        return shapely.affinity.scale(poly, self.scale, self.scale, origin=(0, 0))


def _kinds(classes: list[str], colors: list[str]) -> list[dict[str, Any]]:
    """QuPath's ``classification`` of each label value."""
    return [{"name": n, "color": list(rgb_of(c))} for n, c in zip(classes, colors, strict=False)]


def _kind(kinds: list[dict[str, Any]], value: int) -> dict[str, Any]:
    return kinds[value] if value < len(kinds) else {"name": str(value), "color": [128, 128, 128]}


def _feature(value: int, poly: Any, geometry: _Geometry, kinds: list[dict[str, Any]],
             simplify: float) -> str:
    import shapely

    area = float(poly.area) * geometry.pixel_area
    placed = geometry.place(poly)
    if simplify > 0:
        placed = placed.simplify(simplify, preserve_topology=True)
    kind = _kind(kinds, value)
    properties = json.dumps({"objectType": "annotation", "classification": kind,
                             "class": kind["name"], "area": round(area, 6),
                             "area_unit": geometry.unit}, separators=(",", ":"))
    # The geometry's JSON goes in as shapely wrote it, not parsed and written again.
    return ('{"type":"Feature","geometry":' + shapely.to_geojson(placed)
            + ',"properties":' + properties + "}")


def _chunk(block: np.ndarray, y0: int, x0: int, height: int, width: int, part: Path,
           geometry: _Geometry, kinds: list[dict[str, Any]], simplify: float) -> ChunkObjects:
    lines: list[str] = []
    found = chunk_objects(block, y0, x0, height, width,
                          lambda v, p: lines.append(_feature(v, p, geometry, kinds, simplify)))
    if lines:
        part.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return found


def _crs_member(crs: str | None) -> dict[str, Any]:
    if not crs:
        return {}
    from rasterio.crs import CRS

    epsg = CRS.from_user_input(crs).to_epsg()
    if epsg is None:
        return {"wfe_crs_wkt": CRS.from_user_input(crs).to_wkt()}
    return {"crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}}


def _assemble(chunks: list[ChunkObjects], parts: Path, temp: Path, header: dict[str, Any],
              geometry: _Geometry, kinds: list[dict[str, Any]], simplify: float,
              record: Callable[[dict[str, Any]], None]) -> None:
    _, complete, border = totals(chunks)
    objects = {i: complete.get(i, 0) for i in range(1, len(kinds))}
    head = json.dumps({"type": "FeatureCollection", **header}, separators=(",", ":"))[:-1]
    try:
        with temp.open("w", encoding="utf-8") as out:
            out.write(head + ',"features":[\n')
            first = True
            for part in sorted(parts.glob("*.jsonl")):
                with part.open(encoding="utf-8") as lines:
                    for line in lines:
                        out.write(("" if first else ",\n") + line.rstrip("\n"))
                        first = False
            for value, poly in merge_border(border):
                objects[value] = objects.get(value, 0) + 1
                out.write(("" if first else ",\n")
                          + _feature(value, poly, geometry, kinds, simplify))
                first = False
            out.write("\n]}\n")
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    record({"objects": {_kind(kinds, v)["name"]: n for v, n in sorted(objects.items())}})


class GeoJsonWriter:
    """Writes the objects of a label image as a GeoJSON FeatureCollection."""

    name = "geojson"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False,
              simplify: float = 0.0, chunk: int = 1024, **_: Any) -> Sink:
        """``simplify``: tolerance in output units (level-0 pixels, or CRS units); 0 keeps
        the pixel outlines. ``chunk``: pixels per side vectorised together."""
        import dask

        classes, colors = label_classes(raster, path)
        kinds = _kinds(classes, colors)
        geometry = _Geometry(raster)
        temp = TemporaryOutput(path, overwrite)
        parts = temp.temp.with_name(temp.temp.name + ".parts")
        parts.mkdir()
        found = per_chunk(raster.levels[0], chunk,
                          lambda block, y0, x0, h, w: dask.delayed(_chunk)(
                              block, y0, x0, h, w, parts / f"{y0:09d}_{x0:09d}.jsonl",
                              geometry, kinds, simplify))
        header: dict[str, Any] = _crs_member(raster.crs) if geometry.geo else {}
        header["wfe"] = {"classes": classes, "coordinates": "crs" if geometry.geo
                         else "level-0 pixels", "source": raster.attrs.get("source")}
        sink = Sink(path=path, finalize=temp.commit)
        sink.work = [dask.delayed(_assemble)(found, parts, temp.temp, header, geometry,
                                             kinds, simplify, sink.summary.update)]

        def discard() -> None:
            shutil.rmtree(parts, ignore_errors=True)
            temp.discard()

        sink.abort = discard
        return sink
