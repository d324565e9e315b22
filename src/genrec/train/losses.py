"""Retrieval losses on L2-normalised vectors (SPEC §3): sampled softmax and full softmax.

Shapes: T target positions, d embedding width, K negatives, I items (ids 1..I, 0 = padding).
Scores are dot products of unit vectors divided by a temperature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ItemEmbeddings = Callable[[torch.Tensor | None], torch.Tensor]  # ids -> [..., d] unit vectors


def sample_negatives(
    num_positions: int, num_negatives: int, num_items: int, *, shared: bool,
    device: torch.device, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Item ids drawn uniformly with replacement from 1..num_items.

    Returns [T, K] (a fresh draw per position, as Meta's code) or [K] when ``shared`` (one
    draw for the whole batch: the same distribution per position, far less memory traffic).
    """
    shape = (num_negatives,) if shared else (num_positions, num_negatives)
    return torch.randint(1, num_items + 1, shape, device=device, generator=generator)


def sampled_softmax_loss(
    user: torch.Tensor,
    target_ids: torch.Tensor,
    negative_ids: torch.Tensor,
    item_embeddings: ItemEmbeddings,
    temperature: float,
    *,
    in_batch_negatives: bool = False,
    score_all_items: bool | None = None,
    fused_gather: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy of the positive against sampled negatives.

    Args:
        user: [T, d] unit vectors at positions with a target (target_ids > 0).
        target_ids: [T] positive item ids.
        negative_ids: [T, K] per-position or [K] shared negatives; a negative equal to the
            position's positive is masked out.
        in_batch_negatives: also use the other positions' positives as negatives.
        score_all_items: compute per-position negatives' logits by scoring every item with
            one matmul and gathering ([T, I] scores), instead of gathering [T, K, d]
            embeddings. The same function; faster when I is small next to K·d. None = pick.
        fused_gather: write the per-position dot products as gather · user summed over d, which
            torch.compile fuses into one loop that never materialises [T, K, d] (slower
            eager; for the compiled loss only).
    """
    table = item_embeddings(None)  # [I + 1, d] unit rows, normalised once per step
    pos_emb = table[target_ids]  # [T, d]
    pos_logit = (user * pos_emb).sum(-1, keepdim=True)  # [T, 1]
    if negative_ids.dim() == 1:
        neg_logit = user @ table[negative_ids].T  # [T, K]
        neg_mask = negative_ids[None, :] == target_ids[:, None]
    else:
        num_rows, num_neg = table.shape[0], negative_ids.shape[1]
        if score_all_items is None:
            score_all_items = not fused_gather and num_rows <= 32 * num_neg
        if fused_gather and not score_all_items:
            neg_logit = (table[negative_ids] * user.unsqueeze(1)).sum(-1)  # [T, K]
        elif score_all_items:
            neg_logit = (user @ table.T).gather(1, negative_ids)  # [T, I+1] -> [T, K]
        else:
            neg_emb = table[negative_ids]  # [T, K, d]
            neg_logit = torch.bmm(neg_emb, user.unsqueeze(-1)).squeeze(-1)  # [T, K]
        neg_mask = negative_ids == target_ids[:, None]
    logits = [pos_logit, neg_logit.masked_fill(neg_mask, float("-inf"))]
    if in_batch_negatives:
        batch_logit = user @ pos_emb.T  # [T, T]
        logits.append(batch_logit.masked_fill(target_ids[None, :] == target_ids[:, None],
                                              float("-inf")))
    logits = torch.cat(logits, dim=1) / temperature
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
