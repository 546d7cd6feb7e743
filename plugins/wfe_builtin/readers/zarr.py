"""Zarr (v2 and v3) and OME-Zarr (NGFF 0.4 / 0.5 multiscales) through zarr-python.

An OME-Zarr image gives one level per multiscale dataset, its pixel size from
the ``scale`` transforms and axis units, and channel names from ``omero``.
What wfe itself wrote also gives back its CRS, transform, class names and
colours (``attrs["wfe"]``), so a tiled scene read again has the same geometry.
A plain array is read as ``(y, x)``, ``(c, y, x)`` or ``(y, x, c)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da

from wfe.errors import InputError
from wfe.raster import Raster
from wfe_builtin.readers._common import pick_index

__all__ = ["ZarrReader"]

_UNIT_TO_UM = {"micrometer": 1.0, "micron": 1.0, "nanometer": 1e-3, "millimeter": 1e3,
               "centimeter": 1e4, "meter": 1e6, "angstrom": 1e-4}
#: A leading or trailing axis at most this long is taken for channels in plain arrays.
MAX_CHANNELS = 64


def _multiscales(attrs: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(first multiscale, the OME attributes) for NGFF 0.5 (under "ome") or 0.4."""
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales")
    return (ms[0] if ms else None), ome


def _to_cyx(arr: da.Array, axes: list[str], index: dict[str, int], path: Path) -> da.Array:
    key: list[Any] = []
    kept = []
    for name, n in zip(axes, arr.shape, strict=True):
        if name in ("c", "y", "x"):
            key.append(slice(None))
            kept.append(name)
        else:
            key.append(pick_index(path, name, index, n))
    out = arr[tuple(key)]
    if "y" not in kept or "x" not in kept:
        raise InputError(f"{path}: axes {axes} have no y and x", "write the image with y and x axes")
    if "c" not in kept:
        return out[None] if kept == ["y", "x"] else out.transpose(kept.index("y"), kept.index("x"))[None]
    return out.transpose(*(kept.index(a) for a in ("c", "y", "x")))


def _plain_axes(shape: tuple[int, ...], path: Path) -> list[str]:
    if len(shape) == 2:
        return ["y", "x"]
    if len(shape) == 3:
        if shape[0] <= MAX_CHANNELS:
            return ["c", "y", "x"]
        if shape[2] <= MAX_CHANNELS:
            return ["y", "x", "c"]
    raise InputError(f"{path}: a plain Zarr array of shape {shape} has no obvious (c, y, x)",
                     "write it as OME-Zarr with named axes")


class ZarrReader:
    """zarr reader: OME-Zarr multiscale images and label images, and plain Zarr arrays."""

    name = "zarr"

    def probe(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        return any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))

    def open(self, path: Path, index: dict[str, int] | None = None, mpp: float | None = None,
             **opts: Any) -> Raster:
        import zarr

        index = {k.lower(): v for k, v in (index or {}).items()}
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):
            axes = _plain_axes(node.shape, path)
            level = _to_cyx(da.from_zarr(node), axes, index, path)
            return Raster(levels=[level], pixel_size=None if mpp is None else [mpp],
                          attrs={"source": str(path), "reader": self.name, "vendor": "zarr"})
        attrs = dict(node.attrs)
        ms, ome = _multiscales(attrs)
        if ms is None:
            arrays = sorted(node.array_keys())
            raise InputError(f"{path}: a Zarr group without OME multiscales metadata",
                             f"open one of its arrays ({', '.join(arrays[:5]) or 'none'}) as "
                             "path/NAME")
        axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", ["c", "y", "x"])]
        units = {a["name"]: a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict)}
        levels, scales = [], []
        for ds in ms["datasets"]:
            arr = node[ds["path"]]
            levels.append(_to_cyx(da.from_zarr(arr), axes, index, path))
            scale = next((t["scale"] for t in ds.get("coordinateTransformations", [])
                          if t.get("type") == "scale"), [1.0] * len(axes))
            scales.append(float(scale[axes.index("x")]))
        wfe = attrs.get("wfe", {})
        channels = wfe.get("channels") or [
            str(c.get("label", f"c{i}")) for i, c in enumerate(ome.get("omero", {}).get("channels", []))]
        if len(channels) != levels[0].shape[0]:
            channels = []
        crs, transform, pixel_size = wfe.get("crs"), wfe.get("transform"), None
        unit = units.get("x")
        if crs is None and (mpp or unit in _UNIT_TO_UM):
            pixel_size = [mpp * s / scales[0] if mpp else s * _UNIT_TO_UM[str(unit)] for s in scales]
        label_meta = attrs.get("image-label", ome.get("image-label", {}))
        extra = {k: wfe[k] for k in ("classes", "colors") if k in wfe}
        if label_meta and "classes" not in extra:
            extra["colors"] = [c.get("rgba") for c in label_meta.get("colors", [])]
        return Raster(levels=levels, pixel_size=pixel_size, crs=crs,
                      transform=None if transform is None else tuple(transform),
                      channels=tuple(channels),
                      attrs={"source": str(path), "reader": self.name,
                             "vendor": f"ome-zarr {ome.get('version', ms.get('version', ''))}".strip(),
                             **({"crs_unit": wfe["crs_unit"]} if "crs_unit" in wfe else {}),
                             **extra})
