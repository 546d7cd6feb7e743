"""Writing a large label image to every format: peak RSS and time, and GeoJSON against reading.

The label image is generated lazily, chunk by chunk (no file to read): discs of
two classes on a jittered grid, one object per ``spacing``² pixels, so a
40,000² image holds about 100,000 objects. Each format is written in its own
process (``python -m tests.benchmarks.writers FORMAT SIDE OUT``) so its peak RSS
(``wait4``'s rusage) is that writer's alone. The GeoJSON time is set against
decoding a JPEG slide of the same size through wfe's reader (the time to read
the source at the same resolution), in the same run.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tests.memory_probe import peak_rss_kib

FORMATS = ("ome-zarr", "ome-tiff", "cog", "geojson", "csv")
SUFFIX = {"ome-zarr": ".ome.zarr", "ome-tiff": ".ome.tif", "cog": ".tif", "geojson": ".geojson",
          "csv": ".csv"}
SPACING = 126


def _cells(spacing: int, period: int = 16) -> np.ndarray:
    """``period``² grid cells of ``spacing`` pixels, each with one disc of class 1 or 2
    (jittered centre, radius 25-49 px); the image repeats this pattern."""
    rng = np.random.default_rng(0)
    size = spacing * period
    out = np.zeros((size, size), np.uint8)
    ys, xs = np.mgrid[0:spacing, 0:spacing]
    for cy in range(period):
        for cx in range(period):
            jy, jx = rng.integers(-15, 16, 2)
            r = int(rng.integers(25, 50))
            inside = (ys - spacing // 2 - jy) ** 2 + (xs - spacing // 2 - jx) ** 2 <= r * r
            cell = out[cy * spacing:(cy + 1) * spacing, cx * spacing:(cx + 1) * spacing]
            cell[inside] = 1 + (cy + cx) % 2
    return out


_PATTERN = _cells(SPACING)
#: The pattern repeated twice each way, so any chunk of up to one period a side is a
#: slice of it (a copy, C order, as chunks read from a file are): the generator should
#: cost next to nothing beside the writers it feeds.
_TILED = np.tile(_PATTERN, (2, 2))


def _discs(block_info: dict | None = None) -> np.ndarray:
    (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]  # type: ignore[index]
    n = _PATTERN.shape[0]
    if y1 - y0 > n or x1 - x0 > n:
        rows = _PATTERN[np.arange(y0, y1) % n]
        return np.take(rows, np.arange(x0, x1) % n, axis=1)[None]
    return _TILED[y0 % n:y0 % n + y1 - y0, x0 % n:x0 % n + x1 - x0].copy()[None]


def label_raster(side: int, chunk: int = 1024):  # noqa: ANN201 - Raster, imported lazily
    """A lazy ``side``² label image (classes background/a/b), georeferenced for the COG."""
    import dask.array as da

    from wfe.raster import Raster

    arr = da.map_blocks(_discs, dtype=np.uint8,
                        chunks=((1,), *(tuple(min(chunk, side - i) for i in range(0, side, chunk)),) * 2))
    return Raster(levels=[arr], crs="EPSG:32633", transform=(10.0, 0, 500_000.0, 0, -10.0,
                                                              5_000_000.0),
                  channels=("labels",),
                  attrs={"classes": ["background", "a", "b"],
                         "colors": ["#000000", "#1f77b4", "#ff7f0e"]})


def write_one(fmt: str, side: int, out: Path, workers: int = 2) -> float:
    """Write the label image of ``side``² to ``out`` in ``fmt``; seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    import dask

    from wfe.plugins import load_registry

    raster = label_raster(side)
    writer = load_registry().writer_for(fmt).load()()
    t = time.perf_counter()
    sink = writer.write(raster, out)
    with ThreadPoolExecutor(workers) as pool, dask.config.set(scheduler="threads", pool=pool):
        dask.compute(*sink.work, optimize_graph=False)
    sink.finalize()
    return time.perf_counter() - t


def _measure(work: Path, fmt: str, side: int) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of writing ``fmt`` at ``side``² in a process of its own."""
    out = work / f"labels-{side}{SUFFIX[fmt]}"
    timing = work / f"labels-{side}-{fmt}.seconds"
    peak = peak_rss_kib([sys.executable, "-m", "tests.benchmarks.writers", fmt, str(side),
                         str(out), str(timing)]) / 1024
    seconds = float(timing.read_text())
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    timing.unlink()
    return seconds, peak


def writers(work: Path, side: int = 40_000, turns: int = 3) -> list[tuple[str, str]]:
    """Rows: per format, time and peak RSS at ``side``²; GeoJSON against reading the source.

    GeoJSON and reading the source take turns ``turns`` times and the fastest of each
    counts, as in the throughput rows: this shared machine's speed moves by 10-20 %
    within minutes, more than the margin being measured.
    """
    from tests.benchmarks.tiling import _decode_only, write_large_slide

    rows = [("writers: label image", f"{side:,} × {side:,} px, 3 classes, about "
                                     f"{(side // SPACING) ** 2:,} objects, generated lazily")]
    seconds = {}
    for fmt in FORMATS:
        s, peak = _measure(work, fmt, side)
        seconds[fmt] = s
        rows.append((f"writers: {fmt} at {side:,}²", f"{s:.1f} s, peak RSS {peak:.0f} MiB"))
    slide = write_large_slide(work / f"large-{side}.tiff", side)
    geojson, decode = [seconds["geojson"]], [_decode_only(slide, 2)]
    for _ in range(turns - 1):
        geojson.append(_measure(work, "geojson", side)[0])
        decode.append(_decode_only(slide, 2))
    rows.append(("writers: GeoJSON, each turn (s)", " / ".join(f"{s:.1f}" for s in geojson)))
    rows.append(("writers: reading the source (JPEG slide, same size, decode only), each turn (s)",
                 " / ".join(f"{s:.1f}" for s in decode)))
    rows.append(("writers: ratio GeoJSON time / source reading time, fastest of each "
                 "(target < 1)", f"{min(geojson) / min(decode):.2f}"))
    return rows


def writers_memory(work: Path) -> list[tuple[str, str]]:
    """Peak RSS per format at 1×, 4× and 16× the area."""
    rows = []
    for fmt in FORMATS:
        peaks = [_measure(work, fmt, side)[1] for side in (5000, 10_000, 20_000)]
        rows.append((f"writers: {fmt} peak RSS 1× / 4× / 16× (5k² / 10k² / 20k²)",
                     " / ".join(f"{p:.0f}" for p in peaks)
                     + f" MiB ({peaks[2] / peaks[0] - 1:+.1%} at 16×)"))
    return rows


if __name__ == "__main__":
    fmt_, side_, out_, timing_ = sys.argv[1:5]
    Path(timing_).write_text(str(write_one(fmt_, int(side_), Path(out_))))
