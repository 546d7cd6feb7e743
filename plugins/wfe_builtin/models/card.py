"""Model cards: everything needed to rebuild a network, beside its safetensors weights.

A model is ``NAME.safetensors`` plus ``NAME.yaml``. This module imports
neither torch nor smp, so a workflow naming a model validates quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML

from wfe.errors import InputError

__all__ = ["ModelCard", "Normalize", "card_path", "load_card"]


class Normalize(BaseModel):
    """``(pixel / scale - mean) / std`` per channel."""

    model_config = ConfigDict(extra="forbid")
    scale: float = 255.0
    mean: list[float]
    std: list[float]


class ModelCard(BaseModel):
    """The YAML card of a model (see docs/models.md)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    name: str
    architecture: str
    encoder: str
    in_channels: int = Field(gt=0)
    classes: list[str] = Field(min_length=1)
    colors: list[str] | None = None
    normalize: Normalize
    mpp: float | None = Field(default=None, gt=0)
    gsd: float | None = Field(default=None, gt=0)
    window: int = Field(default=512, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        for key in ("mean", "std"):
            n = len(getattr(self.normalize, key))
            if n != self.in_channels:
                raise ValueError(f"normalize.{key} has {n} values for {self.in_channels} channels")
        if self.colors is not None and len(self.colors) != len(self.classes):
            raise ValueError("colors needs one colour per class")
        return self


def card_path(model: Path) -> Path:
    """``x.safetensors`` -> ``x.yaml``; a ``.yaml`` path is returned as is."""
    return model if model.suffix in (".yaml", ".yml") else model.with_suffix(".yaml")


def load_card(model: Path) -> ModelCard:
    """Read and validate the card of ``model`` (the .safetensors or the .yaml path)."""
    path = card_path(model)
    if not path.exists():
        raise InputError(f"{path}: model card not found",
                         f"put the card beside the weights as {path.name}")
    try:
        data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
        card = ModelCard.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path}: invalid model card: {where}: {first['msg']}",
                         "fix the card (see docs/models.md)") from None
    except Exception as exc:  # noqa: BLE001 - YAML errors of any kind
        raise InputError(f"{path}: cannot read model card ({exc})") from None
    weights = path.with_suffix(".safetensors") if card.weights is None else path.parent / card.weights
    return card.model_copy(update={"weights": weights})
