"""Compute ops with a PyTorch reference and fast twins behind one dispatch function."""

from genrec.ops.attention import hstu_attention, hstu_attention_last
from genrec.ops.gather import gather_dot

__all__ = ["gather_dot", "hstu_attention", "hstu_attention_last"]
