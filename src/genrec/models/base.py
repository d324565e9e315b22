"""The one interface every retrieval model implements, so one trainer and one evaluator
serve them all (RecBole's lesson).

A model encodes a jagged batch into one L2-normalised vector per input token, and exposes
its L2-normalised item embeddings; scores are dot products divided by a temperature, which
belongs to the loss and the evaluator, not the model.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.data.batching import JaggedBatch


class SequentialRetrievalModel(nn.Module):
    """Base class: ``forward(batch) -> [T, d]`` user vectors, ``item_embeddings(ids)``."""

    num_items: int
    embedding_dim: int

    def forward(self, batch: JaggedBatch) -> torch.Tensor:  # [T, d], L2-normalised
        raise NotImplementedError

    def item_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised item vectors: [..., d] for `ids`, or [num_items + 1, d] for all."""
        raise NotImplementedError
