"""Which memory layout a model runs faster in on this machine: measured once, remembered.

``channels_last: auto`` times a window of the card's size in both layouts when a model
loads (:func:`fastest`) and keeps the faster: channels-last sped the demo's MobileNetV3
U-Net up 1.4× on a CPU and has been seen to slow MobileNetV2 2.4× on a GPU. The answer
depends on the network, the device, torch and its thread count, not on the image, so it
is kept in ``layouts.json`` in wfe's cache folder (``WFE_CACHE_DIR``, else
``$XDG_CACHE_HOME/wfe``, else ``~/.cache/wfe``) under a key made of all of them, and
the next process that loads the same weights on the same machine reads it instead of
timing again. On the 2-core development machine the timing and the slower first pass
that followed its layout switches cost 0.2-0.35 s of every ``wfe run``. Delete the file
(or give ``channels_last: true`` / ``false``) to decide again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wfe.cache import cache_dir, recall, remember
from wfe.cores import cpu_name

__all__ = ["channels_last_is_faster", "choose_channels_last", "fastest",
           "set_channels_last"]

log = logging.getLogger("wfe")

LAYOUTS = "layouts.json"


def fastest(candidates: dict[str, Callable[[], Any]], rounds: int = 2,
            clock: Callable[[], float] = time.perf_counter) -> str:
    """The name of the fastest of ``candidates`` (callables doing the same work).

    Each runs once untimed (kernel selection, caches), then they take turns ``rounds``
    times and each one's best time counts, so a moment of load on a shared machine
    does not decide.
    """
    for run in candidates.values():
        run()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, run in candidates.items():
            start = clock()
            run()
            best[name] = min(best[name], clock() - start)
    return min(best, key=best.__getitem__)


def set_channels_last(model: Any, on: bool) -> None:
    """Put a loaded model's network (and its inputs, from now on) in channels-last or the
    default layout."""
    import torch

    model.net.to(memory_format=torch.channels_last if on else torch.contiguous_format)
    model.channels_last = on


def channels_last_is_faster(model: Any, window: Any) -> bool:
    """Whether ``model`` runs ``window`` (a batch of one blank window) faster in
    channels-last than in the default layout, timed now; leaves the network in the
    layout timed last."""
    import torch

    def timed(on: bool) -> Callable[[], None]:
        def run() -> None:
            set_channels_last(model, on)
            model.predict(window)
            if model.device.startswith("cuda"):
                torch.cuda.synchronize(model.device)
        return run

    return fastest({"channels_last": timed(True), "contiguous": timed(False)}) == "channels_last"


def _processor(device: str) -> str:
    """What runs the model: the GPU's name, else the CPU's model name."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def layout_key(model: Any, weights: Path) -> str:
    """What the layout decision depends on: the weights' content, the window, the
    precision, the device and its processor, torch's version and thread count."""
    import torch

    with weights.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return "|".join(map(str, (digest, model.card.window, model.card.in_channels,
                              model.autocast, model.device, _processor(model.device),
                              torch.__version__, torch.get_num_threads())))


def choose_channels_last(model: Any, weights: Path, window: Any) -> bool:
    """Whether ``model`` (loaded from ``weights``) should run channels-last here: as
    remembered for this model and machine, else timed now and remembered."""
    key = layout_key(model, weights)
    remembered = recall(LAYOUTS).get(key)
    if isinstance(remembered, bool):
        log.info("%s: channels-last %s (remembered in %s)", weights.name,
                 "on" if remembered else "off", cache_dir() / LAYOUTS)
        return remembered
    faster = channels_last_is_faster(model, window)
    log.info("%s: channels-last %s (timed at load)", weights.name, "on" if faster else "off")
    remember(LAYOUTS, key, faster)
    return faster
