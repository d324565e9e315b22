"""Compile the attention kernels for an H100 (sm_90) on a machine without a GPU.

Run as a script with TRITON_INTERPRET unset (the tests do, in a subprocess): lowering through
TTGIR, PTX and ptxas catches what the interpreter cannot (layouts of tl.gather, loop and
early-return lowering, dtype rules of tl.dot). It does not run anything.
"""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from genrec.ops.attention import kernel

POINTERS = dict(seq_offsets="*i64", num_candidates="*i64", pos_ptr="*fp32", time_ptr="*fp32",
                ts_ptr="*i64", qts_ptr="*i64", thr_ptr="*i64", dpos_ptr="*fp32",
                dtime_ptr="*fp32")
TOKEN_TENSORS = ("Q", "K", "V", "Out", "DO", "DK", "DV", "DQ")


def compile_for_hopper(fn, dtype: str, constexprs: dict) -> triton.compiler.CompiledKernel:
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in TOKEN_TENSORS:
            signature[name] = f"*{dtype}"
        else:
            signature[name] = POINTERS.get(name, "fp32" if name in ("alpha", "inv_norm") else "i32")
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 4, "num_stages": 2})


def main() -> None:
    flags = dict(CAUSAL=True, HAS_CAND=True, HAS_POS=True, HAS_TIME=True, BLOCK_M=64,
                 BLOCK_N=64, BLOCK_DQK=128, BLOCK_DV=128, PRECISION="tf32")
    for fn, extra in ((kernel.hstu_fwd_kernel, {}), (kernel.hstu_bwd_dq_kernel, {}),
                      (kernel.hstu_bwd_dkdv_kernel, dict(POS_GRAD=True, TIME_GRAD=True,
                                                         DIAG=128))):
        compiled = compile_for_hopper(fn, "bf16", dict(flags, **extra))
        assert "cubin" in compiled.asm, fn.__name__
        print(f"{fn.__name__}: sm_90 cubin, {compiled.metadata.shared} B shared memory")


if __name__ == "__main__":
    main()
