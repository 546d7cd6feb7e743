"""Vectorising label images: the outlines equal GDAL's polygonize, and chunked = whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from wfe_builtin.writers._objects import BorderPieces, chunk_objects, merge_border, totals
from wfe_builtin.writers._outlines import outlines


@st.composite
def label_images(draw: st.DrawFn) -> np.ndarray:
    """Small label images: pixel noise (many corner contacts, holes, pinches) or
    smooth blobs (objects with holes) of one to three classes."""
    h = draw(st.integers(1, 48))
    w = draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    classes = draw(st.integers(1, 3))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        return rng.integers(0, classes + 1, (h, w)).astype(np.uint8)
    blobs = ndimage.uniform_filter(rng.random((h, w)), 3) > 0.5
    return (blobs * rng.integers(1, classes + 1, (h, w))).astype(np.uint8)


def _normal(values: np.ndarray, polygons: np.ndarray) -> list[tuple[int, str]]:
    return sorted((int(v), shapely.normalize(p).wkt) for v, p in zip(values, polygons, strict=True))


@settings(max_examples=150, deadline=None)
@given(labels=label_images(), y0=st.integers(0, 5000), x0=st.integers(0, 5000))
def test_outlines_are_gdal_polygonize_with_4_connectivity(labels, y0, x0):
    ours = outlines(labels, y0, x0)
    gdal = [(int(v), shapely.affinity.translate(shape(g), x0, y0))
            for g, v in shapes(labels, mask=labels > 0, connectivity=4)]
    assert shapely.is_valid(ours.polygons).all()
    assert shapely.is_ccw(shapely.get_exterior_ring(ours.polygons)).all()
    holes = [h for p in ours.polygons for h in p.interiors]
    assert not shapely.is_ccw(np.array(holes, dtype=object)).any()
    assert _normal(ours.values, ours.polygons) == _normal(
        np.array([v for v, _ in gdal]), np.array([g for _, g in gdal], dtype=object))
    np.testing.assert_array_equal(ours.areas, shapely.area(ours.polygons))


def test_outlines_keep_holes_and_split_diagonal_neighbours():
    labels = np.zeros((7, 7), np.uint8)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0          # a hole
    labels[0, 6] = 1          # touches the square only at a corner: its own object
    found = outlines(labels)
    assert len(found) == 2
    square = found.polygons[np.argmax(found.areas)]
    assert len(square.interiors) == 1 and square.area == 24
    assert sorted(found.areas.tolist()) == [1, 24]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=label_images(), chunk=st.integers(3, 40), batch=st.integers(1, 64))
def test_chunked_objects_merge_into_the_whole_image_objects(labels, chunk, batch,
                                                            tmp_path: Path):
    h, w = labels.shape
    spool_path = tmp_path / f"pieces-{chunk}-{batch}-{h}x{w}.wkb"
    spool_path.unlink(missing_ok=True)
    spool = BorderPieces(spool_path)
    complete = []
    chunks = [chunk_objects(labels[y:y + chunk, x:x + chunk][None], y, x, h, w, spool,
                            complete.append)
              for y in range(0, h, chunk) for x in range(0, w, chunk)]
    found = totals(chunks, batch=batch)
    merged = list(merge_border(found, spool))
    parts = complete + merged
    values = np.concatenate([p.values for p in parts] or [np.zeros(0, np.int64)])
    polygons = np.concatenate([p.polygons for p in parts] or [np.zeros(0, object)])
    whole = outlines(labels)
    assert shapely.is_valid(polygons).all()
    assert shapely.is_ccw(shapely.get_exterior_ring(polygons)).all()
    assert _normal(values, polygons) == _normal(whole.values, whole.polygons)
    for value in range(4):
        assert found.pixels.get(value, 0) == int((labels == value).sum())


@pytest.mark.parametrize("chunk", [64, 100])
def test_an_object_larger_than_many_chunks_is_one_feature(chunk, tmp_path):
    yy, xx = np.mgrid[0:300, 0:300]
    ring = ((yy - 150) ** 2 + (xx - 150) ** 2 <= 140 ** 2) & (
        (yy - 150) ** 2 + (xx - 150) ** 2 > 60 ** 2)
    labels = ring.astype(np.uint8)
    spool = BorderPieces(tmp_path / "pieces.wkb")
    complete = []
    chunks = [chunk_objects(labels[y:y + chunk, x:x + chunk][None], y, x, 300, 300, spool,
                            complete.append)
              for y in range(0, 300, chunk) for x in range(0, 300, chunk)]
    merged = list(merge_border(totals(chunks), spool))
    assert not complete
    assert sum(len(m) for m in merged) == 1
    ring_polygon = merged[0].polygons[0]
    assert len(ring_polygon.interiors) == 1
    assert ring_polygon.area == int(ring.sum())
    # Seam vertices are gone: only corners of the pixel outline remain.
    assert len(ring_polygon.exterior.coords) - 1 == len(outlines(labels).polygons[0].exterior.coords) - 1
