"""A synthetic H&E-like slide described by shapes, rendered tile by tile at any scale.

Tissue is a set of wobbly elliptical lobes (eosin pink) on a white background,
with nuclei (haematoxylin purple) inside the tissue. Because the slide is a
description rather than pixels, any region can be rendered at any downsample
with its exact labels (0 background, 1 tissue, 2 nuclei), and a slide of any
size is written with memory bounded by one tile.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from wfe.cores import available_cores

__all__ = ["CLASSES", "SyntheticSlide", "write_slide"]

CLASSES = ("background", "tissue", "nuclei")
_BACKGROUND = np.array([243, 242, 245], np.float32)
_EOSIN = np.array([226, 150, 192], np.float32)
_HAEMATOXYLIN = np.array([78, 42, 128], np.float32)
_CELL = 256  # level-0 pixels per cell of the nucleus index


@dataclass
class _Lobe:
    cx: float
    cy: float
    a: float
    b: float
    theta: float
    harmonics: np.ndarray  # (k, 2): amplitude, phase for k = 2, 3, ...

    @property
    def reach(self) -> float:
        return max(self.a, self.b) * (1 + float(np.abs(self.harmonics[:, 0]).sum()))

    def add_to(self, inside: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Mark in ``inside`` the points (``x``, ``y``) this lobe covers."""
        near = (np.abs(x - self.cx) < self.reach) & (np.abs(y - self.cy) < self.reach)
        if not near.any():
            return
        dx, dy = x[near] - self.cx, y[near] - self.cy
        c, s = math.cos(self.theta), math.sin(self.theta)
        u, v = (dx * c + dy * s) / self.a, (-dx * s + dy * c) / self.b
        angle = np.arctan2(v, u)
        edge = np.ones_like(angle)
        for k, (amp, phase) in enumerate(self.harmonics, start=2):
            edge += amp * np.cos(k * angle + phase)
        inside[near] |= np.hypot(u, v) < edge


@dataclass
class SyntheticSlide:
    """Shapes of a slide of ``width × height`` level-0 pixels of ``mpp`` µm.

    The same ``seed`` always gives the same slide. ``tissue`` asks for about
    that fraction of the slide covered by tissue (lobes are added until it is
    reached, measured on a 128 × 128 grid), gathered in one central section,
    as on a real slide; by default lobes spread over the slide, one per 0.9 mm²,
    which leaves about three quarters of it background.
    """

    width: int
    height: int
    mpp: float = 0.5
    seed: int = 0
    tissue: float | None = None
    lobes: list[_Lobe] = field(default_factory=list, repr=False)
    nuclei: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)), repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        um = 1.0 / self.mpp  # level-0 pixels per micrometre
        area_um2 = self.width * self.height * self.mpp**2
        n_lobes = max(2, int(round(area_um2 / 0.9e6)))
        # Lobes spread over the slide by default; with ``tissue`` they gather in a
        # central square of that area, as one section does on a real slide.
        half = 0.4 if self.tissue is None else 0.5 * math.sqrt(self.tissue)
        if self.tissue is not None:
            gx, gy = np.meshgrid((np.arange(128) + 0.5) * self.width / 128,
                                 (np.arange(128) + 0.5) * self.height / 128)
            covered = np.zeros(gx.shape, bool)
        while (len(self.lobes) < n_lobes if self.tissue is None
               else covered.mean() < self.tissue and len(self.lobes) < 50 * n_lobes):
            a = rng.uniform(150, 450) * um
            b = a * rng.uniform(0.5, 1.0)
            k = np.arange(2, 6)
            self.lobes.append(_Lobe(
                cx=rng.uniform(0.5 - half, 0.5 + half) * self.width,
                cy=rng.uniform(0.5 - half, 0.5 + half) * self.height,
                a=a, b=b, theta=rng.uniform(0, math.pi),
                harmonics=np.stack([rng.uniform(0, 0.12, k.size) / k * 2,
                                    rng.uniform(0, 2 * math.pi, k.size)], axis=1)))
            if self.tissue is not None:
                self.lobes[-1].add_to(covered, gx, gy)
        # Nuclei: about one per 150 µm² of tissue, radii 2.5-5 µm.
        n_candidates = int(area_um2 / 150)
        xy = rng.uniform([0, 0], [self.width, self.height], size=(n_candidates, 2))
        inside = self._tissue(xy[:, 0], xy[:, 1])
        xy = xy[inside]
        radii = rng.uniform(2.5, 5.0, size=(len(xy), 1)) * um
        elong = rng.uniform(0.7, 1.0, size=(len(xy), 1))
        self.nuclei = np.hstack([xy, radii, elong])
        self._index: dict[tuple[int, int], np.ndarray] = {}
        if len(self.nuclei):
            cells = (self.nuclei[:, :2] // _CELL).astype(int)
            order = np.lexsort((cells[:, 1], cells[:, 0]))
            cells, idx = cells[order], order
            keys, starts = np.unique(cells, axis=0, return_index=True)
            bounds = list(starts) + [len(idx)]
            for n, key in enumerate(keys):
                self._index[(int(key[0]), int(key[1]))] = idx[bounds[n]:bounds[n + 1]]

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES

    def tissue_fraction(self, step: int = 16) -> float:
        """Fraction of the slide covered by tissue, sampled every ``step`` pixels."""
        ys, xs = np.mgrid[0:self.height:step, 0:self.width:step].astype(float)
        return float(self._tissue(xs.ravel(), ys.ravel()).mean())

    def _tissue(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(x.shape, bool)
        for lobe in self.lobes:
            lobe.add_to(inside, x, y)
        return inside

    def _nuclei_near(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        margin = 12 / self.mpp
        cx0, cy0 = int((x0 - margin) // _CELL), int((y0 - margin) // _CELL)
        cx1, cy1 = int((x1 + margin) // _CELL), int((y1 + margin) // _CELL)
        found = [self._index[(i, j)] for i in range(cx0, cx1 + 1) for j in range(cy0, cy1 + 1)
                 if (i, j) in self._index]
        return self.nuclei[np.concatenate(found)] if found else self.nuclei[:0]

    def _add_nuclei(self, labels: np.ndarray, darkness: np.ndarray, gx: np.ndarray,
                    gy: np.ndarray) -> None:
        """Mark the nuclei over the region whose pixel centres are ``gx`` × ``gy``
        (level-0 coordinates): label 2 where a nucleus covers tissue, and each pixel's
        darkness the largest any nucleus gives it. All nuclei at once, each in a box of
        the largest nucleus's size (masked to its own), so that no Python loop runs
        per nucleus."""
        near = self._nuclei_near(gx[0], gy[0], gx[-1], gy[-1])
        if not len(near):
            return
        nx, ny, r, e = near.T
        j0, j1 = np.searchsorted(gx, nx - r), np.searchsorted(gx, nx + r)
        i0, i1 = np.searchsorted(gy, ny - r), np.searchsorted(gy, ny + r)
        some = (j0 < j1) & (i0 < i1)
        if not some.any():
            return
        nx, ny, r, e, i0, i1, j0, j1 = (a[some] for a in (nx, ny, r, e, i0, i1, j0, j1))
        rows = i0[:, None] + np.arange((i1 - i0).max())  # (n, box height)
        cols = j0[:, None] + np.arange((j1 - j0).max())  # (n, box width)
        inside = (rows < i1[:, None])[:, :, None] & (cols < j1[:, None])[:, None, :]
        rows, cols = np.minimum(rows, len(gy) - 1), np.minimum(cols, len(gx) - 1)
        sx = gx[cols][:, None, :] - nx[:, None, None]
        sy = gy[rows][:, :, None] - ny[:, None, None]
        d = np.hypot(sx / r[:, None, None], sy / (r * e)[:, None, None])
        ii, jj = np.broadcast_arrays(rows[:, :, None], cols[:, None, :])
        hit = inside & (d < 1) & (labels[ii, jj] > 0)
        labels[ii[hit], jj[hit]] = 2
        np.maximum.at(darkness, (ii[hit], jj[hit]), (1 - 0.35 * d[hit] ** 2).astype(np.float32))

    def render(self, x: int, y: int, w: int, h: int, downsample: float = 1.0,
               noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """RGB ``(h, w, 3)`` uint8 and labels ``(h, w)`` of a region of the level with
        ``downsample``; ``x, y`` are in that level's pixels."""
        gx = (x + np.arange(w) + 0.5) * downsample
        gy = (y + np.arange(h) + 0.5) * downsample
        X, Y = np.meshgrid(gx, gy)
        labels = self._tissue(X.ravel(), Y.ravel()).reshape(h, w).astype(np.uint8)
        darkness = np.zeros((h, w), np.float32)
        self._add_nuclei(labels, darkness, gx, gy)
        texture = 0.5 + 0.25 * (np.sin(X / (9 / self.mpp)) * np.cos(Y / (13 / self.mpp))
                                + np.sin((X + Y) / (31 / self.mpp)))
        rgb = np.empty((h, w, 3), np.float32)
        rgb[:] = _BACKGROUND
        tissue = labels > 0
        rgb[tissue] = _EOSIN * (0.9 + 0.15 * texture[tissue, None]) - 12
        nuc = darkness > 0
        rgb[nuc] = (darkness[nuc, None] * _HAEMATOXYLIN
                    + (1 - darkness[nuc, None]) * rgb[nuc])
        if noise:
            rng = np.random.default_rng([self.seed, x, y, int(downsample * 16)])
            rgb += rng.normal(0, 4, size=rgb.shape).astype(np.float32)
        return np.clip(rgb, 0, 255).astype(np.uint8), labels

    def level_shapes(self, min_size: int = 512) -> list[tuple[int, int, int]]:
        """``(height, width, downsample)`` of each pyramid level (factor 2)."""
        shapes = [(self.height, self.width, 1)]
        while max(shapes[-1][:2]) > min_size:
            h, w, d = shapes[-1]
            shapes.append((math.ceil(h / 2), math.ceil(w / 2), d * 2))
        return shapes


def _tile(slide: SyntheticSlide, h: int, w: int, d: int, tile: int,
          corner: tuple[int, int]) -> np.ndarray:
    """The tile at ``corner`` (y, x) of the level ``h × w`` with downsample ``d``, a whole
    tile (white beyond the level's edge)."""
    ty, tx = corner
    th, tw = min(tile, h - ty), min(tile, w - tx)
    rgb, _ = slide.render(tx, ty, tw, th, d)
    if (th, tw) != (tile, tile):
        padded = np.full((tile, tile, 3), 255, np.uint8)
        padded[:th, :tw] = rgb
        rgb = padded
    return rgb


def _tiles(slide: SyntheticSlide, h: int, w: int, d: int, tile: int,
           pool: ThreadPoolExecutor, ahead: int) -> Iterator[np.ndarray]:
    """The level's tiles in row order, rendered on ``pool``'s threads (numpy works
    outside the GIL) at most ``ahead`` tiles ahead of the writer, so memory stays a few
    tiles."""
    corners = ((ty, tx) for ty in range(0, h, tile) for tx in range(0, w, tile))
    render = partial(_tile, slide, h, w, d, tile)
    queued = deque(pool.submit(render, c) for c in islice(corners, ahead))
    while queued:
        rgb = queued.popleft().result()
        if (corner := next(corners, None)) is not None:
            queued.append(pool.submit(render, corner))
        yield rgb


def write_slide(slide: SyntheticSlide, path: str | Path, tile: int = 256,
                quality: int = 90) -> Path:
    """Write ``slide`` as a pyramidal, tiled, JPEG-compressed TIFF (successive pages).

    Pixel size is stored in the resolution tags (pixels per centimetre), which
    tifffile and OpenSlide both read. The file is written under a temporary
    name and renamed when complete.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    levels = slide.level_shapes()
    big = slide.width * slide.height * 3 > 2**31
    workers = available_cores()
    with tifffile.TiffWriter(tmp, bigtiff=big) as tw, ThreadPoolExecutor(workers) as pool:
        for n, (h, w, d) in enumerate(levels):
            per_cm = 1e4 / (slide.mpp * d)
            tw.write(
                _tiles(slide, h, w, d, tile, pool, 2 * workers), shape=(h, w, 3), dtype=np.uint8,
                tile=(tile, tile), photometric="rgb", compression="jpeg",
                compressionargs={"level": quality}, subfiletype=0 if n == 0 else 1,
                resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                description=(f"wfe synthetic slide|seed = {slide.seed}|MPP = {slide.mpp}"
                             if n == 0 else None),
                metadata=None,
            )
    tmp.replace(path)
    return path
