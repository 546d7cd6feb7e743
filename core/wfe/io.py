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


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def open_image(path: Path, registry: Registry, reader: str | None = None, **opts: Any) -> Raster:
    """Open ``path`` lazily with the reader named, or the first whose probe accepts it.

    Readers are probed in priority order; a probe decodes a little, so a file a
    library opens but cannot decode is refused there. If an accepting reader then
    fails to open the file, the next accepting reader is tried. A probe raises
    :class:`~wfe.errors.WfeError` itself only when it knows the format and the
    file is unusable (e.g. its header declares more pixels than it holds). Raises
    :class:`InputError` (one line, naming the file) when the file is missing, no
    reader accepts it, or every accepting reader fails.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file", "check the path or the input glob")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty", "copy or download the file again")
    specs = [registry.reader(reader)] if reader else registry.readers_in_probe_order(_suffix(path))
    refused: list[str] = []
    failed: list[tuple[str, BaseException]] = []
    for spec in specs:
        impl = spec.load()()
        try:
            accepted = reader is not None or impl.probe(path)
        except WfeError:
            raise  # the reader knows the format and found the file unusable
        except Exception as exc:  # noqa: BLE001 - a probe that breaks means "not mine"
            refused.append(f"{spec.name}: {_reason(exc)}")
            continue
        if not accepted:
            refused.append(spec.name)
            continue
        try:
            return impl.open(path, **opts)
        except WfeError:
            raise
        except Exception as exc:  # noqa: BLE001 - library errors become one line; try the next
            failed.append((spec.name, exc))
    if failed:
        name, exc = failed[0]
        raise InputError(f"{path}: reader {name!r} cannot open it ({_reason(exc)})",
                         "check that the file is complete and not corrupt") from exc
    detail = "; ".join(sorted(refused, key=lambda r: ":" not in r))  # reasons first
    raise InputError(f"{path}: not an image any installed reader accepts ({detail})",
                     "check that the file is a complete image, or install a reader plugin for it")
