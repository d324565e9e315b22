"""A sequence model's input embedding: item rows scaled, plus learned absolute positions.

Shape legend: T tokens, d embedding width, I + 1 item rows (row 0 padding), P positions.

    input_embedding(ids, pos, E, P, s) = E[ids] · s + P[pos],  zero rows where ids == 0

``input_embedding_reference`` is the specification (any dtype, device, autograd). Where
nothing needs a gradient and the tensors are fp32 on the CPU, one native pass
(``genrec_input_embedding_f32`` in ``csrc/dense.cpp``) writes the [T, d] rows straight from
the two tables: the composition makes five [T, d] passes (two gathers, scale, add, mask),
about 0.8 ms of an evaluation batch of 13k tokens on 2 cores, the native pass about 0.1 ms.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from genrec.ops import native


def input_embedding_reference(item_ids: torch.Tensor, positions: torch.Tensor,
                              item_table: torch.Tensor, position_table: torch.Tensor,
                              scale: float) -> torch.Tensor:
    """[T, d] = item_table[item_ids] · scale + position_table[positions], 0 where id is 0."""
    # padding_idx: row 0 gets no gradient (nn.Embedding's rule), not even a NaN one
    items = F.embedding(item_ids, item_table, padding_idx=0)
    x = items * scale + F.embedding(positions, position_table)
    return x * (item_ids != 0).unsqueeze(-1).to(x.dtype)


def input_embedding(item_ids: torch.Tensor, positions: torch.Tensor, item_table: torch.Tensor,
                    position_table: torch.Tensor, scale: float) -> torch.Tensor:
    """[T, d] input rows: ``input_embedding_reference``'s, natively where it fits.

    Args:
        item_ids: [T] int64 in [0, I] (0: padding, a zero row); positions: [T] int64 in [0, P).
        item_table: [I + 1, d]; position_table: [P, d]; scale: the item rows' factor (√d).
    """
    if not _native_fits(item_ids, positions, item_table, position_table):
        return input_embedding_reference(item_ids, positions, item_table, position_table, scale)
    lib = native.load("dense")
    if lib is None:
        return input_embedding_reference(item_ids, positions, item_table, position_table, scale)
    items, table = item_table.contiguous(), position_table.contiguous()
    ids, pos = item_ids.contiguous(), positions.contiguous()
    tokens, width = ids.numel(), items.shape[1]
    out = new_output((tokens, width), items)
    kernel = lib.genrec_input_embedding_f32
    if kernel.argtypes is None:
        kernel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                           ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        kernel.restype = ctypes.c_int64
    bad = kernel(ids.data_ptr(), pos.data_ptr(), tokens, items.data_ptr(), items.shape[0],
                 table.data_ptr(), table.shape[0], width, scale, out.data_ptr(),
                 torch.get_num_threads())
    if bad >= 0:
        raise IndexError(f"input_embedding: token {bad} has item id {int(ids[bad])} (the item "
                         f"table has rows 0..{items.shape[0] - 1}) or position {int(pos[bad])} "
                         f"(the position table has rows 0..{table.shape[0] - 1})")
    return out


def new_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer that the kernel fills completely (tests poison it with NaN)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _native_fits(item_ids, positions, item_table, position_table) -> bool:
    """int64 index vectors of one length and fp32 tables of one width, all on the CPU, no
    gradient to track, not compiling."""
    tables = (item_table, position_table)
    return (not torch.compiler.is_compiling()
            and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2
                    for t in tables)
            and item_table.shape[1] == position_table.shape[1]
            and all(t.dtype == torch.int64 and t.device.type == "cpu" and t.dim() == 1
                    for t in (item_ids, positions))
            and item_ids.shape == positions.shape
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tables)))
