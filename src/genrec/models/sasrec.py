"""SASRec baseline (Kang & McAuley, 2018) as a standard pre-norm softmax Transformer.

Shape legend:
    T  tokens of the jagged batch; B sequences
    d  embedding_dim;  H num_heads;  dh = d / H;  f = linear_dim (feed-forward width; = d in
       every preset, as the original SASRec)
    b  sequences of one length chunk, padded to Lc (the chunk's longest); P = Σ b·Lc rows
    M  query rows and K key columns of one tile (a causal block of a chunk's [Lc, Lc] weights)

Per block, on the jagged tokens [T, d]:

    X = X + Dropout( MultiHeadAttention( LayerNorm(X) ) )     # causal softmax attention
    X = X + Dropout( Linear(Dropout(ReLU(Linear(LayerNorm(X))))) )   # point-wise FFN

then a final LayerNorm and L2 normalisation per token. Inputs, item table and scoring are the
same as HSTU's. Attention weights use ``dropout`` too, as the original SASRec.

Why it is fast on CPU (the same function as attention over the batch padded to [B, L, d]):

- Everything point-wise (norms, projections, feed-forward, dropout) runs on the T real
  tokens, never on padding.
- Only attention pads, and per chunk of sequences of similar length (``plan_chunks``, as
  HSTU's CPU path), cut into causal query tiles: Σ b·M·K weights instead of B·L², each head
  of each sequence a batch entry of the tiles' matmuls. The plan is made once per batch.
- Attention is one autograd function: its backward reuses the saved weights (before and
  after dropout) and gets the softmax row term from D = rowsum(dO ∘ O), as flash attention.
- torch.compile leaves the forward alone: the attention cannot be traced (it reads the
  lengths), and compiling the rest measured no faster (matmul-bound) at seconds per compile.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genrec.config import ModelConfig
from genrec.data.batching import JaggedBatch
from genrec.models.base import LayerKV, SequentialRetrievalModel
from genrec.models.embeddings import InputEmbedding, l2_normalise
from genrec.ops.attention.cpu_plan import Chunk, Plan, _chunk_view, plan_chunks
from genrec.ops.dropout import Dropout, dropout

LAYER_NORM_EPS = 1e-8  # original SASRec


# -- causal softmax attention over length chunks ------------------------------------------------


@torch.compiler.disable
def attention_plan(seq_offsets: torch.Tensor, num_candidates: torch.Tensor | None,
                   num_heads: int) -> Plan:
    """Length chunks and causal tiles for ``causal_softmax_attention`` (reads the lengths).

    Each head of each sequence is a sequence of its own, head-major: head h of sequence b is
    sequence h·B + b of the [H·T] rows, so heads are batch entries of the matmuls.
    """
    tokens = seq_offsets[-1:]
    starts = [seq_offsets[:-1] + h * tokens for h in range(num_heads)]
    head_offsets = torch.cat([*starts, tokens * num_heads])  # [H·B + 1]
    if num_candidates is not None:
        num_candidates = num_candidates.repeat(num_heads)
    return plan_chunks(head_offsets, num_candidates, 1, causal=True)


def _padded(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """[H·T, dh] jagged rows -> [P, dh] chunk-padded rows; padding rows are zero."""
    return x.new_zeros(plan.gather.shape[0], x.shape[1]).index_copy_(0, plan.scatter, x)


def _chunk_rows(rows: torch.Tensor, chunk: Chunk) -> torch.Tensor:
    """[P, dh] padded rows -> the chunk's [b, Lc, dh] (a view): the one-head layout."""
    return _chunk_view(rows.view(-1), chunk, 1, rows.shape[1])[0]


def _mask_bias(chunk: Chunk, candidates: bool, causal: torch.Tensor) -> torch.Tensor:
    """Additive mask, 0 where query i may attend to key j, −inf elsewhere.

    [Lc, Lc] causal (a view of `causal`), or [b, Lc, Lc] with the M-FALCON rule: a
    candidate (i ≥ first_b = n_b − c_b) sees the history and itself only.
    """
    bias = causal[:chunk.width, :chunk.width]
    if not candidates:
        return bias
    pos = torch.arange(chunk.width, device=causal.device)
    i, j = pos[:, None], pos[None, :]
    first = chunk.first_candidate  # [b, 1, 1]
    return bias.masked_fill((i >= first) & (j >= first) & (i != j), float("-inf"))


class _ChunkedSoftmaxAttention(torch.autograd.Function):
    """Causal softmax attention per chunk and tile on [H·T, dh] head-major rows."""

    @staticmethod
    def forward(ctx, q, k, v, plan: Plan, dropout_p: float, candidates: bool):
        scale = 1.0 / math.sqrt(q.shape[1])
        qp, kp, vp = (_padded(x, plan) for x in (q, k, v))  # [P, dh]
        out = torch.empty_like(vp)  # the tiles cover every row
        width = max(chunk.width for chunk in plan.chunks)
        causal = q.new_full((width, width), float("-inf")).triu_(1)
        saved = []  # per tile: softmax weights P and P̃, P after dropout
        for chunk in plan.chunks:
            qc, kc, vc, oc = (_chunk_rows(x, chunk) for x in (qp, kp, vp, out))
            bias = _mask_bias(chunk, candidates, causal)
            for lo, hi, end in chunk.tiles:
                logits = torch.baddbmm(bias[..., lo:hi, :end], qc[:, lo:hi],
                                       kc[:, :end].transpose(1, 2), alpha=scale)
                weights = torch.softmax(logits, dim=-1)  # [b, M, K]
                dropped = dropout(weights, dropout_p)  # P̃ = P ⊙ keep / (1 − p)
                oc[:, lo:hi] = torch.bmm(dropped, vc[:, :end])
                saved.append((weights, dropped))
        ctx.plan, ctx.scale, ctx.saved = plan, scale, (qp, kp, vp, out, saved)
        return out.index_select(0, plan.scatter)

    @staticmethod
    def backward(ctx, grad_out):
        plan, scale = ctx.plan, ctx.scale
        qp, kp, vp, out, saved = ctx.saved
        gp = _padded(grad_out, plan)  # zero on padding rows: they pass no gradient on
        row_term = (gp * out).sum(-1, keepdim=True)  # [P, 1] D = rowsum(dO ∘ O)
        dq, dk, dv = torch.empty_like(qp), torch.zeros_like(kp), torch.zeros_like(vp)
        tiles = iter(saved)
        for chunk in plan.chunks:
            qc, kc, vc, gc, dc, dqc, dkc, dvc = (_chunk_rows(x, chunk) for x in (
                qp, kp, vp, gp, row_term, dq, dk, dv))
            for (lo, hi, end), (weights, dropped) in zip(chunk.tiles, tiles, strict=False):
                g = gc[:, lo:hi]  # [b, M, dh]
                d_dropped = torch.bmm(g, vc[:, :end].transpose(1, 2))  # [b, M, K]
                # dS = P ⊙ (dP − D) with dP = dP̃ ⊙ keep, and P ⊙ keep = P̃
                d_logits = d_dropped.mul_(dropped).addcmul_(weights, dc[:, lo:hi], value=-1)
                dqc[:, lo:hi] = torch.bmm(d_logits, kc[:, :end])
                # (MKL's batched matmul wants a contiguous result: accumulate in two steps)
                dkc[:, :end] += torch.bmm(d_logits.transpose(1, 2), qc[:, lo:hi])
                dvc[:, :end] += torch.bmm(dropped.transpose(1, 2), g)
        dq.mul_(scale)
        dk.mul_(scale)
        return (*(x.index_select(0, plan.scatter) for x in (dq, dk, dv)), None, None, None)


@torch.compiler.disable
def causal_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan,
                             dropout_p: float = 0.0, candidates: bool = False) -> torch.Tensor:
    """softmax(Q Kᵀ / √dh + causal mask) V per sequence, dropout on the weights; [T, H, dh].

    Args:
        q, k, v: [T, H, dh] jagged; ``plan`` from ``attention_plan`` of their batch.
        dropout_p: dropout on the attention weights (0 in eval).
        candidates: apply the M-FALCON rule to the plan's ``num_candidates``.
    """
    tokens, heads, dim = q.shape
    if tokens == 0:
        return torch.zeros_like(v)
    rows = (x.transpose(0, 1).reshape(heads * tokens, dim) for x in (q, k, v))  # [H·T, dh]
    out = _ChunkedSoftmaxAttention.apply(*rows, plan, dropout_p, candidates)
    return out.view(heads, tokens, dim).transpose(0, 1)


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
