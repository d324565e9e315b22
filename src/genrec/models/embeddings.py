"""Input embeddings shared by HSTU and SASRec (SPEC §3, "Inputs").

    X_0 = Dropout( E[item] · sqrt(d) + P[position] ),   padding tokens (item 0) zeroed

Shape legend: T tokens of a jagged batch, B sequences, d = embedding_dim.

- E, the item table [num_items + 1, d]: normal with std 0.02 truncated at ±2 std (as Meta's
  ``truncated_normal``; the sample std is then ~0.88 × 0.02); row 0 is padding, zero and never
  updated. It is shared between the input and the scoring side.
- P, learned absolute positions [max_seq_len + attn_norm_extra, d]: position 0 is the oldest
  kept event of each sequence. The table has Meta's padded length (211 on MovieLens), leaving
  room for output / candidate slots; it starts as a normal truncated at ±2 std with std
  sqrt(1/d), as Meta's ``LearnablePositionalEmbeddingInputFeaturesPreprocessor``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig
from genrec.ops.dropout import Dropout
from genrec.ops.embedding import input_embedding

L2_EPS = 1e-6
ITEM_INIT_STD = 0.02


def padded_length(cfg: ModelConfig) -> int:
    """Meta's padded sequence length, max_seq_len + attn_norm_extra (211 = 200 + 11).

    It sizes the position tables and is HSTU's default attention normaliser N.
    """
    return cfg.max_seq_len + cfg.attn_norm_extra


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """x / max(‖x‖₂, 1e-6) along the last axis."""
    return F.normalize(x, p=2.0, dim=-1, eps=L2_EPS)


def jagged_positions(
    seq_offsets: torch.Tensor, num_tokens: int, num_candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """[T] position of each token inside its sequence (0 = oldest event).

    Candidates (the last ``num_candidates[b]`` tokens, M-FALCON) all take the position right
    after the history: the one each would have if it were scored alone.
    """
    lengths = seq_offsets[1:] - seq_offsets[:-1]  # [B]
    starts = torch.repeat_interleave(seq_offsets[:-1], lengths, output_size=num_tokens)
    positions = torch.arange(num_tokens, device=seq_offsets.device) - starts
    if num_candidates is not None:
        history = lengths - num_candidates.to(lengths)
        positions = torch.minimum(
            positions, torch.repeat_interleave(history, lengths, output_size=num_tokens)
        )
    return positions


def _truncated_normal_(weight: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


class InputEmbedding(nn.Module):
    """Item table + learned positions → the first layer's input X_0 [T, d]."""

    def __init__(self, cfg: ModelConfig, num_items: int) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.embedding_dim = d
        self.item_table = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.position_table = nn.Embedding(padded_length(cfg), d)
        self.dropout = Dropout(cfg.input_dropout)
        with torch.no_grad():
            _truncated_normal_(self.item_table.weight, ITEM_INIT_STD)
            self.item_table.weight[0].zero_()
            _truncated_normal_(self.position_table.weight, math.sqrt(1.0 / d))

    def forward(
        self,
        item_ids: torch.Tensor,
        seq_offsets: torch.Tensor,
        max_len: int,
        num_candidates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """X_0 [T, d] for item_ids [T] laid out by seq_offsets [B+1]; max_len = longest n_b."""
        num_positions = self.position_table.num_embeddings
        if max_len > num_positions:
            raise ValueError(
                f"a sequence of {max_len} tokens exceeds the position table ({num_positions} = "
                "model.max_seq_len + model.attn_norm_extra); truncate inputs to max_seq_len "
                "or raise model.max_seq_len"
            )
        positions = jagged_positions(seq_offsets, item_ids.shape[0], num_candidates)
        # dropout(x) is 0 wherever x is: zeroing the padding rows before it changes nothing
        return self.dropout(input_embedding(item_ids, positions, self.item_table.weight,
                                            self.position_table.weight,
                                            math.sqrt(self.embedding_dim)))

    def item_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised item vectors: [..., d] for `ids`, or [num_items + 1, d] for all."""
        table = self.item_table.weight
        if ids is not None:
            return l2_normalise(F.embedding(ids, table, padding_idx=0))
        # Detached padding row: a loss over all items must not move row 0 away from zero.
        return l2_normalise(torch.cat([table[:1].detach(), table[1:]]))
