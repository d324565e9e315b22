"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al., ICML 2024; SPEC §3).

Shape legend:
    T    tokens of the jagged batch (all sequences concatenated); B sequences
    n_b  tokens of sequence b; seq_offsets [B+1] delimits them
    d    embedding_dim;  H num_heads;  dqk attention_dim per head;  dv linear_dim per head
    N    max_seq_len + attn_norm_extra (211 on MovieLens): the attention normaliser and the
         centre of the relative position table

One layer, with a residual connection, in the paper's order:

    U, V, Q, K = split( SiLU( Linear_1( LayerNorm(X) ) ) )          # HSTULayer.project
    AV         = ( SiLU( Q Kᵀ + rab(p, t) ) / N ⊙ causal_mask ) V   # HSTULayer.attend
    X          = X + Linear_2( Dropout( LayerNorm(AV) ⊙ U ) )       # HSTULayer.output

The model is X_0 = InputEmbedding(items), then the layers, then L2 normalisation per token.
Projection and attention are separate steps so M-FALCON can reuse cached K, V of a history
(SPEC §5) without another copy of the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig
from genrec.data.batching import JaggedBatch
from genrec.models.base import LayerKV, SequentialRetrievalModel
from genrec.models.embeddings import InputEmbedding, l2_normalise, padded_length
from genrec.ops import hstu_attention
from genrec.ops.dense import layer_norm_gate_linear, layer_norm_linear_silu
from genrec.ops.dropout import Dropout
from genrec.ops.layer import hstu_layer, hstu_layer_last

LAYER_NORM_EPS = 1e-6
INIT_STD = 0.02  # Linear_1 and the rab tables


@dataclass
class AttentionContext:
    """What the attention step needs besides Q, K, V; built once per forward pass."""

    seq_offsets: torch.Tensor  # [B+1]
    timestamps: torch.Tensor  # [T] time of each token's event (the keys' side of rab)
    query_timestamps: torch.Tensor  # [T] when each token's prediction is made (queries' side)
    num_candidates: torch.Tensor | None  # [B] trailing candidate tokens (M-FALCON) or None
    row_scale: torch.Tensor | None  # [T] float64, N / n_b for attn_norm == "length", else None
    seq_scale: torch.Tensor | None  # [B] float64, the same per sequence, else None


def attention_context(
    cfg: ModelConfig, batch: JaggedBatch, num_candidates: torch.Tensor | None = None
) -> AttentionContext:
    """Attention inputs for `batch`.

    attn_norm == "length" divides each user's attention by its own length n_b instead of N.
    The op always divides by N, and the output is linear in the normaliser, so the rows of
    sequence b are rescaled by N / n_b afterwards. With candidates, n_b counts the history
    only (n_b − c_b), so a candidate scores the same in any microbatch.
    """
    row_scale = scale = None
    if cfg.attn_norm == "length":
        lengths = batch.seq_offsets[1:] - batch.seq_offsets[:-1]  # [B]
        history = lengths if num_candidates is None else lengths - num_candidates.to(lengths)
        scale = padded_length(cfg) / history.clamp(min=1).to(torch.float64)
        row_scale = torch.repeat_interleave(scale, lengths, output_size=batch.num_tokens)
    return AttentionContext(batch.seq_offsets, batch.timestamps, batch.query_timestamps,
                            num_candidates, row_scale, scale)


class HSTULayer(nn.Module):
    """One HSTU layer; ``rab`` tables are its own, shared by its heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, heads = cfg.embedding_dim, cfg.num_heads
        self.num_heads, self.dqk, self.dv = heads, cfg.attention_dim, cfg.linear_dim
        self.normaliser = padded_length(cfg)  # N
        # Linear_1: one fused projection to U, V, Q, K (in that order), no bias.
        self.uvqk = nn.Linear(d, heads * (2 * self.dv + 2 * self.dqk), bias=False)
        # Linear_2: bias kept at PyTorch's default init, as Meta's code.
        self.output_proj = nn.Linear(heads * self.dv, d)
        self.dropout = Dropout(cfg.dropout)
        # rab(p, t): position term over j − i in [−N+1, N−1]; time term over buckets
        # 0..num_time_buckets. A disabled term is None.
        self.pos_weights = nn.Parameter(torch.empty(2 * self.normaliser - 1)) \
            if cfg.position_bias else None
        self.time_weights = nn.Parameter(torch.empty(cfg.num_time_buckets + 1)) \
            if cfg.time_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear_1 and rab ~ N(0, 0.02²); Linear_2 weight Xavier-uniform."""
        nn.init.normal_(self.uvqk.weight, std=INIT_STD)
        nn.init.xavier_uniform_(self.output_proj.weight)
        for table in (self.pos_weights, self.time_weights):
            if table is not None:
                nn.init.normal_(table, std=INIT_STD)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """U [T, H·dv], Q [T, H, dqk], K [T, H, dqk], V [T, H, dv] from X [T, d]."""
        hv, hqk = self.num_heads * self.dv, self.num_heads * self.dqk
        uvqk = layer_norm_linear_silu(x, self.uvqk.weight, LAYER_NORM_EPS)
        u, v, q, k = torch.split(uvqk, [hv, hv, hqk, hqk], dim=-1)
        heads = self.num_heads
        return (u, q.reshape(-1, heads, self.dqk), k.reshape(-1, heads, self.dqk),
                v.reshape(-1, heads, self.dv))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext
    ) -> torch.Tensor:
        """AV [T, H, dv] = (SiLU(Q Kᵀ + rab) / N ⊙ causal_mask) V per sequence, alpha = 1."""
        av = hstu_attention(
            q, k, v, ctx.seq_offsets, self.normaliser, alpha=1.0,
            pos_weights=self.pos_weights, time_weights=self.time_weights,
            timestamps=ctx.timestamps, query_timestamps=ctx.query_timestamps,
            num_candidates=ctx.num_candidates,
        )
        if ctx.row_scale is not None:
            av = av * ctx.row_scale.to(av.dtype)[:, None, None]
        return av

    def output(self, x: torch.Tensor, u: torch.Tensor, av: torch.Tensor) -> torch.Tensor:
        """X + Linear_2(Dropout(LayerNorm(AV) ⊙ U)); the norm spans all heads' dv together."""
        av = av.reshape(av.shape[0], -1)  # [T, H·dv]
        if self.training and self.dropout.p > 0:
            y = F.layer_norm(av, av.shape[-1:], eps=LAYER_NORM_EPS) * u
            return x + self.output_proj(self.dropout(y))
        return layer_norm_gate_linear(av, u, self.output_proj.weight, self.output_proj.bias, x,
                                      eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """X [T, d] -> X [T, d]: ``hstu_layer`` (at inference one fused call per batch), or
        the three steps when dropout is active."""
        if self.training and self.dropout.p > 0:
            u, q, k, v = self.project(x)
            return self.output(x, u, self.attend(q, k, v, ctx))
        return hstu_layer(x, *self._weights(), ctx.seq_offsets, self.normaliser,
                          num_candidates=ctx.num_candidates, **self._attention_args(ctx))

    def forward_last(self, x: torch.Tensor, ctx: AttentionContext,
                     last: torch.Tensor) -> torch.Tensor:
        """``forward(x, ctx)[last]`` [B, d] for the last token of each sequence (``last`` [B]):
        keys and values of every token, queries and attention for the last tokens only
        (``hstu_layer_last``)."""
        if not torch.equal(last, ctx.seq_offsets[1:] - 1):
            raise ValueError("forward_last: `last` must be each sequence's last token")
        return hstu_layer_last(x, *self._weights(), ctx.seq_offsets, self.normaliser,
                               **self._attention_args(ctx))

    def _weights(self) -> tuple:
        return self.uvqk.weight, self.output_proj.weight, self.output_proj.bias

    def _attention_args(self, ctx: AttentionContext) -> dict:
        """The keyword arguments of ``hstu_layer`` / ``hstu_layer_last`` besides the weights."""
        return dict(num_heads=self.num_heads, attention_dim=self.dqk, linear_dim=self.dv,
                    alpha=1.0, pos_weights=self.pos_weights, time_weights=self.time_weights,
                    timestamps=ctx.timestamps, query_timestamps=ctx.query_timestamps,
                    seq_scale=ctx.seq_scale, eps=LAYER_NORM_EPS)


class HSTU(SequentialRetrievalModel):
    """The HSTU encoder: one L2-normalised user vector per token."""

    def __init__(self, cfg: ModelConfig, num_items: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_items, self.embedding_dim = num_items, cfg.embedding_dim
        self.embedding = InputEmbedding(cfg, num_items)
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.num_layers))

    def forward(
        self,
        batch: JaggedBatch,
        *,
        num_candidates: torch.Tensor | None = None,
        return_kv: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[LayerKV]]:
        """[T, d] user vectors; with ``return_kv`` also [(K [T,H,dqk], V [T,H,dv])] per layer."""
        x = self.embedding(batch.item_ids, batch.seq_offsets, batch.max_len, num_candidates)
        ctx = attention_context(self.cfg, batch, num_candidates)
        kv: list[LayerKV] = []
        for layer in self.layers:
            if not return_kv:
                x = layer(x, ctx)
                continue
            u, q, k, v = layer.project(x)
            x = layer.output(x, u, layer.attend(q, k, v, ctx))
            kv.append((k, v))
        out = l2_normalise(x)
        return (out, kv) if return_kv else out

    def last_vectors(self, batch: JaggedBatch) -> torch.Tensor:
        """[B, d] = ``forward(batch)`` at each sequence's last token, with the last layer run
        for those tokens only (``hstu_attention_last``): about half the work of a 2-layer
        forward pass at evaluation and serving time."""
        if not self.layers:
            return super().last_vectors(batch)
        x = self.embedding(batch.item_ids, batch.seq_offsets, batch.max_len)
        ctx = attention_context(self.cfg, batch)
        for layer in self.layers[:-1]:
            x = layer(x, ctx)
        return l2_normalise(self.layers[-1].forward_last(x, ctx, batch.last_positions()))

    def item_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised item vectors: [..., d] for `ids`, or [num_items + 1, d] for all."""
        return self.embedding.item_embeddings(ids)
