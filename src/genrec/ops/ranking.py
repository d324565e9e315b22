"""Full-ranking counts fused for the CPU: each target's rank among all items in one pass.

Shape legend: B users, d vector width, I items (ids 1..I; row 0 of the item table is
padding), H excluded (user, item) pairs.

    rank_b = 1 + #{ j in 1..I : u_b · e_j > u_b · e_t_b, j not excluded for b }

An item is excluded for b when it is one of b's history items and not b's target. The
definition, and the path taken wherever this op does not apply, is
``genrec.eval.retrieval.rank_targets``'s chunked PyTorch loop (a [users, I] score matrix, −inf
at the excluded items, a count of the scores strictly above the target's). Here
(``csrc/rank.cpp``) a register tile of users × items is compared with the users' target
scores before anything is stored, so the [B, I] matrix is never written, and the target's score
comes from the same tile function, so it has the bits of its own column.
"""

from __future__ import annotations

import ctypes

import torch

from genrec.ops import native

_I64, _VP = ctypes.c_int64, ctypes.c_void_p
_ARGUMENTS = [_VP, _I64, _I64, _I64, _VP, _I64, _VP, _VP, _VP, _VP, _VP, ctypes.c_int]


def target_ranks_native(
    user_vecs: torch.Tensor,
    item_table: torch.Tensor,
    target_ids: torch.Tensor,
    history_rows: torch.Tensor,
    history_items: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(ranks [B] int64, target scores [B] float32), or None where the kernel does not apply
    (not fp32 on the CPU, a gradient to track, no built kernel, an empty table or width).

    Args:
        user_vecs: [B, d]; item_table: [I + 1, d]; target_ids: [B] int in 1..I.
        history_rows, history_items: [H] int (batch row in 0..B−1, item in 1..I) pairs in
            any order; duplicates are harmless.
    Raises:
        ValueError: shapes or ids out of range (the kernel reads and writes by them).
    """
    tensors = (user_vecs, item_table)
    if (torch.compiler.is_compiling()
            or not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            or user_vecs.dim() != 2 or item_table.dim() != 2
            or user_vecs.shape[1] != item_table.shape[1] or user_vecs.shape[1] == 0
            or item_table.shape[0] < 2):
        return None
    lib = native.load("rank")
    if lib is None:
        return None
    kernel = lib.genrec_rank_targets_f32
    if kernel.argtypes is None:
        kernel.argtypes, kernel.restype = _ARGUMENTS, None
    num_users, num_items = user_vecs.shape[0], item_table.shape[0] - 1
    _check_ids("target_ids", target_ids, (num_users,), 1, num_items)
    _check_ids("history_rows", history_rows, history_items.shape, 0, num_users - 1)
    _check_ids("history_items", history_items, history_rows.shape, 1, num_items)
    users = user_vecs if user_vecs.stride(1) == 1 else user_vecs.contiguous()
    items = item_table.contiguous()
    targets = target_ids.to(torch.int64).contiguous()
    rows, excluded = history_rows.to(torch.int64), history_items.to(torch.int64)
    if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
        order = torch.argsort(rows, stable=True)
        rows, excluded = rows[order], excluded[order]
    offsets = torch.searchsorted(rows, torch.arange(num_users + 1, dtype=torch.int64))
    excluded = excluded.contiguous()
    ranks = torch.empty(num_users, dtype=torch.int64)
    scores = torch.empty(num_users, dtype=torch.float32)
    kernel(users.data_ptr(), users.stride(0), num_users, users.shape[1], items.data_ptr(),
           num_items, targets.data_ptr(), offsets.data_ptr(), excluded.data_ptr(),
           ranks.data_ptr(), scores.data_ptr(), torch.get_num_threads())
    return ranks, scores


def _check_ids(name: str, ids: torch.Tensor, shape: tuple, low: int, high: int) -> None:
    """ids of `shape`, on the CPU, integral, all in [low, high]."""
    if ids.shape != shape or ids.device.type != "cpu" or ids.is_floating_point():
        raise ValueError(f"{name}: expected integer ids of shape {tuple(shape)} on the CPU, "
                         f"got {ids.dtype} {tuple(ids.shape)} on {ids.device}")
    if ids.numel() and (int(ids.min()) < low or int(ids.max()) > high):
        raise ValueError(f"{name} must lie in {low}..{high}; got "
                         f"{int(ids.min())}..{int(ids.max())}")
