"""Python's cyclic garbage collector around the imports of large libraries.

Importing torch, torchvision, timm and segmentation_models_pytorch (what loading a
model does) creates about 400,000 objects that live as long as the process. While
they are being created the collector keeps finding its oldest generation grown by a
quarter and walks all of it again: ``wfe run`` of the demo model over a 4096² slide
spent 0.71 s of its 6.7 s in seven full collections, every one of them inside those
imports. :func:`collection_paused` keeps the collector off while a block runs and then
freezes what exists (:func:`gc.freeze`), so that later collections, during a run's
compute too, leave those objects out. Objects are still freed by reference counting
as usual; only cycles created inside the block stay until the process ends (imports
make few).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collection_paused"]

_lock = threading.Lock()
_depth = 0  # blocks inside collection_paused, in every thread
_was_enabled = False  # whether the collector ran before the outermost block


@contextmanager
def collection_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off; then freeze every object that
    exists and switch the collector back on if it was on. Nested and concurrent
    blocks count as one: the collector resumes when the last one ends.

    Example::

        with collection_paused():
            import torch  # 0.8 s of imports without full collections

    """
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.freeze()
                if _was_enabled:
                    gc.enable()
