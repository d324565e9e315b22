"""Compute ops with a PyTorch reference and fast twins behind one dispatch function."""

from genrec.ops.attention import hstu_attention

__all__ = ["hstu_attention"]
