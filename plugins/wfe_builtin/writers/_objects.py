"""Connected objects of a label image, found chunk by chunk and merged across chunk borders.

Each chunk is polygonised on its own (GDAL's polygonize through
``rasterio.features.shapes``, 4-connected, holes kept). An object that does not
touch an inner chunk border is complete; one that does is returned to be merged:
pieces of one object share whole pixel edges, so the union of a class's border
pieces puts each object back together exactly, and objects that only touch at a
corner stay apart, as 4-connectivity wants. Only border pieces are held in
memory until the end; complete objects are handed to a callback at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ChunkObjects", "chunk_objects", "merge_border", "per_chunk", "totals"]


@dataclass
class ChunkObjects:
    """What one chunk gives: complete objects per class, and pieces to merge."""

    complete: dict[int, int] = field(default_factory=dict)
    #: Pixels of each class, background (0) included.
    pixels: dict[int, int] = field(default_factory=dict)
    border: list[tuple[int, bytes]] = field(default_factory=list)


def _polygons(block: np.ndarray, y0: int, x0: int) -> Iterator[tuple[int, Any]]:
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from shapely.geometry import shape

    labels = np.ascontiguousarray(block)
    for geom, value in shapes(labels, mask=labels > 0, connectivity=4,
                              transform=Affine.translation(x0, y0)):
        yield int(value), shape(geom)


def chunk_objects(block: np.ndarray, y0: int, x0: int, height: int, width: int,
                  emit: Callable[[int, Any], None] | None) -> ChunkObjects:
    """Objects of the ``(1, h, w)`` label chunk at ``(y0, x0)`` of a ``height`` × ``width``
    image; ``emit(class, polygon)`` receives each complete one (in pixel coordinates)."""
    import shapely

    lab = block[0]
    h, w = lab.shape
    counts = np.bincount(lab.ravel(), minlength=1)
    out = ChunkObjects(pixels={int(c): int(n) for c, n in enumerate(counts) if n})
    inner = (y0 if y0 > 0 else None, y0 + h if y0 + h < height else None,
             x0 if x0 > 0 else None, x0 + w if x0 + w < width else None)
    for value, poly in _polygons(lab, y0, x0):
        minx, miny, maxx, maxy = poly.bounds
        if miny == inner[0] or maxy == inner[1] or minx == inner[2] or maxx == inner[3]:
            out.border.append((value, shapely.to_wkb(poly)))
            continue
        out.complete[value] = out.complete.get(value, 0) + 1
        if emit is not None:
            emit(value, poly)
    return out


def merge_border(pieces: list[tuple[int, bytes]]) -> Iterator[tuple[int, Any]]:
    """The objects the border pieces form, one polygon each, class by class."""
    import shapely
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    by_class: dict[int, list[bytes]] = {}
    for value, wkb in pieces:
        by_class.setdefault(value, []).append(wkb)
    for value in sorted(by_class):
        geoms = shapely.from_wkb(by_class[value])
        tree = shapely.STRtree(geoms)
        # Groups of pieces that touch (bounding boxes, then the geometry), so each
        # union stays small however many objects there are.
        left, right = tree.query(geoms, predicate="intersects")
        graph = coo_matrix((np.ones(len(left), np.int8), (left, right)),
                           shape=(len(geoms), len(geoms)))
        _, group = connected_components(graph, directed=False)
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        for members in np.split(order, bounds):
            union = shapely.union_all(geoms[members]) if len(members) > 1 else geoms[members[0]]
            for part in getattr(union, "geoms", [union]):
                yield value, part


def totals(chunks: list[ChunkObjects]) -> tuple[dict[int, int], dict[int, int],
                                                list[tuple[int, bytes]]]:
    """Pixels per class, complete objects per class, and every border piece, of all chunks."""
    pixels: dict[int, int] = {}
    objects: dict[int, int] = {}
    border: list[tuple[int, bytes]] = []
    for c in chunks:
        for v, n in c.pixels.items():
            pixels[v] = pixels.get(v, 0) + n
        for v, n in c.complete.items():
            objects[v] = objects.get(v, 0) + n
        border.extend(c.border)
    return pixels, objects, border


def per_chunk(labels: Any, chunk: int, task: Callable[..., Any]) -> list[Any]:
    """``task(block, y0, x0, height, width)`` for each ``chunk``² block of a ``(1, y, x)``
    dask array, block being a Delayed that shares its keys with the rest of the run."""
    labels = labels.rechunk((1, chunk, chunk))
    _, height, width = labels.shape
    blocks = labels.to_delayed(optimize_graph=False)
    ys = np.concatenate([[0], np.cumsum(labels.chunks[1])]).astype(int)
    xs = np.concatenate([[0], np.cumsum(labels.chunks[2])]).astype(int)
    return [task(blocks[0, i, j], int(ys[i]), int(xs[j]), height, width)
            for i in range(blocks.shape[1]) for j in range(blocks.shape[2])]
