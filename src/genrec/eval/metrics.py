"""Retrieval metrics from the 1-based rank of each user's target (SPEC §4).

Every metric here is a pure function of ``ranks`` [U]: the position of the target in the
user's full ranking of items, 1 = top. ``ranks`` may be a torch tensor, a numpy array or a
list. An empty ``ranks`` gives NaN (there is no mean over no users), never an exception.

    HR@k   = mean( rank <= k )
    NDCG@k = mean( 1 / log2(rank + 1)  if rank <= k else 0 )   # one relevant item, IDCG = 1
    MRR    = mean( 1 / rank )                                   # full, no cutoff
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Ranks = torch.Tensor | np.ndarray | Sequence[int]

DEFAULT_KS = (1, 10, 50, 200)


def _as_ranks(ranks: Ranks) -> np.ndarray:
    """[U] float64 ranks, checked to be >= 1."""
    if torch.is_tensor(ranks):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if ranks.size and not (ranks >= 1).all():
        bad = ranks[~(ranks >= 1)][:5].tolist()
        raise ValueError(f"ranks are 1-based (1 = top of the list); got {bad}")
    return ranks


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def hr_at_k(ranks: Ranks, k: int) -> float:
    """Hit rate at k: the fraction of users whose target ranks in the top k."""
    return _mean(_as_ranks(ranks) <= k)


def ndcg_at_k(ranks: Ranks, k: int) -> float:
    """NDCG at k with one relevant item: mean of 1/log2(rank + 1) over ranks <= k (else 0)."""
    r = _as_ranks(ranks)
    return _mean(np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0))


def mrr(ranks: Ranks) -> float:
    """Mean reciprocal rank over the full ranking (no cutoff)."""
    return _mean(1.0 / _as_ranks(ranks))


def retrieval_metrics(ranks: Ranks, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@k and NDCG@k for every k in `ks`, MRR and the number of users ranked.

    Returns: ``{"hr@1": .., "hr@10": .., ..., "ndcg@1": .., ..., "mrr": .., "num_users": U}``.
    """
    r = _as_ranks(ranks)
    out: dict[str, float] = {f"hr@{k}": hr_at_k(r, k) for k in ks}
    out.update({f"ndcg@{k}": ndcg_at_k(r, k) for k in ks})
    out["mrr"] = mrr(r)
    out["num_users"] = int(r.size)
    return out


class RankAccumulator:
    """Collects target ranks batch by batch; ``metrics()`` summarises them all at the end."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []

    def add(self, ranks: Ranks) -> None:
        """Append one batch of ranks [B]."""
        self._chunks.append(_as_ranks(ranks).astype(np.int64))

    @property
    def ranks(self) -> np.ndarray:
        """[U] int64: every rank added so far, in the order added."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self._chunks)

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks)

    def metrics(self, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
        """:func:`retrieval_metrics` over all ranks added so far."""
        return retrieval_metrics(self.ranks, ks)
