"""Causal softmax attention over jagged sequences (SASRec's), length-grouped and tiled on CPU.

Shape legend:
    T  tokens; B sequences; H heads; dh head dim (q, k, v [T, H, dh])
    b  sequences of one length chunk, padded to Lc (the chunk's longest); P = Σ b·Lc rows
    M  query rows and K key columns of one tile (a causal block of a chunk's [Lc, Lc] weights)

    out = softmax(Q Kᵀ / √dh + causal mask) V   per sequence and head, dropout on the weights

The same function as attention over the batch padded to [B, L] (a test holds them together,
outputs, K/V and gradients), computed like HSTU's CPU path: sequences grouped by length into
chunks (``plan_chunks``), each chunk cut into causal query tiles, every head of every sequence
a batch entry of the tiles' matmuls; Σ b·M·K weights instead of B·L². One autograd function:
its backward reuses the saved weights (before and after dropout) and gets the softmax row term
from D = rowsum(dO ∘ O), as flash attention. The M-FALCON candidate rule is supported: a
candidate sees the history and itself only.

float32 on CPU runs the C++ kernel of ``csrc/attention.cpp`` instead (the same function; one
task per sequence and head, no padding, the weights saved for the backward, dropout drawn
per pair from a counter-based hash of a seed taken from PyTorch's generator, so the backward
redraws the same mask). Other dtypes and devices, no compiler, ``GENREC_NATIVE=0`` or
``GENREC_NATIVE_ATTENTION=0``: the tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from genrec.ops import rng
from genrec.ops.attention import native as native_attention
from genrec.ops.attention.cpu_plan import Chunk, Plan, _chunk_view, plan_chunks
from genrec.ops.dropout import dropout


@dataclass
class AttentionPlan:
    """One batch's layout for ``causal_softmax_attention``, shared by a model's layers: the
    jagged offsets, and (made on first use, by the tiles only) the length chunks and tiles."""

    seq_offsets: torch.Tensor  # [B + 1]
    num_candidates: torch.Tensor | None  # [B]
    num_heads: int
    _tiles: Plan | None = field(default=None, repr=False)

    @property
    def chunks(self) -> list[Chunk]:
        return self.tiles().chunks

    def tiles(self) -> Plan:
        """Length chunks and causal tiles (reads the lengths). Each head of each sequence is a
        sequence of its own, head-major: head h of sequence b is sequence h·B + b of the
        [H·T] rows, so heads are batch entries of the matmuls."""
        if self._tiles is None:
            offsets, heads = self.seq_offsets, self.num_heads
            tokens = offsets[-1:]
            starts = [offsets[:-1] + h * tokens for h in range(heads)]
            head_offsets = torch.cat([*starts, tokens * heads])  # [H·B + 1]
            cands = None if self.num_candidates is None else self.num_candidates.repeat(heads)
            self._tiles = plan_chunks(head_offsets, cands, 1, causal=True)
        return self._tiles


@torch.compiler.disable
def attention_plan(seq_offsets: torch.Tensor, num_candidates: torch.Tensor | None,
                   num_heads: int) -> AttentionPlan:
    """The batch's layout for ``causal_softmax_attention`` (made once per batch)."""
    return AttentionPlan(seq_offsets, num_candidates, num_heads)


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


class _NativeSoftmaxAttention(torch.autograd.Function):
    """The C++ kernel on jagged [T, H, dh] (rows read in place at their stride)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: AttentionPlan, dropout_p: float, candidates: bool):
        tokens, heads, dim = q.shape
        dv = v.shape[2]
        layout = native_attention.layout_for(
            plan.seq_offsets, plan.num_candidates if candidates else None, None, None,
            causal=True, num_buckets=0)
        seed = rng.seed64() if dropout_p > 0 else 0
        save = any(ctx.needs_input_grad[:3])
        out = native_attention.new_output((tokens, heads, dv), q)
        probs = q.new_empty(heads * int(layout.square_offsets[-1]) if save else 0)
        (qr, qs), (kr, ks), (vr, vs) = (native_attention.row_strided(x) for x in (q, k, v))
        scale = 1.0 / math.sqrt(dim)
        native_attention.library().genrec_softmax_forward_f32(
            qr.data_ptr(), qs, kr.data_ptr(), ks, vr.data_ptr(), vs, layout.offsets.data_ptr(),
            layout.offsets.numel() - 1, heads, dim, dv, scale, 1,
            native_attention.pointer(layout.first_candidate), dropout_p, seed,
            layout.square_offsets.data_ptr(), out.data_ptr(), probs.data_ptr() if save else None,
            torch.get_num_threads())
        ctx.save_for_backward(q, k, v, probs)
        ctx.layout, ctx.scale, ctx.dropout_p, ctx.seed = layout, scale, dropout_p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs = ctx.saved_tensors
        layout, (tokens, heads, dim), width = ctx.layout, q.shape, v.shape[2]
        dq, dk = (native_attention.new_output((tokens, heads, dim), q) for _ in range(2))
        dv = native_attention.new_output((tokens, heads, width), v)
        (g, gs), (qr, qs), (kr, ks), (vr, vs) = (native_attention.row_strided(x)
                                                  for x in (grad_out, q, k, v))
        native_attention.library().genrec_softmax_backward_f32(
            g.data_ptr(), gs, qr.data_ptr(), qs, kr.data_ptr(), ks, vr.data_ptr(), vs,
            probs.data_ptr(), layout.offsets.data_ptr(), layout.offsets.numel() - 1, heads, dim,
            width, ctx.scale, 1, native_attention.pointer(layout.first_candidate), ctx.dropout_p,
            ctx.seed, layout.square_offsets.data_ptr(), dq.data_ptr(), dk.data_ptr(),
            dv.data_ptr(), torch.get_num_threads())
        return dq, dk, dv, None, None, None


@torch.compiler.disable
def causal_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             plan: AttentionPlan, dropout_p: float = 0.0,
                             candidates: bool = False) -> torch.Tensor:
    """softmax(Q Kᵀ / √dh + causal mask) V per sequence, dropout on the weights; [T, H, dh].

    Args:
        q, k, v: [T, H, dh] jagged; ``plan`` from ``attention_plan`` of their batch.
        dropout_p: dropout on the attention weights (0 in eval).
        candidates: apply the M-FALCON rule to the plan's ``num_candidates``.
    """
    tokens, heads, dim = q.shape
    if tokens == 0:
        return torch.zeros_like(v)
    if native_attention.usable(q, k, v, None, None):
        return _NativeSoftmaxAttention.apply(q, k, v, plan, float(dropout_p), candidates)
    rows = (x.transpose(0, 1).reshape(heads * tokens, dim) for x in (q, k, v))  # [H·T, dh]
    out = _ChunkedSoftmaxAttention.apply(*rows, plan.tiles(), dropout_p, candidates)
    return out.view(heads, tokens, dim).transpose(0, 1)
