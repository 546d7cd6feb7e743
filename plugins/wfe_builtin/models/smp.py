"""Networks from segmentation-models-pytorch, built from a model card."""

from __future__ import annotations

from typing import Any

from wfe_builtin.models.card import ModelCard

__all__ = ["build"]


def build(card: ModelCard) -> Any:
    """``smp.create_model`` with the card's architecture, encoder and channels; no download."""
    import segmentation_models_pytorch as smp

    return smp.create_model(card.architecture, encoder_name=card.encoder,
                            encoder_weights=None, in_channels=card.in_channels,
                            classes=len(card.classes), **card.params)
