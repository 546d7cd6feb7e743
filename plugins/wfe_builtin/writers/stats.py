"""Per-class statistics of a label image: pixels, area and objects, as CSV and in run.json.

Objects are counted the way the GeoJSON writer finds them (4-connected, merged
across chunk borders), so the two always agree.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wfe.raster import Raster
from wfe.sink import Sink, TemporaryOutput
from wfe_builtin.writers._labels import label_classes
from wfe_builtin.writers._objects import (
    MERGE_SHARES,
    BorderPieces,
    Totals,
    chunk_objects,
    merged_objects,
    object_counts,
    per_chunk,
    totals,
)

__all__ = ["StatsWriter", "class_table"]


def class_table(found: Totals, merged: list[Counter[int]], classes: list[str],
                pixel_area: float | None, unit: str | None) -> list[dict[str, Any]]:
    """One row per class: name, pixels, area (in ``unit``), objects (none for background)."""
    objects = object_counts(found, merged)
    rows = []
    for value, name in enumerate(classes):
        n = found.pixels.get(value, 0)
        rows.append({"class": name, "value": value, "pixels": n,
                     "area": None if pixel_area is None else round(n * pixel_area, 6),
                     "area_unit": unit, "objects": None if value == 0 else objects[value]})
    return rows


def _write(found: Totals, merged: list[Counter[int]], spool: BorderPieces, temp: Path,
           classes: list[str], pixel_area: float | None, unit: str | None,
           record: Callable[[dict[str, Any]], None]) -> None:
    spool.path.unlink(missing_ok=True)
    rows = class_table(found, merged, classes, pixel_area, unit)
    with temp.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    record({"stats": {r["class"]: {k: r[k] for k in ("pixels", "area", "area_unit", "objects")}
                      for r in rows}})


class StatsWriter:
    """Writes per-class pixel counts, areas and object counts of a label image as CSV."""

    name = "csv"

    def write(self, raster: Raster, path: Path, *, overwrite: bool = False, chunk: int = 2048,
              **_: Any) -> Sink:
        import dask

        classes, _ = label_classes(raster, path)
        res = raster.resolutions()
        pixel_area = None if res is None else res[0] * res[0]
        unit = None if raster.unit is None else f"{raster.unit}²"
        temp = TemporaryOutput(path, overwrite)
        spool = BorderPieces(temp.temp.with_name(temp.temp.name + ".border"))
        found = per_chunk(raster.levels[0], chunk,
                          lambda block, y0, x0, h, w: chunk_objects(
                              block, y0, x0, h, w, spool, None), "csv-objects")

        def discard() -> None:
            spool.path.unlink(missing_ok=True)
            temp.discard()

        sink = Sink(path=path, finalize=temp.commit, abort=discard)
        plan = dask.delayed(totals)(found)
        merged = [dask.delayed(merged_objects)(plan, spool, k) for k in range(MERGE_SHARES)]
        sink.work = [dask.delayed(_write)(plan, merged, spool, temp.temp, classes, pixel_area,
                                          unit, sink.summary.update)]
        return sink
