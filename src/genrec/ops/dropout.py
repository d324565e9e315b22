"""Dropout whose random draw stays a plain PyTorch call under torch.compile.

Same distribution as ``nn.Dropout``: each element is kept with probability 1 − p and scaled
by 1 / (1 − p). Inductor lowers ``nn.Dropout`` on CPU to a counter-based generator evaluated
per element inside the fused kernel: ~15 ms per [13k, 50] activation on 2 cores, the largest
single cost of a compiled HSTU-large step (one dropout per layer). Here the keep mask comes
from uniform 64-bit words (``genrec.ops.rng``: a native counter-based generator on CPU,
PyTorch's ``random_`` elsewhere), four 16-bit decisions per word, inside a custom op, which
Inductor calls as is; the multiply-and-scale still fuses with its neighbours. The words'
seed comes from PyTorch's default generator, so ``torch.manual_seed`` and checkpointed RNG
state apply.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.ops.rng import random_words


@torch.library.custom_op("genrec::keep_mask", mutates_args=())
def _keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    # Four keep decisions per 64-bit random word: each 16-bit quarter is a uniform int16,
    # kept when >= t, so P(keep) = 1 - round(p * 2**16) / 2**16, off from 1 - p by at most
    # 2**-17 (p = 0.2 drops 0.199997). With PyTorch's serial generator, 16-bit decisions took
    # a [13500, 50] mask from 1.47 to 0.87 ms (32-bit ones) on CPU-2.
    n = like.numel()
    words = random_words((n + 3) // 4, device=like.device)
    quarters = words.view(torch.int16)[:n].view(like.shape)
    threshold = round(p * 2**16) - 2**15  # in [-2**15, 2**15]
    if threshold > 2**15 - 1:  # p rounds to 1: no int16 is that large, nothing is kept
        return torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    return quarters >= threshold


@_keep_mask.register_fake
def _(like, p):
    return torch.empty(like.shape, dtype=torch.bool, device=like.device)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """x with each element zeroed with probability p, the rest scaled by 1 / (1 − p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    keep = _keep_mask(x.detach(), float(p))
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
