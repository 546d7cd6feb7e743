"""Progress bars: overall (inputs) and per input (dask tasks), drawn with rich."""

from __future__ import annotations

from typing import Any

from dask.callbacks import Callback
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["DaskProgress", "make_progress"]


def make_progress(console: Console | None = None) -> Progress:
    """A rich Progress with the columns wfe uses; disabled when not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class DaskProgress(Callback):
    """Advances a rich task as dask finishes tasks of the current compute call."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        super().__init__()
        self.progress = progress
        self.task = task

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.progress.update(self.task, total=total, completed=0)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self.progress.advance(self.task)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        task = self.progress.tasks[self.task] if self.task < len(self.progress.tasks) else None
        if task is not None and not errored and task.total is not None:
            self.progress.update(self.task, completed=task.total)
