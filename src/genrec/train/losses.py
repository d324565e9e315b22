"""Retrieval losses on L2-normalised vectors (SPEC §3): sampled softmax and full softmax.

Shapes: T target positions, d embedding width, K negatives, I items (ids 1..I, 0 = padding).
Scores are dot products of unit vectors divided by a temperature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from genrec.ops.gather import gather_dot
from genrec.ops.rng import randint

ItemEmbeddings = Callable[[torch.Tensor | None], torch.Tensor]  # ids -> [..., d] unit vectors


def sample_negatives(
    num_positions: int, num_negatives: int, num_items: int, *, shared: bool,
    device: torch.device, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Item ids drawn uniformly with replacement from 1..num_items.

    Returns [T, K] (a fresh draw per position, as Meta's code) or [K] when ``shared`` (one
    draw for the whole batch: the same distribution per position, far less memory traffic).
    Drawn by ``genrec.ops.rng.randint`` (parallel on CPU, seeded from PyTorch's generator).
    """
    shape = (num_negatives,) if shared else (num_positions, num_negatives)
    return randint(1, num_items + 1, shape, device=device, generator=generator)


def sampled_softmax_loss(
    user: torch.Tensor,
    target_ids: torch.Tensor,
    negative_ids: torch.Tensor,
    item_embeddings: ItemEmbeddings,
    temperature: float,
    *,
    in_batch_negatives: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy of the positive against sampled negatives.

    Args:
        user: [T, d] unit vectors at positions with a target (target_ids > 0).
        target_ids: [T] positive item ids.
        negative_ids: [T, K] per-position or [K] shared negatives; a negative equal to the
            position's positive is masked out.
        in_batch_negatives: also use the other positions' positives as negatives.

    Per-position logits go through ``genrec.ops.gather`` (positive and negatives in one
    [T, 1 + K] gather), whose backward never scatters [T, K, d] rows into the table.
    """
    table = item_embeddings(None)  # [I + 1, d] unit rows, normalised once per step
    if negative_ids.dim() == 1:
        pos_logit = (user * table[target_ids]).sum(-1, keepdim=True)  # [T, 1]
        neg_logit = user @ table[negative_ids].T  # [T, K]
        neg_mask = negative_ids[None, :] == target_ids[:, None]
        logits = torch.cat([pos_logit, neg_logit.masked_fill(neg_mask, float("-inf"))], 1)
    else:
        ids = torch.cat([target_ids[:, None], negative_ids], dim=1)  # [T, 1 + K]
        logits = gather_dot(user, table, ids)
        # a negative that is the position's positive is no negative (column 0 is the positive)
        is_positive = ids == target_ids[:, None]
        is_positive[:, 0] = False
        logits = logits.masked_fill(is_positive, float("-inf"))
    if in_batch_negatives:
        batch_logit = user @ table[target_ids].T  # [T, T]
        logits = torch.cat([logits, batch_logit.masked_fill(
            target_ids[None, :] == target_ids[:, None], float("-inf"))], dim=1)
    logits = logits / temperature
    # cross-entropy with the positive in column 0
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def full_softmax_loss(
    user: torch.Tensor, target_ids: torch.Tensor, item_embeddings: ItemEmbeddings,
    temperature: float,
) -> torch.Tensor:
    """Mean cross-entropy over every item (1..I); for small catalogues. user: [T, d]."""
    table = item_embeddings(None)[1:]  # [I, d], padding row excluded
    logits = user @ table.T / temperature  # [T, I]
    return F.cross_entropy(logits, target_ids - 1)
