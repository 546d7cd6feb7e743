"""Descriptors that plugins return from their hooks.

A descriptor names a contribution and points at the code that implements it
with a ``"module:attribute"`` string. The engine imports that target only when
the contribution is used, so listing plugins or validating a workflow never
imports torch, OpenSlide or any other heavy library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from wfe.errors import PluginError

__all__ = [
    "ArchitectureSpec",
    "CommandSpec",
    "ReaderSpec",
    "StageSpec",
    "WriterSpec",
    "load_target",
]


def load_target(target: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise PluginError(f"target {target!r} is not of the form 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import {module_name!r} for {target!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from exc


@dataclass(frozen=True)
class _Spec:
    name: str
    target: str
    summary: str = ""

    def load(self) -> Any:
        """Import and return the implementation."""
        return load_target(self.target)


@dataclass(frozen=True)
class StageSpec(_Spec):
    """A stage: ``target`` is a :class:`wfe.Stage` subclass."""


@dataclass(frozen=True)
class ReaderSpec(_Spec):
    """An image reader: ``target`` is a class with ``probe(path)`` and ``open(path, **opts)``.

    ``suffixes`` only order the probing (readers that claim the suffix are
    probed first); the probe decides. Higher ``priority`` wins when several
    readers accept a file (the most specific reader should have the highest).
    """

    suffixes: tuple[str, ...] = ()
    priority: int = 0


@dataclass(frozen=True)
class WriterSpec(_Spec):
    """A writer: ``target`` is a class with ``write(artifact, path, **opts)``.

    ``format`` is the name used in ``write`` stages (``format: ome-zarr``);
    ``suffixes`` let the path's suffix choose the writer when ``format`` is
    omitted.
    """

    format: str = ""
    suffixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchitectureSpec(_Spec):
    """A network architecture: ``target`` is ``build(card) -> torch.nn.Module``."""


@dataclass(frozen=True)
class CommandSpec(_Spec):
    """A CLI sub-command: ``target`` is a plain function that typer wraps."""
