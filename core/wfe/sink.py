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
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Sink", "TemporaryOutput", "chunks_of", "remove_output", "temporary_outputs"]

#: What :class:`TemporaryOutput` names its work in progress: ``.NAME.xxxxxxxx.partial``.
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.partial$")


def chunks_of(*arrays: Any) -> list[Any]:
    """One Delayed per chunk of each dask array, sharing the arrays' keys.

    Pass these, never the arrays themselves, to ``dask.delayed`` functions that must
    run after the arrays: ``delayed`` optimises an array it is given on its own graph
    and renames its keys, so its chunks would be computed again rather than shared
    with the rest of the run.
    """
    return [d for a in arrays for d in a.to_delayed(optimize_graph=False).ravel()]


@dataclass
class Sink:
    """Lazy output work plus what to do once it is computed."""

    path: Path
    work: list[Any] = field(default_factory=list)
    finalize: Callable[[], None] = lambda: None
    abort: Callable[[], None] = lambda: None
    #: Figures the writer fills in while computing or finalising (e.g. per-class
    #: statistics); recorded in run.json under the writing stage's id.
    summary: dict[str, Any] = field(default_factory=dict)
    #: The stage that added this sink (set by ``StageContext.add_sink``).
    stage: str = ""


class TemporaryOutput:
    """A temporary name beside ``final`` that is renamed to ``final`` when complete.

    An existing ``final`` is replaced only when ``overwrite`` is true; that
    check happens before any pixel is computed.
    """

    def __init__(self, final: Path, overwrite: bool, temp_dir: Path | None = None) -> None:
        """``temp_dir``: where the temporary output goes (default: beside ``final``), for
        outputs whose final folder does not exist until another output is committed."""
        from wfe.errors import WfeError

        self.final = final
        if final.exists() and not overwrite:
            raise WfeError(f"{final} exists already",
                           "set overwrite: true on the write stage to replace it")
        where = temp_dir or final.parent
        try:
            where.mkdir(parents=True, exist_ok=True)
            probe = where / f".{final.name}.{uuid.uuid4().hex[:8]}.probe"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise WfeError(f"cannot write to {where} ({exc.strerror or exc})",
                           "choose an output folder you can write to (-o DIR), or fix its "
                           "permissions") from None
        self.temp = where / f".{final.name}.{uuid.uuid4().hex[:8]}.partial"

    def commit(self) -> None:
        """Move the finished temporary output to its final name."""
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(self.final, old)
            os.replace(self.temp, self.final)
            remove_output(old)
        else:
            os.replace(self.temp, self.final)

    def discard(self) -> None:
        """Remove the temporary output after a failure."""
        remove_output(self.temp)


def temporary_outputs(folder: Path) -> list[Path]:
    """The temporary outputs (:class:`TemporaryOutput`) anywhere under ``folder``: after
    a process was killed, what it was writing."""
    if not folder.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        found += [Path(dirpath) / n for n in [*dirnames, *filenames] if _TEMPORARY.match(n)]
        dirnames[:] = [d for d in dirnames if not _TEMPORARY.match(d)]
    return found


def remove_output(path: Path) -> None:
    """Remove an output, a folder (a Zarr store) or a file, if it exists."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
