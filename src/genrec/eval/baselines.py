"""Non-learned baselines, ranked by the same code and protocol as the models.

**Most popular.** Every user gets the same list: items by how often they occur in the
training events (the events before each user's holdout, so neither the validation nor the
test targets leak into the counts). Equal counts are broken by item id, lowest first, so the
list is a strict order, as a deployed most-popular list would be; ranking with the
strictly-greater rule on raw counts would instead give every tied target its best place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genrec.data.batching import Protocol, Split, eval_batches, target_positions, train_ends
from genrec.data.sequences import SequenceData, _ranges
from genrec.eval.metrics import DEFAULT_KS, RankAccumulator
from genrec.eval.retrieval import rank_users


def popularity_scores(data: SequenceData, protocol: Protocol) -> np.ndarray:
    """[num_items + 1] int64 count of each item in the training events; entry 0 is 0."""
    starts = data.seq_offsets[:-1]
    lengths = np.maximum(train_ends(data, protocol) - starts, 0)
    train_items = data.item_ids[_ranges(starts, lengths)]
    return np.bincount(train_items, minlength=data.num_items + 1).astype(np.int64)


def popularity_order_scores(counts: np.ndarray) -> np.ndarray:
    """[num_items + 1] float64 distinct scores: higher count first, then lower item id.

    Item ``i`` gets ``num_items - position of i in the list``, so no two real items tie.
    """
    num_items = len(counts) - 1
    items = np.arange(1, num_items + 1)
    order = items[np.lexsort((items, -counts[1:]))]  # most popular first
    scores = np.zeros(num_items + 1, dtype=np.float64)
    scores[order] = np.arange(num_items, 0, -1, dtype=np.float64)
    return scores


def evaluate_popularity(
    data: SequenceData,
    protocol: Protocol,
    split: Split = "test",
    ks: Sequence[int] = DEFAULT_KS,
    *,
    exclude_history: bool = True,
    batch_size: int = 4096,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of the most-popular list, same users and rules as ``evaluate``.

    Returns: ``retrieval_metrics`` keys (``hr@k``, ``ndcg@k``, ``mrr``, ``num_users``).
    """
    # One score per item, one constant query: a [I + 1, 1] "item table" and [B, 1] ones.
    item_table = torch.from_numpy(popularity_order_scores(popularity_scores(data, protocol)))
    item_table = item_table[:, None]
    targets = target_positions(data, protocol, split)
    if users is not None:
        users = np.asarray(users, dtype=np.int64)
    ranks = RankAccumulator()
    # eval_batches picks the same users as `evaluate`; windows of one input keep it cheap.
    for batch in eval_batches(data, protocol, split, 1, batch_size, users):
        batch_users = batch.users.numpy()
        ones = torch.ones(len(batch_users), 1, dtype=item_table.dtype)
        ranks.add(rank_users(ones, item_table, data, batch_users, targets[batch_users],
                             exclude_history=exclude_history))
    return ranks.metrics(ks)
