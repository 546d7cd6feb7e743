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
    BorderPieces,
    ChunkObjects,
    chunk_objects,
    merge_border,
    per_chunk,
    totals,
)
from wfe_builtin.writers._outlines import Outlines

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

    def place(self, polygons: np.ndarray) -> np.ndarray:
        """The polygons in output coordinates, outer rings counter-clockwise (RFC 7946)."""
        import shapely

        if self.geo:
            a, b, c, d, e, f = self.affine
            matrix, offset = np.array([[a, d], [b, e]]), np.array([c, f])
            polygons = shapely.transform(polygons, lambda xy: xy @ matrix + offset)
        elif self.scale != 1.0:
            polygons = shapely.transform(polygons, lambda xy: xy * self.scale)
        return shapely.orient_polygons(polygons)


def _kinds(classes: list[str], colors: list[str]) -> list[dict[str, Any]]:
    """QuPath's ``classification`` of each label value."""
    return [{"name": n, "color": list(rgb_of(c))} for n, c in zip(classes, colors, strict=False)]


def _kind(kinds: list[dict[str, Any]], value: int) -> dict[str, Any]:
    return kinds[value] if value < len(kinds) else {"name": str(value), "color": [128, 128, 128]}


def _features(objects: Outlines, geometry: _Geometry, kinds: list[dict[str, Any]],
              simplify: float) -> list[bytes]:
    """One GeoJSON Feature (a line of UTF-8 text) per object.

    orjson writes the coordinates straight from numpy arrays (integers stay
    integers): three times faster than shapely's ``to_geojson``, which also holds
    the GIL, and the coordinates are most of a GeoJSON file.
    """
    import orjson
    import shapely

    placed = geometry.place(objects.polygons)
    if simplify > 0:
        placed = shapely.simplify(placed, simplify, preserve_topology=True)
    _, coords, (ring_at, polygon_at) = shapely.to_ragged_array(placed)
    if np.array_equal(coords, np.rint(coords)) and np.abs(coords).max(initial=0) < 2 ** 53:
        coords = coords.astype(np.int64)
    kind = {int(v): _kind(kinds, int(v)) for v in np.unique(objects.values)}
    areas = (objects.areas * geometry.pixel_area).tolist()
    lines = []
    for i, (value, area) in enumerate(zip(objects.values.tolist(), areas, strict=True)):
        rings = [coords[ring_at[r]:ring_at[r + 1]]
                 for r in range(polygon_at[i], polygon_at[i + 1])]
        lines.append(orjson.dumps(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
             "properties": {"objectType": "annotation", "classification": kind[value],
                            "class": kind[value]["name"], "area": round(area, 6),
                            "area_unit": geometry.unit}},
            option=orjson.OPT_SERIALIZE_NUMPY))
    return lines


def _chunk(block: np.ndarray, y0: int, x0: int, height: int, width: int, part: Path,
           spool: BorderPieces, geometry: _Geometry, kinds: list[dict[str, Any]],
           simplify: float) -> ChunkObjects:
    def emit(objects: Outlines) -> None:
        part.write_bytes(b",\n".join(_features(objects, geometry, kinds, simplify)))

    return chunk_objects(block, y0, x0, height, width, spool, emit)


def _crs_member(crs: str | None) -> dict[str, Any]:
    if not crs:
        return {}
    from rasterio.crs import CRS

    epsg = CRS.from_user_input(crs).to_epsg()
    if epsg is None:
        return {"wfe_crs_wkt": CRS.from_user_input(crs).to_wkt()}
    return {"crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}}


def _assemble(chunks: list[ChunkObjects], parts: Path, spool: BorderPieces, temp: Path,
              header: dict[str, Any], geometry: _Geometry, kinds: list[dict[str, Any]],
              simplify: float, record: Callable[[dict[str, Any]], None]) -> None:
    found = totals(chunks)
    objects = {i: found.objects.get(i, 0) for i in range(1, len(kinds))}
    head = json.dumps({"type": "FeatureCollection", **header}, separators=(",", ":"))[:-1]
    try:
        with temp.open("wb") as out:
            out.write(head.encode() + b',"features":[\n')
            first = True
            for part in sorted(parts.glob("*.jsonl")):
                # Each part holds its chunk's features, already separated by ",\n".
                if not first:
                    out.write(b",\n")
                with part.open("rb") as features:
                    shutil.copyfileobj(features, out, 1 << 20)
                first = False
            for merged in merge_border(found.border, spool):
                for value in merged.values.tolist():
                    objects[value] = objects.get(value, 0) + 1
                for line in _features(merged, geometry, kinds, simplify):
                    out.write((b"" if first else b",\n") + line)
                    first = False
            out.write(b"\n]}\n")
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    record({"objects": {_kind(kinds, v)["name"]: n for v, n in sorted(objects.items())}})


class GeoJsonWriter:
    """Writes the objects of a label image as a GeoJSON FeatureCollection."""

    name = "geojson"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False,
              simplify: float = 0.0, chunk: int = 2048, **_: Any) -> Sink:
        """``simplify``: tolerance in output units (level-0 pixels, or CRS units); 0 keeps
        the pixel outlines. ``chunk``: pixels per side vectorised together."""
        import dask

        classes, colors = label_classes(raster, path)
        kinds = _kinds(classes, colors)
        geometry = _Geometry(raster)
        temp = TemporaryOutput(path, overwrite)
        parts = temp.temp.with_name(temp.temp.name + ".parts")
        parts.mkdir()
        spool = BorderPieces(parts / "border.wkb")
        found = per_chunk(raster.levels[0], chunk,
                          lambda block, y0, x0, h, w: dask.delayed(_chunk)(
                              block, y0, x0, h, w, parts / f"{y0:09d}_{x0:09d}.jsonl",
                              spool, geometry, kinds, simplify))
        header: dict[str, Any] = _crs_member(raster.crs) if geometry.geo else {}
        header["wfe"] = {"classes": classes, "coordinates": "crs" if geometry.geo
                         else "level-0 pixels", "source": raster.attrs.get("source")}
        sink = Sink(path=path, finalize=temp.commit)
        sink.work = [dask.delayed(_assemble)(found, parts, spool, temp.temp, header, geometry,
                                             kinds, simplify, sink.summary.update)]

        def discard() -> None:
            shutil.rmtree(parts, ignore_errors=True)
            temp.discard()

        sink.abort = discard
        return sink
