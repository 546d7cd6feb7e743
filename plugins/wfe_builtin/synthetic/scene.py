"""A deterministic synthetic satellite scene: 4 bands (blue, green, red, near-infrared).

Fields of vegetation (high NIR), lakes (low everything, NIR lowest) and bare
soil, at 10 m in UTM zone 33N, with a strip of nodata along one edge as a
swath border has. Written as a tiled, compressed GeoTIFF with internal
overviews (a COG when ``cog=True``), by windows, so any size fits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticScene", "write_scene"]

CLASSES = ("background", "water", "vegetation")
#: Typical surface reflectance × 10,000 per class: blue, green, red, NIR.
_REFLECTANCE = {0: (900, 1100, 1300, 2200), 1: (600, 700, 500, 300), 2: (400, 800, 500, 4200)}


@dataclass(frozen=True)
class SyntheticScene:
    """A scene of ``width`` × ``height`` pixels of ``gsd`` metres; ``seed`` fixes it."""

    width: int
    height: int
    gsd: float = 10.0
    seed: int = 0
    origin: tuple[float, float] = (500_000.0, 5_000_000.0)
    crs: str = "EPSG:32633"
    nodata_fraction: float = 0.1

    def _shapes(self) -> list[tuple[int, float, float, float, float]]:
        """(class, centre y, centre x, radius y, radius x) in level-0 pixels."""
        rng = np.random.default_rng(self.seed)
        n = max(4, int(self.width * self.height / 150_000))
        out = []
        for _ in range(n):
            cls = int(rng.integers(1, 3))
            out.append((cls, rng.uniform(0, self.height), rng.uniform(0, self.width),
                        rng.uniform(20, 120), rng.uniform(20, 120)))
        return out

    def labels(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Class of each pixel of the window (0 background, 1 water, 2 vegetation)."""
        ys = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
        xs = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
        out = np.zeros((h, w), np.uint8)
        for cls, cy, cx, ry, rx in self._shapes():
            if cy + ry < y0 or cy - ry > y0 + h or cx + rx < x0 or cx - rx > x0 + w:
                continue
            out[((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1] = cls
        return out

    def valid(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """False in the nodata strip along the left edge (a diagonal swath border)."""
        ys = np.arange(y0, y0 + h)[:, None]
        xs = np.arange(x0, x0 + w)[None, :]
        border = self.nodata_fraction * self.width * (1 - ys / (2 * max(self.height, 1)))
        return xs >= border

    def bands(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """uint16 reflectance ``(4, h, w)`` with 0 (nodata) outside the swath."""
        labels = self.labels(y0, x0, h, w)
        table = np.array([_REFLECTANCE[c] for c in range(3)], np.float32)  # (3, 4)
        out = table[labels].transpose(2, 0, 1)
        ys = np.arange(y0, y0 + h, dtype=np.float64)[:, None]
        xs = np.arange(x0, x0 + w, dtype=np.float64)[None, :]
        # Per-pixel texture from the coordinates alone, so any window gives the same pixels.
        noise = np.modf(np.sin(xs * 12.9898 + ys * 78.233 + self.seed) * 43758.5453)[0]
        out = out * (1 + 0.1 * noise.astype(np.float32))[None]
        out = np.clip(out, 1, 10_000).astype(np.uint16)
        out[:, ~self.valid(y0, x0, h, w)] = 0
        return out

    @property
    def transform(self) -> tuple[float, ...]:
        x, y = self.origin
        return (self.gsd, 0.0, x, 0.0, -self.gsd, y)


def write_scene(path: Path, scene: SyntheticScene, *, tile: int = 256, cog: bool = False,
                compress: str = "deflate", overviews: tuple[int, ...] = (2, 4, 8)) -> Path:
    """Write ``scene`` as a tiled GeoTIFF with overviews (a COG if ``cog``)."""
    import rasterio
    from affine import Affine
    from rasterio.shutil import copy as rio_copy
    from rasterio.windows import Window

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.tif") if cog else path
    profile = {"driver": "GTiff", "width": scene.width, "height": scene.height, "count": 4,
               "dtype": "uint16", "crs": scene.crs, "transform": Affine(*scene.transform),
               "nodata": 0, "tiled": True, "blockxsize": tile, "blockysize": tile,
               "compress": compress}
    with rasterio.open(tmp, "w", **profile) as dst:
        for y0 in range(0, scene.height, tile):
            for x0 in range(0, scene.width, tile):
                h, w = min(tile, scene.height - y0), min(tile, scene.width - x0)
                dst.write(scene.bands(y0, x0, h, w), window=Window(x0, y0, w, h))
        for i, name in enumerate(("blue", "green", "red", "nir"), start=1):
            dst.set_band_description(i, name)
        if overviews and not cog:
            dst.build_overviews(list(overviews), rasterio.enums.Resampling.average)
    if cog:
        rio_copy(tmp, path, driver="COG", compress=compress, blocksize=tile,
                 overview_resampling="average")
        tmp.unlink()
    return path
