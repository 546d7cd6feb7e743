"""Errors a user can act on.

Every error meant for a person carries what went wrong, where (a file, a stage)
and what to do about it, so the CLI can print it as one line without a
traceback.
"""

from __future__ import annotations

import errno
import sqlite3

__all__ = ["InputError", "NoSpaceError", "PluginError", "WfeError", "WorkflowError",
           "is_out_of_space"]


class WfeError(Exception):
    """An error with a message for the user and, optionally, a hint.

    Parameters
    ----------
    message
        What is wrong, naming the file or stage concerned.
    hint
        What to do about it; appended after a semicolon.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        """The one line printed to the user."""
        return f"{self.message}; {self.hint}" if self.hint else self.message


class InputError(WfeError):
    """An input image cannot be used: missing, unreadable, corrupt, mismatched."""


class PluginError(WfeError):
    """Plugins contradict each other (duplicate names) or a target cannot be loaded."""


class WorkflowError(WfeError):
    """A workflow file is invalid; holds every problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class NoSpaceError(WfeError):
    """The disk being written to is full (or the user's quota spent): not the input's
    fault, and every input after it would fail alike, so the run stops there."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling, says the
    disk is full: ``ENOSPC`` or ``EDQUOT``, or SQLite's "database or disk is full"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NoSpaceError):
            return True
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return True
        if isinstance(current, sqlite3.OperationalError) and "disk is full" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False
