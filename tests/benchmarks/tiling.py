"""Tiling a large JPEG slide into OME-Zarr, against only decoding the same tiles.

The slide is a pyramidal tiled JPEG TIFF of ``side × side`` pixels whose
tiles are real rendered slide tiles (a palette taken from a synthetic slide,
placed pseudo-randomly), so decoding costs what it costs on a scan. Both runs
use tifffile through the same reader (one dask chunk per tile, all cores):

- decode only: every level-0 tile decoded, nothing kept;
- tiling: ``wfe run`` of read → tile (zstd, 512-px chunks, factor-2 pyramid).

Peak RSS of the tiling run comes from ``wait4``'s rusage of the child process.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tests.memory_probe import peak_rss_kib

TILE_WORKFLOW = """
wfe: 1
stages:
  - {id: image, uses: read, with: {mpp: 0.5}}
  - {id: tiled, uses: tile, with: {image: image, path: "{output}/image.ome.zarr", chunk: 512}}
"""

def write_large_slide(path: Path, side: int, tile: int = 256, palette: int = 48) -> Path:
    """A ``side``² pyramidal JPEG TIFF (levels ÷4) built from rendered slide tiles."""
    import tifffile

    from wfe_builtin.synthetic import SyntheticSlide

    if path.exists():
        return path
    source = SyntheticSlide(4096, 4096, mpp=0.5, seed=11)
    rng = np.random.default_rng(0)
    tiles = []
    while len(tiles) < palette:
        y, x = (int(v) for v in rng.integers(0, 4096 - tile, 2))
        rgb, labels = source.render(y, x, tile, tile)
        if (labels > 0).mean() > 0.3 or len(tiles) < palette // 4:  # mostly tissue, some glass
            tiles.append(np.ascontiguousarray(rgb))

    def level_tiles(h: int, w: int, seed: int):
        pick = np.random.default_rng(seed)
        for _ in range(-(-h // tile) * -(-w // tile)):
            yield tiles[int(pick.integers(len(tiles)))]

    tmp = path.with_name(f".{path.name}.partial")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        d, n = 1, 0
        while side // d >= tile:
            h = w = side // d
            per_cm = 1e4 / (0.5 * d)
            tw.write(level_tiles(h, w, n), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                     subfiletype=0 if n == 0 else 1, resolution=(per_cm, per_cm),
                     resolutionunit="CENTIMETER", metadata=None)
            d, n = d * 4, n + 1
    tmp.replace(path)
    return path


def _decode_only(slide: Path, workers: int) -> float:
    """Seconds to decode every level-0 tile through the reader, keeping nothing."""
    import dask

    from wfe.io import open_image
    from wfe.plugins import load_registry

    level = open_image(slide, load_registry()).levels[0]
    probe = level.map_blocks(lambda b: b[:, :1, :1], chunks=(3, 1, 1), dtype=level.dtype)
    t = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=workers):
        probe.compute()
    return time.perf_counter() - t


def tile_run(work: Path, slide: Path, workers: int) -> tuple[float, float, float]:
    """(compute seconds, whole-command seconds, peak RSS MiB) of ``wfe run`` read → tile."""
    workflow = work / "tile-bench.yaml"
    workflow.write_text(TILE_WORKFLOW)
    out = work / f"tiles-{slide.stem}"
    cmd = [sys.executable, "-m", "wfe", "run", str(workflow), "-i", str(slide), "-o", str(out),
           "--workers", str(workers)]
    t = time.perf_counter()
    peak = peak_rss_kib(cmd) / 1024
    wall = time.perf_counter() - t
    record = next(iter(json.loads((out / "run.json").read_text())["inputs"].values()))
    if record["status"] != "done":
        raise RuntimeError(record["error"])
    shutil.rmtree(out)
    return record["timings"]["compute"], wall, peak


def tiling(work: Path, side: int = 40_000, workers: int = 2,
           turns: int = 2) -> list[tuple[str, str]]:
    """Rows for the bench table: throughput ratio and memory of tiling.

    Decoding and tiling take turns ``turns`` times and the fastest of each counts: the
    first read of the slide may come from disk rather than the page cache, and this
    shared machine's speed moves by 10-20 % within minutes.
    """
    slide = write_large_slide(work / f"large-{side}.tiff", side)
    decodes, runs = [], []
    for _ in range(turns):
        decodes.append(_decode_only(slide, workers))
        runs.append(tile_run(work, slide, workers))
    decode = min(decodes)
    compute, wall, _ = min(runs)
    peak = max(r[2] for r in runs)
    mpx = side * side / 1e6
    return [
        ("tiling: slide", f"{side:,} × {side:,} px JPEG (q90, 256-px tiles), "
                          f"{slide.stat().st_size / 2**20:.0f} MiB"),
        ("tiling: decode only (same tiles, same library)",
         f"{decode:.1f} s ({mpx / decode:.1f} Mpx/s)"),
        ("tiling: wfe run read → tile (zstd, 512-px chunks, pyramid)",
         f"{compute:.1f} s compute ({mpx / compute:.1f} Mpx/s), {wall:.1f} s whole command"),
        ("tiling: each turn, decode only / tile compute (s)",
         " / ".join(f"{d:.1f}/{r[0]:.1f}" for d, r in zip(decodes, runs, strict=True))),
        ("tiling: ratio tile / decode-only throughput, compute phase (fastest of each)",
         f"{decode / compute:.3f}"),
        ("tiling: ratio tile / decode-only throughput, whole command", f"{decode / wall:.3f}"),
        ("tiling: peak RSS", f"{peak:.0f} MiB"),
    ]


def tiling_memory(work: Path, workers: int = 2) -> list[tuple[str, str]]:
    """Peak RSS of tiling at 1×, 4× and 16× the area."""
    rows, base = [], None
    for factor, side in (("1×", 5000), ("4×", 10_000), ("16×", 20_000)):
        slide = write_large_slide(work / f"mem-{side}.tiff", side)
        _, _, peak = tile_run(work, slide, workers)
        base = base or peak
        rows.append((f"tiling: peak RSS at {factor} the area ({side:,} px square)",
                     f"{peak:.0f} MiB ({peak / base - 1:+.1%} vs 1×)"))
        slide.unlink()
    return rows
