"""SASRec baseline (Kang & McAuley, 2018) as a standard pre-norm softmax Transformer.

Shape legend:
    T  tokens of the jagged batch; B sequences
    d  embedding_dim;  H num_heads;  dh = d / H;  f = linear_dim (feed-forward width; = d in
       every preset, as the original SASRec)

Per block, on the jagged tokens [T, d]:

    X = X + Dropout( MultiHeadAttention( LayerNorm(X) ) )     # causal softmax attention
    X = X + Dropout( Linear(Dropout(ReLU(Linear(LayerNorm(X))))) )   # point-wise FFN

then a final LayerNorm and L2 normalisation per token. Inputs, item table and scoring are the
same as HSTU's. Attention weights use ``dropout`` too, as the original SASRec.

Why it is fast on CPU (the same function as attention over the batch padded to [B, L, d]):

- Everything point-wise (norms, projections, feed-forward, dropout) runs on the T real
  tokens, never on padding.
- Only attention pads, and per chunk of sequences of similar length, cut into causal query
  tiles (``genrec.ops.softmax_attention``); the plan is made once per batch.
- torch.compile leaves the forward alone: the attention cannot be traced (it reads the
  lengths), and compiling the rest measured no faster (matmul-bound) at seconds per compile.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.config import ModelConfig
from genrec.data.batching import JaggedBatch
from genrec.models.base import LayerKV, SequentialRetrievalModel
from genrec.models.embeddings import InputEmbedding, l2_normalise
from genrec.ops.attention.cpu_plan import Plan
from genrec.ops.dropout import Dropout
from genrec.ops.softmax_attention import attention_plan, causal_softmax_attention

LAYER_NORM_EPS = 1e-8  # original SASRec


# -- the model ---------------------------------------------------------------------------------


class SASRecBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block on jagged [T, d]."""

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
            nn.Linear(d, cfg.linear_dim), nn.ReLU(), Dropout(cfg.dropout),
            nn.Linear(cfg.linear_dim, d),
        )
        self.dropout = Dropout(cfg.dropout)
        for linear in (self.qkv, self.attention_out, self.ffn[0], self.ffn[3]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self, x: torch.Tensor, plan: Plan, candidates: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(X [T, d], K [T, H, dh], V [T, H, dh]) from X [T, d] and the batch's plan."""
        tokens, d = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(tokens, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(dim=1)  # [T, H, dh]
        attn = causal_softmax_attention(q, k, v, plan, self.dropout_p if self.training else 0.0,
                                        candidates)
        x = x + self.dropout(self.attention_out(attn.reshape(tokens, d)))
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

    @torch.compiler.disable  # see the module docstring
    def forward(
        self,
        batch: JaggedBatch,
        *,
        num_candidates: torch.Tensor | None = None,
        return_kv: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[LayerKV]]:
        """[T, d] user vectors; with ``return_kv`` also [(K [T,H,dh], V [T,H,dh])] per layer."""
        x = self.embedding(batch.item_ids, batch.seq_offsets, batch.max_len, num_candidates)
        plan = attention_plan(batch.seq_offsets, num_candidates, self.cfg.num_heads)
        kv: list[LayerKV] = []
        for block in self.blocks:
            x, k, v = block(x, plan, num_candidates is not None)
            kv.append((k, v))
        out = l2_normalise(self.final_norm(x))  # [T, d]
        return (out, kv) if return_kv else out

    def item_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised item vectors: [..., d] for `ids`, or [num_items + 1, d] for all."""
        return self.embedding.item_embeddings(ids)
