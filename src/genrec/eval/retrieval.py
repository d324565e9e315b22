"""Full-ranking retrieval evaluation (SPEC §4): rank each user's target against every item.

For each evaluated user the model reads the events before the target (the last
``max_seq_len`` of them), and its output at the last input token is the user vector. Every
real item ``1..num_items`` is scored by a dot product with it (the temperature is a positive
scale, so it cannot change a ranking and is left out); column 0, padding, is never ranked.

Decisions, written down because they move the numbers:

- **Rank rule.** rank = 1 + the number of items scoring *strictly* higher than the target.
  Ties go in the target's favour; with float scores of a trained model they are vanishingly
  rare (the popularity baseline breaks its ties itself, see ``baselines.py``).
- **History exclusion.** Items the user interacted with *before the target* are removed from
  the ranking, and that is the user's whole past, not only the ``max_seq_len`` window the
  model sees: a recommender would not re-offer an item the user already had, however long
  ago. (In the ``strict`` protocol the test history includes the validation event.)
- **Repeat consumption.** The target itself is never removed, even when the user had it
  before: the user did consume it again, so the model is asked to rank it.
- **Who is evaluated.** Every user with at least one event before the target (others have no
  input to encode); ``num_users`` in the result counts them.

Shapes: B users in a batch, I = num_items, d = embedding dim, H = history events in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from genrec.data.batching import Protocol, Split, eval_batches, target_positions
from genrec.data.sequences import SequenceData, _ranges
from genrec.eval.metrics import DEFAULT_KS, RankAccumulator
from genrec.models.base import SequentialRetrievalModel
from genrec.ops.ranking import target_ranks_native

# Score matrices are built for at most this many (user, item) pairs at once: 2^25 fp32 scores
# = 128 MiB, enough for a 512-user batch against 65k items in a single matmul.
MAX_SCORES_PER_CHUNK = 1 << 25


def history_before(
    data: SequenceData, users: np.ndarray, target_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every item each user had before its target, as (row, item) pairs; no Python loop.

    Args:
        users: [B] user rows.
        target_pos: [B] global event index of each user's target.
    Returns:
        (history_rows [H], history_items [H]) int64: row ``b`` of the batch had item
        ``history_items[h]`` wherever ``history_rows[h] == b``. Duplicates are harmless.
    """
    starts = data.seq_offsets[users]
    lengths = np.maximum(target_pos - starts, 0)
    rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    return rows, data.item_ids[_ranges(starts, lengths)]


def rank_targets(
    user_vecs: torch.Tensor,
    item_table: torch.Tensor,
    target_ids: torch.Tensor,
    history_rows: torch.Tensor | np.ndarray | None = None,
    history_items: torch.Tensor | np.ndarray | None = None,
    *,
    max_scores_per_chunk: int = MAX_SCORES_PER_CHUNK,
) -> torch.Tensor:
    """1-based rank of each target among all items, history items excluded.

    Args:
        user_vecs: [B, d] one query vector per user.
        item_table: [I + 1, d] item vectors; row 0 (padding) is never ranked.
        target_ids: [B] int, each user's target item in 1..I.
        history_rows, history_items: [H] int pairs (batch row, item): items removed from that
            row's ranking. The row's own target is never removed (repeat consumption).
        max_scores_per_chunk: cap on the size of one [users, I] score matrix (memory).
    Returns:
        [B] int64 ranks: 1 + the number of non-excluded items scoring strictly higher.

    The loop below is the definition. For fp32 on the CPU, ``genrec.ops.ranking`` counts the
    same ranks in one fused pass, without the [users, I] score matrix.
    """
    device = user_vecs.device
    num_users, num_items = user_vecs.shape[0], item_table.shape[0] - 1
    target_ids = torch.as_tensor(target_ids, device=device).long()
    if target_ids.shape != (num_users,):
        raise ValueError(f"target_ids must hold one id per user vector ({num_users}); got "
                         f"shape {tuple(target_ids.shape)}")
    if target_ids.numel() and (target_ids.min() < 1 or target_ids.max() > num_items):
        raise ValueError(f"target ids must lie in 1..{num_items} (0 is padding); "
                         f"got range {int(target_ids.min())}..{int(target_ids.max())}")
    if history_rows is None or history_items is None:
        history_rows = history_items = torch.zeros(0, dtype=torch.long)
    history_rows = torch.as_tensor(history_rows, device=device).long()
    history_items = torch.as_tensor(history_items, device=device).long()
    if history_rows.shape != history_items.shape:
        raise ValueError(f"history_rows {tuple(history_rows.shape)} and history_items "
                         f"{tuple(history_items.shape)} must be pairs of the same length")
    if history_rows.numel() and (history_rows.min() < 0 or history_rows.max() >= num_users
                                 or history_items.min() < 1
                                 or history_items.max() > num_items):
        raise ValueError(f"history pairs must have rows in 0..{num_users - 1} and items in "
                         f"1..{num_items}; got rows {int(history_rows.min())}.."
                         f"{int(history_rows.max())}, items {int(history_items.min())}.."
                         f"{int(history_items.max())}")

    fused = target_ranks_native(user_vecs, item_table, target_ids, history_rows, history_items)
    if fused is not None:
        ranks, target_scores = fused
        _check_target_scores(target_scores)
        return ranks

    history_cols = history_items - 1  # column = item - 1

    real_items_t = item_table[1:].to(user_vecs.dtype).T  # [d, I], padding dropped
    ranks = torch.empty(num_users, dtype=torch.long, device=device)
    users_per_chunk = max(1, max_scores_per_chunk // max(num_items, 1))
    for lo in range(0, num_users, users_per_chunk):
        hi = min(lo + users_per_chunk, num_users)
        scores = user_vecs[lo:hi] @ real_items_t  # [b, I]: column j scores item j + 1
        # Read the targets' scores before masking: the target itself is never excluded.
        target_scores = scores.gather(1, (target_ids[lo:hi] - 1)[:, None])  # [b, 1]
        _check_target_scores(target_scores)
        in_chunk = (history_rows >= lo) & (history_rows < hi)
        scores.index_put_(
            (history_rows[in_chunk] - lo, history_cols[in_chunk]),
            torch.tensor(float("-inf"), dtype=scores.dtype, device=device),
        )
        ranks[lo:hi] = 1 + (scores > target_scores).sum(dim=1)
    return ranks


def _check_target_scores(target_scores: torch.Tensor) -> None:
    if not torch.isfinite(target_scores).all():
        raise ValueError("the model produced a non-finite score for a target item; "
                         "check the user vectors and item embeddings for NaN/inf")


def rank_users(
    user_vecs: torch.Tensor,
    item_table: torch.Tensor,
    data: SequenceData,
    users: np.ndarray,
    target_pos: np.ndarray,
    *,
    exclude_history: bool = True,
) -> torch.Tensor:
    """[B] ranks of the targets at global event indices `target_pos` of rows `users`.

    The one ranking path shared by the model evaluator and the baselines.
    """
    target_ids = torch.from_numpy(data.item_ids[target_pos]).to(user_vecs.device)
    rows = items = None
    if exclude_history:
        rows, items = history_before(data, users, target_pos)
    return rank_targets(user_vecs, item_table, target_ids, rows, items)


def evaluate(
    model: SequentialRetrievalModel,
    data: SequenceData,
    *,
    protocol: Protocol,
    split: Split = "test",
    max_seq_len: int,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    exclude_history: bool = True,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking HR@k, NDCG@k and MRR of `model` on the `split` targets of `data`.

    Args:
        model: already on `device`; it is put in eval mode and its mode restored after.
        protocol: ``"paper"`` (last event = test) or ``"strict"`` (second-to-last = valid).
        split: ``"test"`` or ``"valid"`` (``"valid"`` needs ``protocol="strict"``).
        max_seq_len: the model sees at most this many events before the target.
        ks: cutoffs for HR and NDCG.
        users: optional [U'] user rows to evaluate (default: all).
        exclude_history: remove every item the user had before the target from its ranking.
    Returns:
        ``retrieval_metrics`` keys: ``hr@k``, ``ndcg@k`` for each k, ``mrr``, ``num_users``.
    """
    targets = target_positions(data, protocol, split)  # [U] global event index
    users = np.arange(data.num_users) if users is None else np.asarray(users, dtype=np.int64)
    # batches of similar history lengths pad less; metrics do not depend on the order
    history = np.minimum(targets[users] - data.seq_offsets[users], max_seq_len)
    users = users[np.argsort(history, kind="stable")]
    ranks = RankAccumulator()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            item_table = model.item_embeddings().to(device)  # [I + 1, d]
            if item_table.shape[0] != data.num_items + 1:
                raise ValueError(
                    f"the model scores {item_table.shape[0] - 1} items but data set "
                    f"{data.name!r} has {data.num_items}; was it trained on this data?")
            batches = eval_batches(data, protocol, split, max_seq_len, batch_size, users)
            for batch in batches:
                batch_users = batch.users.numpy()
                last = batch.last_positions()
                target_pos = targets[batch_users]
                if not np.array_equal(batch.target_ids[last].numpy(),
                                      data.item_ids[target_pos]):
                    raise RuntimeError("eval batch targets disagree with target_positions")
                user_vecs = model.last_vectors(batch.to(device))  # [B, d]
                ranks.add(rank_users(user_vecs, item_table, data, batch_users, target_pos,
                                     exclude_history=exclude_history))
    finally:
        model.train(was_training)
    return ranks.metrics(ks)
