"""SASRec baseline (Kang & McAuley, 2018) as a standard pre-norm softmax Transformer.

Shape legend:
    T  tokens of the jagged batch; B sequences; L longest sequence of the batch
    d  embedding_dim;  H num_heads;  dh = d / H;  f = linear_dim (feed-forward width; = d in
       every preset, as the original SASRec)

Per block, on the batch padded to [B, L, d] once (padding sits after each sequence, so plain
causal masking already keeps real tokens from seeing it; padded rows are dropped at the end):

    X = X + Dropout( MultiHeadAttention( LayerNorm(X) ) )     # causal softmax attention
    X = X + Dropout( Linear(ReLU(Linear(LayerNorm(X)))) )      # point-wise feed-forward

then a final LayerNorm and L2 normalisation per token. Inputs, item table and scoring are the
same as HSTU's. Attention weights use ``dropout`` too, as the original SASRec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig
from genrec.data.batching import JaggedBatch
from genrec.models.base import LayerKV, SequentialRetrievalModel
from genrec.models.embeddings import InputEmbedding, l2_normalise
from genrec.ops.jagged import padded_index

LAYER_NORM_EPS = 1e-8  # original SASRec


def candidate_mask(
    lengths: torch.Tensor, max_len: int, num_candidates: torch.Tensor
) -> torch.Tensor:
    """[B, 1, L, L] bool: causal, and a candidate sees the history and itself only."""
    pos = torch.arange(max_len, device=lengths.device)
    i, j = pos[:, None], pos[None, :]
    first = (lengths - num_candidates.to(lengths))[:, None, None]  # [B, 1, 1]
    other_candidate = (i >= first) & (j >= first) & (i != j)
    return ((j <= i) & ~other_candidate)[:, None]


class SASRecBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block on padded [B, L, d]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.num_heads = cfg.num_heads
        self.dropout_p = cfg.dropout
        self.attention_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(d, 3 * d)
        self.attention_out = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.linear_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.linear_dim, d),
        )
        self.dropout = nn.Dropout(cfg.dropout)
        for linear in (self.qkv, self.attention_out, self.ffn[0], self.ffn[3]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(X [B, L, d], K [B, L, H, dh], V [B, L, H, dh]); mask None means plain causal."""
        b, n, d = x.shape
        qkv = self.qkv(self.attention_norm(x)).reshape(b, n, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(dim=2)  # [B, L, H, dh]
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            dropout_p=self.dropout_p if self.training else 0.0, is_causal=mask is None,
        )  # [B, H, L, dh]
        x = x + self.dropout(self.attention_out(attn.transpose(1, 2).reshape(b, n, d)))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, k, v


class SASRec(SequentialRetrievalModel):
    """The SASRec encoder: one L2-normalised user vector per token."""

    def __init__(self, cfg: ModelConfig, num_items: int) -> None:
        super().__init__()
        if cfg.embedding_dim % cfg.num_heads:
            raise ValueError(f"model.num_heads ({cfg.num_heads}) must divide "
                             f"model.embedding_dim ({cfg.embedding_dim}) for SASRec")
        self.cfg = cfg
        self.num_items, self.embedding_dim = num_items, cfg.embedding_dim
        self.embedding = InputEmbedding(cfg, num_items)
        self.blocks = nn.ModuleList(SASRecBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.embedding_dim, eps=LAYER_NORM_EPS)

    def forward(
        self,
        batch: JaggedBatch,
        *,
        num_candidates: torch.Tensor | None = None,
        return_kv: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[LayerKV]]:
        """[T, d] user vectors; with ``return_kv`` also [(K [T,H,dh], V [T,H,dh])] per layer."""
        x = self.embedding(batch.item_ids, batch.seq_offsets, batch.max_len, num_candidates)
        index, valid = padded_index(batch.seq_offsets, batch.max_len)
        x = x[index] * valid[..., None].to(x.dtype)  # [B, L, d]
        mask = None
        if num_candidates is not None:
            mask = candidate_mask(batch.lengths, batch.max_len, num_candidates)
        kv: list[LayerKV] = []
        for block in self.blocks:
            x, k, v = block(x, mask)
            kv.append((k[valid], v[valid]))
        out = l2_normalise(self.final_norm(x[valid]))  # [T, d]
        return (out, kv) if return_kv else out

    def item_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised item vectors: [..., d] for `ids`, or [num_items + 1, d] for all."""
        return self.embedding.item_embeddings(ids)
