"""The compressed tiles of a level, for a stage that can decode them where it computes.

A reader whose level is stored as independently compressed tiles (JPEG in a tiled
TIFF) may describe them with :class:`EncodedTiles`; a stage whose model runs on a GPU
can then send the compressed bytes there and decode them on the GPU (nvJPEG), instead
of decoding on the CPU's cores and sending the pixels: on a GPU the CPU's decoding,
not the model, is what limits the speed (docs/inference.md, On a GPU).

The engine decodes nothing itself: the description travels in the Raster's
``attrs["encoded"]``, keyed by the name of the level's dask array, so it holds exactly
as long as the array is the reader's own (a resampled or cropped level has another
name, and no description). Example, in a reader::

    level = lazy_blocks(...)
    tiles = EncodedTiles("jpeg", level.shape, (256, 256), partial(my_streams, path, 0))
    Raster(levels=[level], attrs={"encoded": {level.name: tiles}, ...})

and in a stage::

    tiles = encoded_tiles(image, image.levels[0])
    if tiles is not None:
        indices, boxes = tiles.under(slice(0, 600), slice(0, 600))
        streams = tiles.fetch(indices)   # complete JPEG streams, one per tile
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EncodedTiles", "encoded_tiles"]

Fetch = Callable[[Sequence[tuple[int, int]]], list[bytes]]


@dataclass(frozen=True)
class EncodedTiles:
    """A level stored as a grid of independently compressed tiles.

    Attributes
    ----------
    codec
        How each tile is compressed: ``"jpeg"`` (a complete JPEG stream, its tables
        included, decoding to ``tile`` pixels with the level's channels).
    shape
        The level's ``(c, y, x)``.
    tile
        Pixels per tile, ``(height, width)``; tiles at the right and bottom edges
        decode to a whole tile, of which the part inside the level counts.
    fetch
        ``fetch([(row, col), ...])``: the tiles' compressed bytes, in that order.
        Picklable (a module-level function, or a ``functools.partial`` of one), and
        safe to call from several threads. A tile never written is ``b""``.
    fill
        The value the reader gives every pixel of a tile never written (0 for black,
        255 where the format makes such tiles white, as OpenSlide does).
    """

    codec: str
    shape: tuple[int, int, int]
    tile: tuple[int, int]
    fetch: Fetch
    fill: int = 0

    def under(self, ys: slice, xs: slice) -> tuple[list[tuple[int, int]],
                                                    list[tuple[slice, slice, slice, slice]]]:
        """The tiles under the region ``[ys, xs]`` (plain slices inside the level), and
        for each, where its part lies: ``(rows in the region, columns in the region,
        rows in the tile, columns in the tile)``."""
        th, tw = self.tile
        indices, boxes = [], []
        for row in range(ys.start // th, -(-ys.stop // th)):
            for col in range(xs.start // tw, -(-xs.stop // tw)):
                y0, y1 = max(ys.start, row * th), min(ys.stop, (row + 1) * th)
                x0, x1 = max(xs.start, col * tw), min(xs.stop, (col + 1) * tw)
                indices.append((row, col))
                boxes.append((slice(y0 - ys.start, y1 - ys.start),
                              slice(x0 - xs.start, x1 - xs.start),
                              slice(y0 - row * th, y1 - row * th),
                              slice(x0 - col * tw, x1 - col * tw)))
        return indices, boxes


def encoded_tiles(raster: Any, array: Any) -> EncodedTiles | None:
    """The compressed tiles behind ``array`` (a level of ``raster``, a Raster), if its
    reader described them and ``array`` is still the reader's own."""
    return raster.attrs.get("encoded", {}).get(getattr(array, "name", None))
