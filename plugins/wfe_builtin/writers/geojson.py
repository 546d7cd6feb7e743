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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wfe.raster import Raster
from wfe.resolution import source_pixel_size
from wfe.sink import Sink, TemporaryOutput
from wfe_builtin.writers._labels import label_classes, rgb_of
from wfe_builtin.writers._objects import (
    MERGE_SHARES,
    BorderPieces,
    ChunkObjects,
    Totals,
    chunk_objects,
    merged_objects,
    object_counts,
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

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """Label-pixel coordinates ``(n, 2)`` in output units."""
        if self.geo:
            a, b, c, d, e, f = self.affine
            return xy @ np.array([[a, d], [b, e]]) + np.array([c, f])
        return xy * self.scale if self.scale != 1.0 else xy

    @property
    def flips(self) -> bool:
        """Whether the output's axes turn rings the other way round (north-up rasters)."""
        return self.geo and self.affine[0] * self.affine[4] - self.affine[1] * self.affine[3] < 0

    def place(self, polygons: np.ndarray,
              simplify: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates of ``polygons`` (outer rings counter-clockwise in label pixels) in
        output units, outer rings still counter-clockwise (RFC 7946), as shapely's
        ragged arrays: coordinates, ring offsets, polygon offsets."""
        import shapely

        if simplify > 0:
            polygons = shapely.simplify(shapely.transform(polygons, self.apply), simplify,
                                        preserve_topology=True)
            _, coords, (ring_at, polygon_at) = shapely.to_ragged_array(polygons)
        else:
            _, coords, (ring_at, polygon_at) = shapely.to_ragged_array(polygons)
            coords = self.apply(coords)
        if self.flips:  # every ring backwards
            ring = np.repeat(np.arange(len(ring_at) - 1), np.diff(ring_at))
            coords = coords[ring_at[ring] + ring_at[ring + 1] - 1 - np.arange(len(coords))]
        return coords, ring_at, polygon_at


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

    coords, ring_at, polygon_at = geometry.place(objects.polygons, simplify)
    if np.array_equal(coords, np.rint(coords)) and np.abs(coords).max(initial=0) < 2 ** 53:
        coords = coords.astype(np.int64)
    # Everything but the coordinates and the area is the same for all objects of a class.
    start = b'{"type":"Feature","geometry":{"type":"Polygon","coordinates":'
    middle = {}
    for v in np.unique(objects.values).tolist():
        kind = _kind(kinds, v)
        middle[v] = (b'},"properties":{"objectType":"annotation","classification":'
                     + orjson.dumps(kind) + b',"class":' + orjson.dumps(kind["name"])
                     + b',"area":')
    end = b',"area_unit":' + orjson.dumps(geometry.unit) + b"}}"
    areas = (objects.areas * geometry.pixel_area).tolist()
    lines = []
    for i, (value, area) in enumerate(zip(objects.values.tolist(), areas, strict=True)):
        rings = [coords[ring_at[r]:ring_at[r + 1]]
                 for r in range(polygon_at[i], polygon_at[i + 1])]
        lines.append(start + orjson.dumps(rings, option=orjson.OPT_SERIALIZE_NUMPY)
                     + middle[value] + orjson.dumps(round(area, 6)) + end)
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


def _merge_share(found: Totals, spool: BorderPieces, share: int, part: Path,
                 geometry: _Geometry, kinds: list[dict[str, Any]],
                 simplify: float) -> Counter[int]:
    """Features of one share of the merged border objects, into ``part``; objects per class."""
    with part.open("wb") as out:
        def emit(merged: Outlines) -> None:
            if out.tell():
                out.write(b",\n")
            out.write(b",\n".join(_features(merged, geometry, kinds, simplify)))

        return merged_objects(found, spool, share, emit)


def _assemble(found: Totals, merged: list[Counter[int]], parts: Path, temp: Path,
              header: dict[str, Any], kinds: list[dict[str, Any]],
              record: Callable[[dict[str, Any]], None]) -> None:
    """The FeatureCollection: the chunks' complete objects in image order, then the
    merged ones, copied from the part files (each holds features separated by ",\n")."""
    objects = object_counts(found, merged)
    head = json.dumps({"type": "FeatureCollection", **header}, separators=(",", ":"))[:-1]
    order = sorted(parts.glob("chunk-*.jsonl")) + [parts / f"merged-{k}.jsonl"
                                                  for k in range(len(merged))]
    try:
        with temp.open("wb") as out:
            out.write(head.encode() + b',"features":[\n')
            first = True
            for part in order:
                if not part.stat().st_size:
                    continue
                if not first:
                    out.write(b",\n")
                with part.open("rb") as features:
                    shutil.copyfileobj(features, out, 1 << 20)
                first = False
            out.write(b"\n]}\n")
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    record({"objects": {_kind(kinds, v)["name"]: objects[v]
                        for v in sorted({*range(1, len(kinds)), *objects})}})


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
                          lambda block, y0, x0, h, w: _chunk(
                              block, y0, x0, h, w, parts / f"chunk-{y0:09d}-{x0:09d}.jsonl",
                              spool, geometry, kinds, simplify), "geojson-objects")
        header: dict[str, Any] = _crs_member(raster.crs) if geometry.geo else {}
        header["wfe"] = {"classes": classes, "coordinates": "crs" if geometry.geo
                         else "level-0 pixels", "source": raster.attrs.get("source")}
        sink = Sink(path=path, finalize=temp.commit)
        plan = dask.delayed(totals)(found)
        merged = [dask.delayed(_merge_share)(plan, spool, k, parts / f"merged-{k}.jsonl",
                                             geometry, kinds, simplify)
                  for k in range(MERGE_SHARES)]
        sink.work = [dask.delayed(_assemble)(plan, merged, parts, temp.temp, header, kinds,
                                             sink.summary.update)]

        def discard() -> None:
            shutil.rmtree(parts, ignore_errors=True)
            temp.discard()

        sink.abort = discard
        return sink
