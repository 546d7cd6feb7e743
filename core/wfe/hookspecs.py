"""The plugin API: every hook a wfe plugin may implement.

A plugin is any installed distribution that declares an entry point in the
group ``wfe``; the entry point names a module (or object) holding functions
decorated with :data:`hookimpl`. wfe calls every implementation of a hook and
merges the results; none of these hooks is ``firstresult``.

Hooks return *descriptors* (:mod:`wfe.specs`), never the implementation
itself: each descriptor names a ``"module:attribute"`` target that wfe imports
on first use. Keep the module your entry point names light (no torch, no
OpenSlide at import time) so that ``wfe plugins`` and ``wfe validate`` stay fast.

Names must be unique across plugins: two plugins contributing the same stage,
reader, writer format, architecture or command is an error naming both.

Example ``pyproject.toml`` of a plugin::

    [project.entry-points.wfe]
    my_plugin = "my_plugin"
"""

from __future__ import annotations

import pluggy

from wfe.specs import ArchitectureSpec, CommandSpec, ReaderSpec, StageSpec, WriterSpec

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "wfe"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorate your plugin's hook functions with this marker.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def wfe_stages() -> list[StageSpec]:
    """Contribute workflow stages (``uses:`` names in YAML).

    The target is a :class:`wfe.Stage` subclass with a ``name``, a pydantic
    ``Params`` model (its YAML schema: fields typed :data:`wfe.Ref` name other
    stages' outputs) and ``run(ctx, **inputs) -> dict[str, artifact]``.

    Example::

        @hookimpl
        def wfe_stages():
            return [StageSpec("gamma", "my_plugin.gamma:GammaStage", "gamma-correct an image")]
    """


@hookspec
def wfe_readers() -> list[ReaderSpec]:
    """Contribute image readers.

    The target class has ``probe(path) -> bool`` (cheap, but it must decode a
    pixel where opening alone proves nothing) and ``open(path, **opts) -> Raster``
    (lazy: no pixel read until computed). Readers are chosen by probing, in
    order of ``priority`` (highest first); ``suffixes`` only order the probes.

    Example::

        @hookimpl
        def wfe_readers():
            return [ReaderSpec("czi", "my_plugin.czi:CziReader", suffixes=(".czi",), priority=50)]
    """


@hookspec
def wfe_writers() -> list[WriterSpec]:
    """Contribute output writers (``format:`` of the ``write`` stage).

    The target class has ``write(artifact, path, **opts) -> Sink``: it returns
    the lazy work to do (a :class:`wfe.sink.Sink`), which the runner computes
    together with the other sinks of the same input, then finalises (renames
    the temporary output into place).

    Example::

        @hookimpl
        def wfe_writers():
            return [WriterSpec("csv-stats", "my_plugin.stats:CsvWriter", format="csv",
                               suffixes=(".csv",))]
    """


@hookspec
def wfe_architectures() -> list[ArchitectureSpec]:
    """Contribute network architectures that model cards can name.

    The target is ``build(card: ModelCard) -> torch.nn.Module``; the card's
    ``architecture`` field selects it, and the weights are then loaded strictly
    from the card's safetensors file.

    Example::

        @hookimpl
        def wfe_architectures():
            return [ArchitectureSpec("TinyNet", "my_plugin.nets:build_tiny")]
    """


@hookspec
def wfe_commands() -> list[CommandSpec]:
    """Contribute ``wfe`` sub-commands.

    The target is a function whose typed parameters typer turns into
    arguments and options; its docstring is the command's help.

    Example::

        @hookimpl
        def wfe_commands():
            return [CommandSpec("convert-czi", "my_plugin.cli:convert", "convert a CZI file")]
    """
