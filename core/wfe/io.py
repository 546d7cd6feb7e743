"""Choosing a reader for an input: by probing, in priority order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wfe.errors import InputError, WfeError
from wfe.plugins import Registry
from wfe.raster import Raster

__all__ = ["open_image"]


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]).lower() if path.name.endswith(".zarr") else path.suffix.lower()


def open_image(path: Path, registry: Registry, reader: str | None = None, **opts: Any) -> Raster:
    """Open ``path`` lazily with the reader named, or the first whose probe accepts it.

    Raises :class:`InputError` (one line, naming the file) when the file is
    missing, no reader accepts it, or the chosen reader fails to open it.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file", "check the path or the input glob")
    specs = [registry.reader(reader)] if reader else registry.readers_in_probe_order(_suffix(path))
    tried = []
    for spec in specs:
        impl = spec.load()()
        tried.append(spec.name)
        try:
            accepted = reader is not None or impl.probe(path)
        except Exception:  # noqa: BLE001 - a probe that breaks means "not mine"
            accepted = False
        if not accepted:
            continue
        try:
            return impl.open(path, **opts)
        except WfeError:
            raise
        except Exception as exc:  # noqa: BLE001 - library errors become one line
            raise InputError(f"{path}: reader {spec.name!r} cannot open it ({exc})",
                             "check that the file is complete and not corrupt") from exc
    raise InputError(f"{path}: not an image any installed reader accepts (tried {', '.join(tried)})",
                     "check that the file is a complete image, or install a reader plugin for it")
