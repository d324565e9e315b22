"""Fused jagged HSTU attention in Triton: forward and backward kernels (SPEC §5).

Shapes: T tokens in all, H heads, B sequences; q, k [T, H, Dqk]; v, out [T, H, Dv];
seq_offsets [B+1]. One program owns BLOCK_M query rows (forward, dQ) or BLOCK_N key rows
(dK/dV) of one (sequence, head) and loops over the other side in tiles, so no n×n tensor exists.

Per tile (s: logit, σ: sigmoid, N: max_seq_len, M: the allowed-pairs mask):

    s  = alpha · q kᵀ + pos[j − i + N − 1] + time[bucket(qts_i − ts_j)]
    p  = s σ(s) / N ⊙ M                          out += p v
    dS = (dO vᵀ) ⊙ σ(s) (1 + s (1 − σ(s))) / N ⊙ M
    dq += alpha dS k     dk += alpha dSᵀ q     dv += pᵀ dO     d bias(i, j) += dS (all heads)

Tiles that are fully masked are never visited: each program loops over at most two key (or
query) ranges that cover exactly its allowed pairs (history part, then the candidate diagonal).
Bias-table gradients: the dK/dV kernel reduces each tile first (position: sum along the tile's
diagonals, one per value of j − i; time: sum per bucket present) and then adds the partial sums
to fp32 tables with atomics, so a tile costs BM + BN − 1 (+ #buckets) atomics, not BM·BN.
Float atomics make those two gradients run-to-run nondeterministic in the last bits.

Time buckets: the gap is an int64 difference; the bucket is estimated with an fp32 log and,
when that estimate is within fp32 rounding of a bucket edge, settled by comparing the integer
gap with the edge's exact threshold (``reference.bucket_thresholds``), so the kernel's buckets
equal the float64 reference's for every gap below 2**53 (plain fp32 would be one bucket off for
gaps near an edge, which at real sizes happens for a few pairs per batch).
See NOTES.md for versions, predictions and measurements.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from genrec.ops.attention.reference import TIME_BUCKET_BASE, bucket_thresholds

_BUCKET_BASE = tl.constexpr(TIME_BUCKET_BASE)
_EDGE_WINDOW = tl.constexpr(2e-4)  # > 10× the largest fp32 error of log(gap) / 0.301 seen
NUM_THRESHOLDS = 192  # bucket edges covered exactly: every gap below 2**53
_NUM_THRESHOLDS = tl.constexpr(NUM_THRESHOLDS)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _fix_interpreter_scalar_index() -> None:
    """Let the interpreter use tensor scalars as loop bounds under NumPy ≥ 2.4.

    Triton 3.6's interpreter holds scalars as 1-element arrays and converts them with int(),
    which NumPy 2.4 turned into a TypeError (triton-lang/triton#9171, fixed upstream the same
    way). Without this, every `for start in range(lo, hi, BLOCK)` with a loaded bound fails.
    """
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_genrec_fixed", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._genrec_fixed = True
    interpreter._patch_lang_tensor = patched


if interpreting():
    _fix_interpreter_scalar_index()


@triton.jit
def _time_bucket(gap, thr_ptr, num_buckets):
    """floor(log(gap) / 0.301) clamped to the table, equal to the float64 reference.

    fp32 log is within ~2e-5 of the float64 quotient; where the estimate is that close to an
    integer (an edge), the integer gap is compared with the edge's exact threshold instead.
    That load is masked off almost everywhere, so it costs an issue slot, not a gather.
    """
    estimate = tl.log(gap.to(tl.float32)) / _BUCKET_BASE
    bucket = tl.floor(estimate)
    frac = estimate - bucket
    near_edge = (frac < _EDGE_WINDOW) | (frac > 1.0 - _EDGE_WINDOW)
    edge = (bucket + tl.where(frac > 0.5, 1.0, 0.0)).to(tl.int32)
    edge = tl.minimum(tl.maximum(edge, 0), _NUM_THRESHOLDS - 1)
    threshold = tl.load(thr_ptr + edge, mask=near_edge, other=0)
    bucket = tl.where(near_edge, tl.where(gap >= threshold, edge, edge - 1), bucket.to(tl.int32))
    return tl.minimum(tl.maximum(bucket, 0), num_buckets - 1)


@triton.jit
def _tile_logits(q, k, rows, cols, row_ok, col_ok, n_hist, alpha, seq_start, max_seq_len,
                 pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr,
                 CAUSAL: tl.constexpr, HAS_CAND: tl.constexpr, HAS_POS: tl.constexpr,
                 HAS_TIME: tl.constexpr, PRECISION: tl.constexpr):
    """(logits s [BM, BN] fp32, allowed [BM, BN], time bucket [BM, BN]) of one tile."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * alpha
    allowed = row_ok[:, None] & col_ok[None, :]
    if CAUSAL:
        allowed = allowed & (cols[None, :] <= rows[:, None])
    if HAS_CAND:
        both_candidates = (rows[:, None] >= n_hist) & (cols[None, :] >= n_hist)
        allowed = allowed & ~(both_candidates & (rows[:, None] != cols[None, :]))
    bucket = cols[None, :] * 0 + rows[:, None] * 0
    if HAS_POS:
        rel = cols[None, :] - rows[:, None] + max_seq_len - 1
        rel = tl.minimum(tl.maximum(rel, 0), num_pos - 1)
        s += tl.load(pos_ptr + rel).to(tl.float32)
    if HAS_TIME:
        qts = tl.load(qts_ptr + seq_start + rows, mask=row_ok, other=0)
        ts = tl.load(ts_ptr + seq_start + cols, mask=col_ok, other=0)
        gap = qts[:, None] - ts[None, :]  # int64: epoch seconds never lose precision here
        gap = tl.maximum(tl.where(gap < 0, -gap, gap), 1)
        bucket = _time_bucket(gap, thr_ptr, num_buckets)
        s += tl.load(time_ptr + bucket).to(tl.float32)
    return s, allowed, bucket


@triton.jit
def _load_block(ptr, tokens, ok, stride_t, head_offset, dim, BLOCK_D: tl.constexpr):
    """[len(tokens), BLOCK_D] rows of one head, zero beyond `dim` and outside `ok`."""
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = ptr + tokens[:, None] * stride_t + head_offset + offs_d[None, :]
    return tl.load(ptrs, mask=ok[:, None] & (offs_d[None, :] < dim), other=0.0)


@triton.jit
def _store_block(ptr, value, tokens, ok, stride_t, head_offset, dim, BLOCK_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = ptr + tokens[:, None] * stride_t + head_offset + offs_d[None, :]
    tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=ok[:, None] & (offs_d[None, :] < dim))


@triton.jit
def _sequence(seq_offsets, num_candidates, b, HAS_CAND: tl.constexpr):
    """(first token, length n, history length n − c_b) of sequence b."""
    seq_start = tl.load(seq_offsets + b).to(tl.int64)
    n = (tl.load(seq_offsets + b + 1).to(tl.int64) - seq_start).to(tl.int32)
    n_hist = n
    if HAS_CAND:
        n_hist = n - tl.load(num_candidates + b).to(tl.int32)
    return seq_start, n, n_hist


@triton.jit
def _key_ranges(m0, n, n_hist, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """Two disjoint key ranges [0, hi1) ∪ [lo2, hi2) covering every key rows m0.. may see."""
    m1 = tl.minimum(m0 + BLOCK_M, n)
    key_end = n
    if CAUSAL:
        key_end = m1
    hi1 = tl.minimum(key_end, n_hist)
    lo2 = tl.maximum(n_hist, m0)
    hi2 = tl.where(m0 >= n_hist, m1, key_end)  # candidate-only rows: just their diagonal
    return hi1, lo2, hi2


@triton.jit
def _query_ranges(n0, n, n_hist, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Two disjoint query ranges [lo1, hi1) ∪ [lo2, hi2) covering every row keys n0.. reach."""
    n1 = tl.minimum(n0 + BLOCK_N, n)
    lo1 = n0 * 0
    if CAUSAL:
        lo1 = n0
    hi1 = tl.where(n0 < n_hist, n, n_hist)  # candidate keys are seen by history rows only
    lo2 = tl.where(n0 < n_hist, n, n0)  # ... and by themselves
    return lo1, hi1, lo2, n1


@triton.jit
def _fwd_tile(acc, q, rows, row_ok, start, hi, n_hist, seq_start, head, K, V,
              stride_kt, stride_kh, stride_vt, stride_vh, alpha, inv_norm, max_seq_len,
              pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr, dqk, dv,
              CAUSAL: tl.constexpr, HAS_CAND: tl.constexpr, HAS_POS: tl.constexpr,
              HAS_TIME: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
              BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < hi
    k = _load_block(K, seq_start + cols, col_ok, stride_kt, head * stride_kh, dqk, BLOCK_DQK)
    v = _load_block(V, seq_start + cols, col_ok, stride_vt, head * stride_vh, dv, BLOCK_DV)
    s, allowed, _ = _tile_logits(q, k, rows, cols, row_ok, col_ok, n_hist, alpha, seq_start,
                                 max_seq_len, pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr,
                                 qts_ptr, thr_ptr, CAUSAL, HAS_CAND, HAS_POS, HAS_TIME, PRECISION)
    p = tl.where(allowed, s * tl.sigmoid(s) * inv_norm, 0.0)
    return acc + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)


@triton.jit
def hstu_fwd_kernel(Q, K, V, Out, seq_offsets, num_candidates, pos_ptr, time_ptr, ts_ptr,
                    qts_ptr, thr_ptr, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt,
                    stride_vh,
                    stride_ot, stride_oh, alpha, inv_norm, max_seq_len, num_pos, num_buckets,
                    num_heads, dqk, dv, autotune_len,
                    CAUSAL: tl.constexpr, HAS_CAND: tl.constexpr, HAS_POS: tl.constexpr,
                    HAS_TIME: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """out rows [m0, m0 + BLOCK_M) of one (sequence, head); the last row blocks launch first."""
    b, head = tl.program_id(0) // num_heads, tl.program_id(0) % num_heads
    m0 = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    seq_start, n, n_hist = _sequence(seq_offsets, num_candidates, b, HAS_CAND)
    if m0 >= n:
        return
    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    q = _load_block(Q, seq_start + rows, row_ok, stride_qt, head * stride_qh, dqk, BLOCK_DQK)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    hi1, lo2, hi2 = _key_ranges(m0, n, n_hist, BLOCK_M, CAUSAL)
    for start in range(0, hi1, BLOCK_N):
        acc = _fwd_tile(acc, q, rows, row_ok, start, hi1, n_hist, seq_start, head, K, V,
                        stride_kt, stride_kh, stride_vt, stride_vh, alpha, inv_norm, max_seq_len,
                        pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr, dqk, dv,
                        CAUSAL, HAS_CAND, HAS_POS, HAS_TIME, BLOCK_N, BLOCK_DQK, BLOCK_DV,
                        PRECISION)
    for start in range(lo2, hi2, BLOCK_N):
        acc = _fwd_tile(acc, q, rows, row_ok, start, hi2, n_hist, seq_start, head, K, V,
                        stride_kt, stride_kh, stride_vt, stride_vh, alpha, inv_norm, max_seq_len,
                        pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr, dqk, dv,
                        CAUSAL, HAS_CAND, HAS_POS, HAS_TIME, BLOCK_N, BLOCK_DQK, BLOCK_DV,
                        PRECISION)
    _store_block(Out, acc, seq_start + rows, row_ok, stride_ot, head * stride_oh, dv, BLOCK_DV)


@triton.jit
def _silu_grad(s, allowed, dp, inv_norm):
    """dS = dP · d silu(s)/ds / N on allowed pairs, 0 elsewhere."""
    sig = tl.sigmoid(s)
    return tl.where(allowed, dp * sig * (1.0 + s * (1.0 - sig)) * inv_norm, 0.0)


@triton.jit
def _accumulate_pos_grad(dpos_ptr, ds, m0, n0, max_seq_len, num_pos, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, DIAG: tl.constexpr):
    """Sum ds [BM, BN] along its diagonals (fixed j − i), then one atomic per diagonal.

    Row r is skewed by a gather so that column d of the skewed tile holds c − r = d − BM + 1;
    this turns BM·BN contended atomics into BM + BN − 1 mostly uncontended ones.
    """
    r = tl.arange(0, BLOCK_M)[:, None]
    c = r + tl.arange(0, DIAG)[None, :] - (BLOCK_M - 1)  # [BM, DIAG] source column
    c_ok = (c >= 0) & (c < BLOCK_N)
    skewed = tl.gather(ds, tl.where(c_ok, c, 0), axis=1)
    diagonal_sums = tl.sum(tl.where(c_ok, skewed, 0.0), axis=0)  # [DIAG]
    d = tl.arange(0, DIAG)
    index = n0 - m0 + d - (BLOCK_M - 1) + max_seq_len - 1
    ok = (d < BLOCK_M + BLOCK_N - 1) & (index >= 0) & (index < num_pos)
    tl.atomic_add(dpos_ptr + index, diagonal_sums, mask=ok)


@triton.jit
def _accumulate_time_grad(dtime_ptr, ds, bucket, allowed):
    """One atomic per time bucket present in the tile (timestamps sort, so a tile spans few)."""
    lo = tl.min(tl.min(tl.where(allowed, bucket, 1 << 30), axis=1), axis=0)
    hi = tl.max(tl.max(tl.where(allowed, bucket, -1), axis=1), axis=0)
    which = lo
    while which <= hi:
        tl.atomic_add(dtime_ptr + which, tl.sum(tl.sum(tl.where(bucket == which, ds, 0.0), 1), 0))
        which += 1


@triton.jit
def _dkdv_tile(dk, dv_acc, k, v, cols, col_ok, n0, start, hi, n_hist, seq_start, head, Q, DO,
               dpos_ptr, dtime_ptr, stride_qt, stride_qh, stride_dot, stride_doh, alpha,
               inv_norm, max_seq_len, pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr,
               thr_ptr, dqk, dv, CAUSAL: tl.constexpr, HAS_CAND: tl.constexpr,
               HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, POS_GRAD: tl.constexpr,
               TIME_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, DIAG: tl.constexpr,
               PRECISION: tl.constexpr):
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < hi
    q = _load_block(Q, seq_start + rows, row_ok, stride_qt, head * stride_qh, dqk, BLOCK_DQK)
    do = _load_block(DO, seq_start + rows, row_ok, stride_dot, head * stride_doh, dv, BLOCK_DV)
    s, allowed, bucket = _tile_logits(q, k, rows, cols, row_ok, col_ok, n_hist, alpha, seq_start,
                                      max_seq_len, pos_ptr, num_pos, time_ptr, num_buckets,
                                      ts_ptr, qts_ptr, thr_ptr, CAUSAL, HAS_CAND, HAS_POS, HAS_TIME,
                                      PRECISION)
    p = tl.where(allowed, s * tl.sigmoid(s) * inv_norm, 0.0)
    dv_acc += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = _silu_grad(s, allowed, dp, inv_norm)
    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    if POS_GRAD:
        _accumulate_pos_grad(dpos_ptr, ds, start, n0, max_seq_len, num_pos, BLOCK_M, BLOCK_N,
                             DIAG)
    if TIME_GRAD:
        _accumulate_time_grad(dtime_ptr, ds, bucket, allowed)
    return dk, dv_acc


@triton.jit
def hstu_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, dpos_ptr, dtime_ptr, seq_offsets, num_candidates,
                         pos_ptr, time_ptr, ts_ptr, qts_ptr, thr_ptr, stride_qt, stride_qh,
                         stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, alpha,
                         inv_norm, max_seq_len, num_pos, num_buckets, num_heads, dqk, dv,
                         autotune_len, CAUSAL: tl.constexpr, HAS_CAND: tl.constexpr,
                         HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, POS_GRAD: tl.constexpr,
                         TIME_GRAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, DIAG: tl.constexpr,
                         PRECISION: tl.constexpr):
    """dk, dv for key rows [n0, n0 + BLOCK_N) of one (sequence, head), plus the bias grads.

    DK and DV are laid out like K and V (same strides, contiguous).
    """
    b, head = tl.program_id(0) // num_heads, tl.program_id(0) % num_heads
    n0 = tl.program_id(1) * BLOCK_N  # early keys see the most queries: launch them first
    seq_start, n, n_hist = _sequence(seq_offsets, num_candidates, b, HAS_CAND)
    if n0 >= n:
        return
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < n
    k = _load_block(K, seq_start + cols, col_ok, stride_kt, head * stride_kh, dqk, BLOCK_DQK)
    v = _load_block(V, seq_start + cols, col_ok, stride_vt, head * stride_vh, dv, BLOCK_DV)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv_acc = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    lo1, hi1, lo2, hi2 = _query_ranges(n0, n, n_hist, BLOCK_N, CAUSAL)
    for start in range(lo1, hi1, BLOCK_M):
        dk, dv_acc = _dkdv_tile(dk, dv_acc, k, v, cols, col_ok, n0, start, hi1, n_hist,
                                seq_start, head, Q, DO, dpos_ptr, dtime_ptr, stride_qt,
                                stride_qh, stride_dot, stride_doh, alpha, inv_norm, max_seq_len,
                                pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr,
                                dqk, dv, CAUSAL, HAS_CAND, HAS_POS, HAS_TIME, POS_GRAD, TIME_GRAD,
                                BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, DIAG, PRECISION)
    for start in range(lo2, hi2, BLOCK_M):
        dk, dv_acc = _dkdv_tile(dk, dv_acc, k, v, cols, col_ok, n0, start, hi2, n_hist,
                                seq_start, head, Q, DO, dpos_ptr, dtime_ptr, stride_qt,
                                stride_qh, stride_dot, stride_doh, alpha, inv_norm, max_seq_len,
                                pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr,
                                dqk, dv, CAUSAL, HAS_CAND, HAS_POS, HAS_TIME, POS_GRAD, TIME_GRAD,
                                BLOCK_M, BLOCK_N, BLOCK_DQK, BLOCK_DV, DIAG, PRECISION)
    _store_block(DK, dk * alpha, seq_start + cols, col_ok, stride_kt, head * stride_kh, dqk,
                 BLOCK_DQK)
    _store_block(DV, dv_acc, seq_start + cols, col_ok, stride_vt, head * stride_vh, dv, BLOCK_DV)


@triton.jit
def _dq_tile(dq, q, do, rows, row_ok, start, hi, n_hist, seq_start, head, K, V, stride_kt,
             stride_kh, stride_vt, stride_vh, alpha, inv_norm, max_seq_len, pos_ptr, num_pos,
             time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr, dqk, dv, CAUSAL: tl.constexpr,
             HAS_CAND: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
             PRECISION: tl.constexpr):
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < hi
    k = _load_block(K, seq_start + cols, col_ok, stride_kt, head * stride_kh, dqk, BLOCK_DQK)
    v = _load_block(V, seq_start + cols, col_ok, stride_vt, head * stride_vh, dv, BLOCK_DV)
    s, allowed, _ = _tile_logits(q, k, rows, cols, row_ok, col_ok, n_hist, alpha, seq_start,
                                 max_seq_len, pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr,
                                 qts_ptr, thr_ptr, CAUSAL, HAS_CAND, HAS_POS, HAS_TIME, PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = _silu_grad(s, allowed, dp, inv_norm)
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.jit
def hstu_bwd_dq_kernel(Q, K, V, DO, DQ, seq_offsets, num_candidates, pos_ptr, time_ptr, ts_ptr,
                       qts_ptr, thr_ptr, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt,
                       stride_vh, stride_dot, stride_doh, alpha, inv_norm, max_seq_len, num_pos,
                       num_buckets, num_heads, dqk, dv, autotune_len, CAUSAL: tl.constexpr,
                       HAS_CAND: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
                       BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr):
    """dq for query rows [m0, m0 + BLOCK_M) of one (sequence, head); DQ is laid out like Q."""
    b, head = tl.program_id(0) // num_heads, tl.program_id(0) % num_heads
    m0 = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    seq_start, n, n_hist = _sequence(seq_offsets, num_candidates, b, HAS_CAND)
    if m0 >= n:
        return
    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    q = _load_block(Q, seq_start + rows, row_ok, stride_qt, head * stride_qh, dqk, BLOCK_DQK)
    do = _load_block(DO, seq_start + rows, row_ok, stride_dot, head * stride_doh, dv, BLOCK_DV)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    hi1, lo2, hi2 = _key_ranges(m0, n, n_hist, BLOCK_M, CAUSAL)
    for start in range(0, hi1, BLOCK_N):
        dq = _dq_tile(dq, q, do, rows, row_ok, start, hi1, n_hist, seq_start, head, K, V,
                      stride_kt, stride_kh, stride_vt, stride_vh, alpha, inv_norm, max_seq_len,
                      pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr, dqk, dv,
                      CAUSAL,
                      HAS_CAND, HAS_POS, HAS_TIME, BLOCK_N, BLOCK_DQK, BLOCK_DV, PRECISION)
    for start in range(lo2, hi2, BLOCK_N):
        dq = _dq_tile(dq, q, do, rows, row_ok, start, hi2, n_hist, seq_start, head, K, V,
                      stride_kt, stride_kh, stride_vt, stride_vh, alpha, inv_norm, max_seq_len,
                      pos_ptr, num_pos, time_ptr, num_buckets, ts_ptr, qts_ptr, thr_ptr, dqk, dv,
                      CAUSAL,
                      HAS_CAND, HAS_POS, HAS_TIME, BLOCK_N, BLOCK_DQK, BLOCK_DV, PRECISION)
    _store_block(DQ, dq * alpha, seq_start + rows, row_ok, stride_qt, head * stride_qh, dqk,
                 BLOCK_DQK)


# --- launch: autotuned on CUDA; one small fixed tile under the interpreter (fast tests) --------

_TUNING_KEY = ["autotune_len", "dqk", "dv", "CAUSAL", "HAS_CAND", "HAS_POS", "HAS_TIME"]
_INTERPRETER_TILE = {"BLOCK_M": 16, "BLOCK_N": 16}


def _configs(tiles: list[tuple[int, int, int, int]], diag: bool = False) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) → Configs; DIAG for the pos-grad gather."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, **({"DIAG": 2 * max(m, n)} if diag else {})},
                          num_warps=w, num_stages=s) for m, n, w, s in tiles]


_fwd_tuned = triton.autotune(
    _configs([(64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 8, 2),
              (128, 128, 8, 2)]), key=_TUNING_KEY)(hstu_fwd_kernel)
_dq_tuned = triton.autotune(
    _configs([(64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)]),
    key=_TUNING_KEY)(hstu_bwd_dq_kernel)
_dkdv_tuned = triton.autotune(
    _configs([(32, 64, 4, 1), (32, 64, 4, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 128, 8, 2),
              (64, 128, 8, 2)], diag=True),
    key=_TUNING_KEY, reset_to_zero=["dpos_ptr", "dtime_ptr"])(hstu_bwd_dkdv_kernel)


@dataclass(frozen=True)
class JaggedProblem:
    """Everything but q, k, v: the jagged layout, the mask and the bias inputs."""

    seq_offsets: torch.Tensor  # [B+1]
    max_len: int  # longest sequence in the batch: sizes the grid
    max_seq_len: int  # N: the normaliser and the centre of the position table
    alpha: float
    causal: bool
    num_candidates: torch.Tensor | None = None  # [B]
    pos_weights: torch.Tensor | None = None  # [2N − 1]
    time_weights: torch.Tensor | None = None  # [num_buckets]
    timestamps: torch.Tensor | None = None  # [T] int64
    query_timestamps: torch.Tensor | None = None  # [T] int64
    bucket_thresholds: torch.Tensor | None = None  # [NUM_THRESHOLDS] int64

    def pointers(self) -> tuple[torch.Tensor, ...]:
        """seq_offsets, num_candidates, pos, time, timestamps, query_timestamps, thresholds
        (each absent one → a stub pointer the kernel never reads)."""
        stub = self.seq_offsets
        return tuple(stub if t is None else t for t in (
            self.seq_offsets, self.num_candidates, self.pos_weights, self.time_weights,
            self.timestamps, self.query_timestamps, self.bucket_thresholds))

    def scalars(self, num_heads: int, dqk: int, dv: int) -> tuple:
        num_pos = 1 if self.pos_weights is None else self.pos_weights.numel()
        num_buckets = 1 if self.time_weights is None else self.time_weights.numel()
        autotune_len = triton.next_power_of_2(max(self.max_len, 16))
        return (self.alpha, 1.0 / self.max_seq_len, self.max_seq_len, num_pos, num_buckets,
                num_heads, dqk, dv, autotune_len)

    def flags(self, dtype: torch.dtype, dqk: int, dv: int) -> dict:
        return dict(CAUSAL=self.causal, HAS_CAND=self.num_candidates is not None,
                    HAS_POS=self.pos_weights is not None, HAS_TIME=self.time_weights is not None,
                    BLOCK_DQK=max(16, triton.next_power_of_2(dqk)),
                    BLOCK_DV=max(16, triton.next_power_of_2(dv)),
                    PRECISION="ieee" if dtype == torch.float32 else "tf32")


def new_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Allocate a kernel output; every element is written by the kernel (tests poison this)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _launch(kernel, tuned, rows_per_program: str, problem: JaggedProblem, num_heads: int,
            args: tuple, meta: dict) -> None:
    batch = problem.seq_offsets.numel() - 1
    if interpreting():
        fixed = dict(_INTERPRETER_TILE, **({"DIAG": 32} if "POS_GRAD" in meta else {}))
        grid = (batch * num_heads, triton.cdiv(problem.max_len, fixed[rows_per_program]))
        kernel[grid](*args, **meta, **fixed)
    else:
        tuned[lambda m: (batch * num_heads, triton.cdiv(problem.max_len, m[rows_per_program]))](
            *args, **meta)


def _strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    return tuple(s for t in tensors for s in (t.stride(0), t.stride(1)))


def hstu_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             problem: JaggedProblem) -> torch.Tensor:
    """out [T, H, Dv] from contiguous q, k [T, H, Dqk], v [T, H, Dv]."""
    T, H, dqk = q.shape
    dv = v.shape[2]
    out = new_output((T, H, dv), q)
    args = (q, k, v, out, *problem.pointers(), *_strides(q, k, v, out),
            *problem.scalars(H, dqk, dv))
    _launch(hstu_fwd_kernel, _fwd_tuned, "BLOCK_M", problem, H, args,
            problem.flags(q.dtype, dqk, dv))
    return out


def hstu_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             problem: JaggedProblem, pos_grad: bool, time_grad: bool) -> tuple:
    """(dq, dk, dv, d pos_weights or None, d time_weights or None) from contiguous inputs."""
    T, H, dqk = q.shape
    dv = v.shape[2]
    flags = problem.flags(q.dtype, dqk, dv)
    dq, dk, dv_ = new_output(q.shape, q), new_output(k.shape, k), new_output(v.shape, v)
    pos, time = problem.pos_weights, problem.time_weights
    dpos = torch.zeros(pos.numel() if pos_grad else 1, dtype=torch.float32, device=q.device)
    dtime = torch.zeros(time.numel() if time_grad else 1, dtype=torch.float32, device=q.device)
    pointers = problem.pointers()
    scalars = problem.scalars(H, dqk, dv)
    _launch(hstu_bwd_dkdv_kernel, _dkdv_tuned, "BLOCK_N", problem, H,
            (q, k, v, do, dk, dv_, dpos, dtime, *pointers, *_strides(q, k, v, do), *scalars),
            dict(flags, POS_GRAD=pos_grad, TIME_GRAD=time_grad))
    _launch(hstu_bwd_dq_kernel, _dq_tuned, "BLOCK_M", problem, H,
            (q, k, v, do, dq, *pointers, *_strides(q, k, v, do), *scalars), flags)
    return (dq, dk, dv_, dpos.to(pos.dtype) if pos_grad else None,
            dtime.to(time.dtype) if time_grad else None)


# --- autograd -----------------------------------------------------------------------------------

class HSTUAttentionFunction(torch.autograd.Function):
    """Fused forward; backward recomputes the logits tile by tile (nothing n×n is saved)."""

    @staticmethod
    def forward(ctx, q, k, v, pos_weights, time_weights, problem: JaggedProblem):
        q, k, v = (t.contiguous() for t in (q, k, v))
        ctx.save_for_backward(q, k, v)
        ctx.problem = problem
        return hstu_fwd(q, k, v, problem)

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        problem = ctx.problem
        pos_grad = problem.pos_weights is not None and ctx.needs_input_grad[3]
        time_grad = problem.time_weights is not None and ctx.needs_input_grad[4]
        dq, dk, dv, dpos, dtime = hstu_bwd(do.contiguous(), q, k, v, problem, pos_grad, time_grad)
        return dq, dk, dv, dpos, dtime, None


@functools.cache
def _thresholds_on(device: torch.device) -> torch.Tensor:
    return bucket_thresholds(NUM_THRESHOLDS).to(device)


def hstu_attention_triton(q, k, v, seq_offsets, max_seq_len, alpha, pos_weights=None,
                          time_weights=None, timestamps=None, query_timestamps=None,
                          num_candidates=None, causal=True, max_len=None) -> torch.Tensor:
    """Triton twin of ``hstu_attention_reference`` (same arguments); inputs already validated.

    max_len: the longest sequence (computed from seq_offsets when None: a host sync).
    """
    if q.device.type == "cpu" and not interpreting():
        raise RuntimeError("the triton attention backend got CPU tensors: set TRITON_INTERPRET=1 "
                           "before triton is first imported, or use backend='torch'")
    if max_len is None:
        max_len = int((seq_offsets[1:] - seq_offsets[:-1]).max()) if seq_offsets.numel() > 1 else 0
    if q.shape[0] == 0 or max_len == 0:
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
    def flat(t, dtype=None):
        return None if t is None else t.to(dtype or t.dtype).contiguous()

    problem = JaggedProblem(
        flat(seq_offsets), max_len, int(max_seq_len), float(alpha), bool(causal),
        flat(num_candidates), flat(pos_weights), flat(time_weights),
        flat(timestamps, torch.int64), flat(query_timestamps, torch.int64),
        None if time_weights is None else _thresholds_on(q.device))
    # The problem passes the tables to the kernels; they go through apply() as well so autograd
    # tracks them (and hands their gradients back).
    return HSTUAttentionFunction.apply(q, k, v, pos_weights, time_weights, problem)
