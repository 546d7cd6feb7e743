"""Errors a user can act on.

Every error meant for a person carries what went wrong, where (a file, a stage)
and what to do about it, so the CLI can print it as one line without a
traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "PluginError", "WfeError", "WorkflowError"]


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
