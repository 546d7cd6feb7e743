"""wfe's cache folder: small JSON files of what one process measured and the next can
reuse instead of measuring again (a model's faster memory layout, the heap a workflow's
first input needs).

Everything in it can be deleted at any time: a missing, unreadable or unwritable file
only means measuring again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "recall", "remember"]

log = logging.getLogger("wfe")


def cache_dir() -> Path:
    """wfe's cache folder: ``WFE_CACHE_DIR``, else ``$XDG_CACHE_HOME/wfe``, else
    ``~/.cache/wfe``."""
    if os.environ.get("WFE_CACHE_DIR"):
        return Path(os.environ["WFE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wfe"


def recall(name: str) -> dict[str, Any]:
    """The entries of the cache file ``name`` (e.g. ``"layouts.json"``); empty when it is
    missing or unreadable."""
    try:
        data = json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(name: str, key: str, value: Any) -> None:
    """Set ``key`` in the cache file ``name``, written whole under a temporary name and
    renamed: a reader never sees half a file; of two processes storing at once, one's
    entry may be lost (and measured again later). A cache that cannot be written is
    logged (debug) and otherwise ignored."""
    path = cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**recall(name), key: value}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not remember %s in %s: %s", key, path, exc)
