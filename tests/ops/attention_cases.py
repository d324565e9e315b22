"""Random jagged attention inputs and an independent float64 loop statement of the op.

Imported by the attention tests; not a test file. Nothing here comes from genrec, so the tests
hold the code under test against a second, separately written definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Case:
    """Inputs of one call; tensors that take gradients have requires_grad set."""

    q: torch.Tensor  # [T, H, Dqk]
    k: torch.Tensor  # [T, H, Dqk]
    v: torch.Tensor  # [T, H, Dv]
    seq_offsets: torch.Tensor  # [B+1]
    max_seq_len: int
    alpha: float
    pos_weights: torch.Tensor | None  # [2N − 1]
    time_weights: torch.Tensor | None  # [num_buckets]
    timestamps: torch.Tensor | None  # [T] int64
    query_timestamps: torch.Tensor | None  # [T] int64
    num_candidates: torch.Tensor | None  # [B]
    causal: bool

    def differentiable(self) -> list[torch.Tensor]:
        return [t for t in (self.q, self.k, self.v, self.pos_weights, self.time_weights)
                if t is not None]

    def kwargs(self) -> dict:
        return dict(alpha=self.alpha, pos_weights=self.pos_weights,
                    time_weights=self.time_weights, timestamps=self.timestamps,
                    query_timestamps=self.query_timestamps, num_candidates=self.num_candidates,
                    causal=self.causal)

    def cast(self, dtype: torch.dtype) -> Case:
        """A copy with q, k, v (and the tables) in dtype, as fresh leaves."""
        def leaf(t):
            return None if t is None else t.detach().to(dtype).requires_grad_()
        return Case(leaf(self.q), leaf(self.k), leaf(self.v), self.seq_offsets, self.max_seq_len,
                    self.alpha, leaf(self.pos_weights), leaf(self.time_weights), self.timestamps,
                    self.query_timestamps, self.num_candidates, self.causal)


# sequence layouts for the CPU paths: boundaries, empty sequences, candidates, each bias alone
CPU_CASES = {
    "single_token": dict(lengths=[1]),
    "odd_lengths_both_biases": dict(lengths=[3, 7, 5, 9]),
    # 64 = BLOCK_ROWS and 65, 127, 128, 129 around the block and chunk boundaries
    "block_and_chunk_boundaries": dict(lengths=[64, 65, 127, 128, 129, 2, 1], heads=1,
                                       max_seq_len=140),
    "skewed_with_empty_sequences": dict(lengths=[200, 3, 0, 1, 2, 150, 4, 0, 190, 6],
                                        max_seq_len=211),
    "candidates_causal": dict(lengths=[6, 90, 5, 70], candidates=[2, 10, 5, 0]),
    "candidates_non_causal": dict(lengths=[5, 80, 6], candidates=[3, 7, 1], causal=False),
    "non_causal_pos_only": dict(lengths=[9, 66, 2], causal=False, time=False),
    "time_only_odd_dims": dict(lengths=[70, 13, 1], pos=False, dqk=5, dv=3),
    "no_bias_wide_table": dict(lengths=[2, 71, 5], pos=False, time=False, max_seq_len=99),
}


def make_case(lengths: list[int], *, heads: int = 2, dqk: int = 8, dv: int = 8,
              max_seq_len: int | None = None, pos: bool = True, time: bool = True,
              candidates: list[int] | None = None, causal: bool = True, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> Case:
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    N = max_seq_len or max(max(lengths), 1)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    q, k, v = randn(T, heads, dqk), randn(T, heads, dqk), randn(T, heads, dv)
    timestamps = torch.cumsum(torch.randint(0, 4000, (T,), generator=g), 0)
    query_timestamps = timestamps + torch.randint(0, 9000, (T,), generator=g)
    return Case(
        q, k, v, torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()]), N, 0.5,
        randn(2 * N - 1, scale=0.5) if pos else None, randn(33, scale=0.5) if time else None,
        timestamps if time else None, query_timestamps if time else None,
        None if candidates is None else torch.tensor(candidates), causal,
    ).cast(dtype)


def bucket(gap: int, num_buckets: int) -> int:
    return min(max(math.floor(math.log(max(abs(gap), 1)) / 0.301), 0), num_buckets - 1)


def loop_attention(c: Case) -> torch.Tensor:
    """out [T, H, Dv], one query and one key at a time, in float64; differentiable."""
    q, k, v = c.q.double(), c.k.double(), c.v.double()
    pos = None if c.pos_weights is None else c.pos_weights.double()
    time = None if c.time_weights is None else c.time_weights.double()
    N, rows = c.max_seq_len, []
    for b in range(len(c.seq_offsets) - 1):
        start, end = int(c.seq_offsets[b]), int(c.seq_offsets[b + 1])
        n = end - start
        first_candidate = n - (0 if c.num_candidates is None else int(c.num_candidates[b]))
        for i in range(n):
            acc = torch.zeros(v.shape[1], v.shape[2], dtype=torch.float64)
            for j in range(n):
                if c.causal and j > i:
                    continue
                if i >= first_candidate and j >= first_candidate and i != j:
                    continue
                logit = c.alpha * (q[start + i] * k[start + j]).sum(-1)  # [H]
                if pos is not None:
                    logit = logit + pos[j - i + N - 1]
                if time is not None:
                    gap = int(c.query_timestamps[start + i]) - int(c.timestamps[start + j])
                    logit = logit + time[bucket(gap, time.numel())]
                acc = acc + (F.silu(logit) / N)[:, None] * v[start + j]
            rows.append(acc)
    return torch.stack(rows) if rows else v.new_zeros(0, v.shape[1], v.shape[2])


def relative_error(fast: torch.Tensor, ref: torch.Tensor) -> float:
    """‖fast − ref‖ / ‖ref‖ in float64 (0 when both are 0)."""
    fast, ref = fast.detach().double(), ref.detach().double()
    scale = ref.norm()
    return float((fast - ref).norm() / scale) if scale > 0 else float((fast - ref).norm())


def output_and_grads(fn, c: Case, seed: int = 1) -> list[torch.Tensor]:
    """[out, d q, d k, d v, (d pos), (d time)] for a fixed random upstream gradient."""
    out = fn(c)
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, c.differentiable(), upstream)
    return [out, *grads]


def nan_buffers(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A stand-in for an op module's ``new_output``: buffers start as NaN, so an element the
    op leaves unwritten shows in the result (tests monkeypatch it in)."""
    return torch.full(shape, math.nan, dtype=like.dtype, device=like.device)
