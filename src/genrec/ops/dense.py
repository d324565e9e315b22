"""The token-wise parts of an HSTU layer, fused for inference on CPU.

Shape legend: T tokens, K input width, N output width.

    layer_norm_linear_silu(x, W)            = SiLU(LayerNorm(x) Wᵀ)            [T, N]
    layer_norm_gate_linear(a, u, W, b, res) = res + (LayerNorm(a) ⊙ u) Wᵀ + b   [T, N]

LayerNorm without affine parameters, as HSTU's. The reference compositions below are the
specification. Where nothing needs a gradient and the tensors are fp32 on the CPU, one native
kernel (``csrc/dense.cpp``, built by ``genrec.ops.native``) normalises a block of rows into
cache and activates (or gates and adds) the product's register tiles before storing them, so
the [T, N] activation is written once instead of once per step. That is evaluation's and
serving's path; training keeps the compositions (autograd, and Inductor fuses them).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from genrec.ops import native


def layer_norm_linear_silu_reference(x: torch.Tensor, weight: torch.Tensor,
                                     eps: float) -> torch.Tensor:
    """[T, N] = SiLU(LayerNorm(x) Wᵀ) for x [T, K], W [N, K], written plainly."""
    return F.silu(F.linear(F.layer_norm(x, x.shape[-1:], eps=eps), weight))


def layer_norm_gate_linear_reference(a: torch.Tensor, u: torch.Tensor, weight: torch.Tensor,
                                     bias: torch.Tensor | None, residual: torch.Tensor | None,
                                     eps: float) -> torch.Tensor:
    """[T, N] = residual + (LayerNorm(a) ⊙ u) Wᵀ + bias, written plainly."""
    y = F.linear(F.layer_norm(a, a.shape[-1:], eps=eps) * u, weight, bias)
    return y if residual is None else residual + y


def layer_norm_linear_silu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """[T, N] = SiLU(LayerNorm(x) Wᵀ): x [T, K], weight [N, K] (a bias-free Linear's)."""
    if not _native_fits(x, weight):
        return layer_norm_linear_silu_reference(x, weight, eps)
    lib = native.load("dense")
    if lib is None:
        return layer_norm_linear_silu_reference(x, weight, eps)
    x, weight = _rows(x), weight.contiguous()
    out = x.new_empty(x.shape[0], weight.shape[0])
    _kernel(lib, "project")(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1],
                            weight.data_ptr(), weight.shape[0], eps, out.data_ptr(),
                            out.stride(0), torch.get_num_threads())
    return out


def layer_norm_gate_linear(a: torch.Tensor, u: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None = None,
                           residual: torch.Tensor | None = None, *,
                           eps: float) -> torch.Tensor:
    """[T, N] = residual + (LayerNorm(a) ⊙ u) Wᵀ + bias.

    Args:
        a, u: [T, K]; u may be a column slice of a wider tensor (rows strided).
        weight: [N, K]; bias: [N] or None; residual: [T, N] or None.
    """
    extra = [t for t in (u, bias, residual) if t is not None]
    if not _native_fits(a, weight, *extra) or u.shape != a.shape or (
            bias is not None and bias.shape != weight.shape[:1]) or (
            residual is not None and residual.shape != (a.shape[0], weight.shape[0])):
        return layer_norm_gate_linear_reference(a, u, weight, bias, residual, eps)
    lib = native.load("dense")
    if lib is None:
        return layer_norm_gate_linear_reference(a, u, weight, bias, residual, eps)
    a, u, weight = _rows(a), _rows(u), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    residual = None if residual is None else _rows(residual)
    out = a.new_empty(a.shape[0], weight.shape[0])
    _kernel(lib, "output")(
        a.data_ptr(), a.stride(0), u.data_ptr(), u.stride(0), a.shape[0], a.shape[1],
        weight.data_ptr(), weight.shape[0], None if bias is None else bias.data_ptr(),
        None if residual is None else residual.data_ptr(),
        0 if residual is None else residual.stride(0), eps, out.data_ptr(), out.stride(0),
        torch.get_num_threads())
    return out


def _native_fits(x: torch.Tensor, weight: torch.Tensor, *others: torch.Tensor) -> bool:
    """fp32 CPU matrices of matching widths, and no gradient to track."""
    tensors = (x, weight, *others)
    return (not torch.compiler.is_compiling()
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1]
            and x.shape[1] > 0)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t itself when its rows are contiguous (any row stride), else a contiguous copy."""
    return t if t.stride(1) == 1 else t.contiguous()


_ARGUMENTS = {
    "project": [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                ctypes.c_int64, ctypes.c_int],
    "output": [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
               ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
               ctypes.c_void_p, ctypes.c_int64, ctypes.c_int],
}


def _kernel(lib: ctypes.CDLL, which: str):
    kernel = getattr(lib, f"genrec_dense_{which}_f32")
    kernel.argtypes, kernel.restype = _ARGUMENTS[which], None
    return kernel
