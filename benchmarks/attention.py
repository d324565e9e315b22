"""Fused jagged HSTU attention (Triton) against PyTorch SDPA flash attention, on one GPU.

Each batch holds 131,072 tokens, 4 heads, dqk = dv = 128, bf16, for N in {1024, 2048, 4096,
8192}: full-length sequences (all n = N) and jagged ones (n = max(16, N·u²), u ~ U(0, 1)),
without bias and with both relative biases (position + time). Times are medians of
triton.testing.do_bench; TFLOP/s count causal FLOPs only: forward 4·H·D·Σ n(n+1)/2, backward
2.5× that. SDPA (softmax, causal, flash backend) runs on the same batch padded to [B, H, L, D]
(L = longest) and is credited with the same useful FLOPs, so its TFLOP/s include the padding
it wastes. Prints one table and writes the rows as JSON.

    python benchmarks/attention.py                       # full sweep, ~minutes on an H100
    python benchmarks/attention.py --quick               # smoke: small batch, two lengths
    python benchmarks/attention.py --check               # bf16/fp32 parity vs the reference
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from genrec.ops import hstu_attention

NUM_TIME_BUCKETS = 129


def sequence_lengths(layout: str, N: int, tokens: int, generator: torch.Generator) -> list[int]:
    """Lengths summing to `tokens`: all N ('full'), or max(16, N·u²) ('jagged')."""
    if layout == "full":
        return [N] * max(1, tokens // N)
    lengths, total = [], 0
    while total < tokens:
        u = float(torch.rand((), generator=generator))
        n = min(max(16, int(N * u * u)), tokens - total)
        lengths.append(n)
        total += n
    return lengths


def make_batch(lengths: list[int], heads: int, dqk: int, dv: int, N: int, bias: bool,
               candidates: bool, dtype: torch.dtype, seed: int) -> dict:
    """hstu_attention keyword arguments for a random batch on the GPU."""
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to("cuda", dtype)

    batch = dict(
        q=randn(T, heads, dqk, scale=0.5), k=randn(T, heads, dqk, scale=0.5),
        v=randn(T, heads, dv), seq_offsets=torch.tensor([0, *torch.tensor(lengths).cumsum(0)
                                                        .tolist()], device="cuda"),
        max_seq_len=N, alpha=1.0 / dqk ** 0.5,
    )
    if bias:
        timestamps = torch.cumsum(torch.randint(0, 3600, (T,), generator=g), 0)
        batch.update(
            pos_weights=(torch.randn(2 * N - 1, generator=g) * 0.02).cuda(),
            time_weights=(torch.randn(NUM_TIME_BUCKETS, generator=g) * 0.02).cuda(),
            timestamps=timestamps.cuda(),
            query_timestamps=(timestamps + torch.randint(0, 3600, (T,), generator=g)).cuda())
    if candidates:
        batch["num_candidates"] = torch.tensor([min(n // 4, 16) for n in lengths], device="cuda")
    return batch


def causal_flops(lengths: list[int], heads: int, dim: int) -> float:
    """Forward FLOPs of causal attention: QKᵀ and PV, 2·D each, over n(n+1)/2 pairs."""
    return 4.0 * heads * dim * sum(n * (n + 1) / 2 for n in lengths)


def differentiable(batch: dict) -> list[torch.Tensor]:
    keys = ("q", "k", "v", "pos_weights", "time_weights")
    return [batch[k].requires_grad_() for k in keys if batch.get(k) is not None]


def time_ms(fn, quick: bool) -> float:
    import triton.testing

    warmup, rep = (5, 20) if quick else (25, 100)
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def bench_hstu(batch: dict, quick: bool) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of the Triton backend."""
    inputs = differentiable(batch)
    kwargs = {k: v for k, v in batch.items() if k not in ("q", "k", "v", "seq_offsets",
                                                           "max_seq_len")}

    def forward():
        return hstu_attention(batch["q"], batch["k"], batch["v"], batch["seq_offsets"],
                              batch["max_seq_len"], backend="triton", **kwargs)

    upstream = torch.randn_like(forward())
    return (time_ms(forward, quick),
            time_ms(lambda: torch.autograd.grad(forward(), inputs, upstream), quick))


def bench_sdpa(lengths: list[int], heads: int, dim: int, quick: bool) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of causal flash SDPA on the batch padded to L."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shape = (len(lengths), heads, max(lengths), dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))

    def forward():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    upstream = torch.randn_like(forward())
    return (time_ms(forward, quick),
            time_ms(lambda: torch.autograd.grad(forward(), (q, k, v), upstream), quick))


def run_sweep(args) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for N in args.lengths:
        for layout in ("full", "jagged"):
            lengths = sequence_lengths(layout, N, args.tokens, g)
            flops = causal_flops(lengths, args.heads, args.dim)
            sdpa_fwd, sdpa_both = bench_sdpa(lengths, args.heads, args.dim, args.quick)
            for bias in (False, True):
                batch = make_batch(lengths, args.heads, args.dim, args.dim, N, bias, False,
                                   torch.bfloat16, seed=N)
                fwd, both = bench_hstu(batch, args.quick)
                rows.append(dict(
                    N=N, layout=layout, bias=bias, sequences=len(lengths), tokens=sum(lengths),
                    hstu_fwd_ms=fwd, hstu_fwd_tflops=flops / fwd / 1e9,
                    hstu_fwd_bwd_ms=both, hstu_fwd_bwd_tflops=3.5 * flops / both / 1e9,
                    sdpa_fwd_ms=sdpa_fwd, sdpa_fwd_tflops=flops / sdpa_fwd / 1e9,
                    sdpa_fwd_bwd_ms=sdpa_both, sdpa_fwd_bwd_tflops=3.5 * flops / sdpa_both / 1e9,
                    speedup_fwd_bwd=sdpa_both / both))
                print_row(rows[-1], header=len(rows) == 1)
                del batch
            torch.cuda.empty_cache()
    return rows


COLUMNS = [("N", "N", "{:>6}"), ("layout", "layout", "{:>7}"), ("bias", "bias", "{!s:>5}"),
           ("hstu_fwd_ms", "fwd ms", "{:>8.3f}"), ("hstu_fwd_tflops", "TF/s", "{:>6.1f}"),
           ("hstu_fwd_bwd_ms", "f+b ms", "{:>8.3f}"), ("hstu_fwd_bwd_tflops", "TF/s", "{:>6.1f}"),
           ("sdpa_fwd_ms", "sdpa fwd", "{:>8.3f}"), ("sdpa_fwd_bwd_ms", "sdpa f+b", "{:>8.3f}"),
           ("sdpa_fwd_bwd_tflops", "TF/s", "{:>6.1f}"), ("speedup_fwd_bwd", "x sdpa", "{:>6.2f}")]


def print_row(row: dict, header: bool) -> None:
    if header:
        print(" ".join(f"{title:>{len(fmt.format(row[key]))}}" for key, title, fmt in COLUMNS))
    print(" ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS), flush=True)


def relative_error(fast: torch.Tensor, ref: torch.Tensor) -> float:
    fast, ref = fast.double(), ref.double()
    return float((fast - ref).norm() / ref.norm().clamp_min(1e-30))


def check_case(name: str, lengths: list[int], heads: int, dqk: int, dv: int, N: int,
               dtype: torch.dtype, causal: bool) -> bool:
    """Kernel vs float64 reference, output and every gradient; flash-attention's 2× rule."""
    base = make_batch(lengths, heads, dqk, dv, N, True, True, torch.float32, seed=len(lengths))
    base["causal"] = causal

    def run(backend: str, to: torch.dtype) -> list[torch.Tensor]:
        tables = torch.float64 if to == torch.float64 else torch.float32  # parameters stay fp32
        batch = {k: v.detach().to(tables if k.endswith("_weights") else to)
                 if torch.is_tensor(v) and v.is_floating_point() else v for k, v in base.items()}
        inputs = differentiable(batch)
        args = [batch.pop(k) for k in ("q", "k", "v", "seq_offsets", "max_seq_len")]
        out = hstu_attention(*args, backend=backend, **batch)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        return [out, *torch.autograd.grad(out, inputs, upstream.to(out))]

    exact = run("torch", torch.float64)
    fast = run("triton", dtype)
    plain = run("torch", dtype)
    ok = True
    for what, f, p, e in zip(["out", "dq", "dk", "dv", "dpos", "dtime"], fast, plain, exact,
                               strict=True):
        err, base_err = relative_error(f, e), relative_error(p, e)
        bound = 1e-5 if dtype == torch.float32 else 2 * base_err + 1e-3
        good = bool(torch.isfinite(f).all()) and err <= bound
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {name} {str(dtype)[6:]} {what}: triton {err:.2e}, "
              f"torch {base_err:.2e}, bound {bound:.2e}")
    return ok


def run_check() -> bool:
    """bf16 and fp32 parity at real-ish sizes (paper head dims 25, 50, and 128)."""
    g = torch.Generator().manual_seed(1)
    jagged = sequence_lengths("jagged", 1024, 6000, g)
    cases = [("ml1m_large", [211, 200, 57, 1, 130], 2, 25, 25, 211, True),
             ("ml1m", [211, 17, 64, 199], 1, 50, 50, 211, True),
             ("jagged_1024_d128", jagged, 4, 128, 128, 1024, True),
             ("noncausal_dqk64_dv32", [300, 45, 129], 4, 64, 32, 512, False)]
    ok = True
    for dtype in (torch.bfloat16, torch.float32):
        for name, lengths, heads, dqk, dv, N, causal in cases:
            ok &= check_case(name, lengths, heads, dqk, dv, N, dtype, causal)
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/attention.json"),
                   help="JSON file for the rows (default: %(default)s)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                   help="max_seq_len values N")
    p.add_argument("--tokens", type=int, default=131072, help="tokens per batch")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=128, help="dqk = dv")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 8192 tokens, N in {256, 512}, short timing")
    p.add_argument("--check", action="store_true",
                   help="parity of triton (bf16, fp32) against the reference instead of timing")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/attention.py needs a CUDA GPU (the Triton kernel's CPU path is the "
                 "interpreter, which only the tests use)")
    if args.check:
        sys.exit(0 if run_check() else 1)
    if args.quick:
        args.tokens, args.lengths = 8192, [256, 512]
    rows = run_sweep(args)
    import triton

    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=triton.__version__, python=platform.python_version(),
                  tokens=args.tokens, heads=args.heads, dqk=args.dim, dv=args.dim,
                  dtype="bfloat16", flops="causal: fwd 4·H·D·Σn(n+1)/2, bwd 2.5× fwd",
                  rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
