"""Sinks: the only places where pixels are computed.

A writer returns a :class:`Sink` holding lazy work (dask collections or
delayed values) and a ``finalize`` callback. The runner computes the work of
all sinks of one input in a single ``dask.compute`` call, so results shared by
several outputs (the segmentation under both the labels and the overlay) are
computed once; then it calls each ``finalize`` (which renames the temporary
output into place). A sink whose compute failed is never finalised, so no
half-written output ever carries its final name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Sink", "TemporaryOutput"]


@dataclass
class Sink:
    """Lazy output work plus what to do once it is computed."""

    path: Path
    work: list[Any] = field(default_factory=list)
    finalize: Callable[[], None] = lambda: None
    abort: Callable[[], None] = lambda: None


class TemporaryOutput:
    """A temporary name beside ``final`` that is renamed to ``final`` when complete.

    An existing ``final`` is replaced only when ``overwrite`` is true; that
    check happens before any pixel is computed.
    """

    def __init__(self, final: Path, overwrite: bool) -> None:
        from wfe.errors import WfeError

        self.final = final
        if final.exists() and not overwrite:
            raise WfeError(f"{final} exists already",
                           "set overwrite: true on the write stage to replace it")
        final.parent.mkdir(parents=True, exist_ok=True)
        self.temp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")

    def commit(self) -> None:
        """Move the finished temporary output to its final name."""
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(self.final, old)
            os.replace(self.temp, self.final)
            _remove(old)
        else:
            os.replace(self.temp, self.final)

    def discard(self) -> None:
        """Remove the temporary output after a failure."""
        _remove(self.temp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
