"""Retrieval encoders behind one interface (:class:`SequentialRetrievalModel`).

``build_model(cfg, num_items)`` picks HSTU or SASRec from ``cfg.kind``.
"""

from __future__ import annotations

from torch import nn

from genrec.config import ModelConfig
from genrec.models.base import LayerKV, SequentialRetrievalModel
from genrec.models.embeddings import InputEmbedding
from genrec.models.hstu import HSTU, HSTULayer
from genrec.models.sasrec import SASRec

_KINDS: dict[str, type[SequentialRetrievalModel]] = {"hstu": HSTU, "sasrec": SASRec}


def build_model(cfg: ModelConfig, num_items: int) -> SequentialRetrievalModel:
    """The encoder ``cfg.kind`` names, over items 1..num_items (0 is padding)."""
    if cfg.kind not in _KINDS:
        raise ValueError(f"model.kind {cfg.kind!r} is unknown; choose one of {sorted(_KINDS)}")
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    return _KINDS[cfg.kind](cfg, num_items)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "HSTU",
    "HSTULayer",
    "InputEmbedding",
    "LayerKV",
    "SASRec",
    "SequentialRetrievalModel",
    "build_model",
    "count_parameters",
]
