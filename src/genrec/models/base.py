"""The one interface every retrieval model implements, so one trainer and one evaluator
serve them all (RecBole's lesson).

A model encodes a jagged batch into one L2-normalised vector per input token, and exposes
its L2-normalised item embeddings; scores are dot products divided by a temperature, which
belongs to the loss and the evaluator, not the model.

``forward(batch, num_candidates=..., return_kv=True)`` is the hook for ranking with M-FALCON
(SPEC §5): the last ``num_candidates[b]`` tokens of sequence b attend to the history and to
themselves only, and each layer's keys and values come back for a KV cache.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.data.batching import JaggedBatch

# One layer's attention keys and values over the batch's tokens: ([T, H, dqk], [T, H, dv]).
LayerKV = tuple[torch.Tensor, torch.Tensor]


class SequentialRetrievalModel(nn.Module):
    """Base class: ``forward(batch) -> [T, d]`` user vectors, ``item_embeddings(ids)``."""

    num_items: int
    embedding_dim: int

    def forward(
        self,
        batch: JaggedBatch,
        *,
        num_candidates: torch.Tensor | None = None,
        return_kv: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[LayerKV]]:
        """[T, d] L2-normalised user vectors; with ``return_kv`` also per-layer (K, V).

        Args:
            batch: jagged input tokens (``seq_offsets`` [B+1]).
            num_candidates: [B] int or None: trailing candidate tokens per sequence (M-FALCON).
            return_kv: also return one (K [T, H, dqk], V [T, H, dv]) pair per layer.
        """
        raise NotImplementedError

    def last_vectors(self, batch: JaggedBatch) -> torch.Tensor:
        """[B, d]: ``forward(batch)`` at each sequence's last token, the user vector that
        retrieval and evaluation rank items with.

        A model may override this to skip work that only other tokens' outputs need."""
        return self(batch)[batch.last_positions()]

    def item_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised item vectors: [..., d] for `ids`, or [num_items + 1, d] for all."""
        raise NotImplementedError
