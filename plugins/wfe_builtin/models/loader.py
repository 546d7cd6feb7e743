"""Loading a model (card + safetensors) once per process and running it on batches."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from wfe.errors import InputError, WfeError
from wfe.plugins import Registry
from wfe.specs import load_target
from wfe_builtin.models.card import ModelCard, load_card

__all__ = ["LoadedModel", "load_model", "resolve_device", "tta_passes"]


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, then mps, then cpu; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise WfeError("device 'cuda' was asked for but no CUDA device is available",
                       "use --device cpu or auto")
    return device


def _autocast_dtype(precision: str, device: str) -> Any:
    import torch

    if precision == "auto":
        return torch.float16 if device == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@dataclass
class LoadedModel:
    """A network ready for inference, with its card and how to run it."""

    card: ModelCard
    net: Any
    device: str
    autocast: Any
    lock: threading.Lock
    channels_last: bool = False
    mean: Any = None  # normalisation as (1, c, 1, 1) tensors, set once at load
    std: Any = None

    def __post_init__(self) -> None:
        import torch

        norm = self.card.normalize
        self.mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)

    def predict(self, batch: np.ndarray, tta: tuple[str, ...] = ()) -> np.ndarray:
        """Class probabilities ``(n, k, h, w)`` float32 for raw pixels ``(n, c, h, w)``.

        One batch at a time per process: torch already uses every core, so
        reader threads decode the next windows while this runs.
        """
        import torch

        scale = self.card.normalize.scale
        x = (torch.from_numpy(np.ascontiguousarray(batch)).float() / scale - self.mean) / self.std
        views = _tta_views(tta)
        with self.lock, torch.inference_mode():
            x = x.to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            total = None
            for forward, back in views:
                with torch.autocast(device_type=self.device.split(":")[0],
                                    dtype=self.autocast or torch.float32,
                                    enabled=self.autocast is not None):
                    logits = self.net(forward(x))
                probs = back(torch.softmax(logits.float(), dim=1))
                total = probs if total is None else total + probs
            out = (total / len(views)).cpu().numpy()
        if not np.isfinite(out).all():
            raise WfeError(f"model {self.card.name!r} produced NaN or infinite values",
                           "check the weights, or try precision: fp32")
        return out


def tta_passes(tta: tuple[str, ...]) -> int:
    """Forward passes per window under ``tta`` (identity, 3 rotations, 2 flips)."""
    return 1 + 3 * ("rot90" in tta) + 2 * ("flip" in tta)


def _tta_views(tta: tuple[str, ...]) -> list[tuple[Any, Any]]:
    """(forward, inverse) pairs: identity, the rotations, the flips."""
    import torch

    views = [(lambda t: t, lambda t: t)]
    if "rot90" in tta:
        for k in (1, 2, 3):
            views.append((lambda t, k=k: torch.rot90(t, k, (2, 3)),
                          lambda t, k=k: torch.rot90(t, -k, (2, 3))))
    if "flip" in tta:
        for dim in (2, 3):
            views.append((lambda t, d=dim: torch.flip(t, (d,)), lambda t, d=dim: torch.flip(t, (d,))))
    assert len(views) == tta_passes(tta)
    return views


@lru_cache(maxsize=8)
def _load(weights: Path, mtime: float, device: str, precision: str, builder_target: str,
          channels_last: bool, compile: bool) -> LoadedModel:
    import torch
    from safetensors.torch import load_file

    card = load_card(weights)
    net = load_target(builder_target)(card)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - corrupt or not safetensors
        raise InputError(f"{weights}: cannot read weights ({exc})",
                         "the file must be safetensors, saved complete") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise InputError(f"{weights}: weights do not match the card "
                         f"({card.architecture}/{card.encoder}): {detail}",
                         "use the card the weights were saved with") from None
    net.eval().to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile:
        net = torch.compile(net)
    model = LoadedModel(card, net, device, _autocast_dtype(precision, device), threading.Lock(),
                        channels_last)
    # One small forward pass now: kernel selection and lazy initialisation happen
    # here, once per process, instead of inside the first batch of the first input.
    model.predict(np.zeros((1, card.in_channels, card.window, card.window), np.uint8))
    return model


def load_model(weights: Path, device: str, precision: str, registry: Registry, *,
               channels_last: bool = False, compile: bool = False) -> LoadedModel:
    """The model at ``weights``, built once per process (and reloaded if the file changes)."""
    if not weights.exists():
        raise InputError(f"{weights}: model weights not found",
                         "check the model path (the .safetensors beside its card)")
    card = load_card(weights)
    builder = registry.architecture(card.architecture).target
    return _load(weights, weights.stat().st_mtime, resolve_device(device), precision, builder,
                 channels_last, compile)
