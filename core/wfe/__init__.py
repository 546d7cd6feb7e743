"""wfe: a plugin-based workflow engine for images too large for memory.

The engine (this package) knows nothing of file formats or models; those come
from plugins (``wfe_builtin`` and any installed distribution with a ``wfe``
entry point) and reach the engine only through the hooks in
:mod:`wfe.hookspecs`.
"""

from wfe.errors import WfeError
from wfe.hookspecs import hookimpl
from wfe.raster import Raster
from wfe.specs import ArchitectureSpec, CommandSpec, ReaderSpec, StageSpec, WriterSpec
from wfe.stage import Ref, Stage, StageContext

__all__ = [
    "ArchitectureSpec",
    "CommandSpec",
    "Raster",
    "ReaderSpec",
    "Ref",
    "Stage",
    "StageContext",
    "StageSpec",
    "WfeError",
    "WriterSpec",
    "hookimpl",
]
__version__ = "0.1.0"
