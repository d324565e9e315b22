"""Dropout whose random draw stays a plain PyTorch call under torch.compile.

Same distribution as ``nn.Dropout``: each element is kept with probability 1 − p and scaled
by 1 / (1 − p). Inductor lowers ``nn.Dropout`` on CPU to a counter-based generator evaluated
per element inside the fused kernel: ~15 ms per [13k, 50] activation on 2 cores, the largest
single cost of a compiled HSTU-large step (one dropout per layer). ``torch.rand_like``, the
vectorised CPU generator, draws the same uniforms in ~3 ms; here it is a custom op, which
Inductor calls as is, and the compare-and-scale still fuses with its neighbours. Draws come
from PyTorch's default generator, so ``torch.manual_seed`` and checkpointed RNG state apply.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.library.custom_op("genrec::uniform_like", mutates_args=())
def _uniform_like(like: torch.Tensor) -> torch.Tensor:
    return torch.rand_like(like)


@_uniform_like.register_fake
def _(like):
    return torch.empty_like(like)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """x with each element zeroed with probability p, the rest scaled by 1 / (1 − p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    keep = _uniform_like(x.detach()) >= p  # uniforms in [0, 1): P(keep) = 1 − p
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` through ``genrec.ops.dropout`` (same distribution, cheaper compiled)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
