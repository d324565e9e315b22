"""Evaluation: full-ranking retrieval metrics (SPEC §4) and non-learned baselines."""

from genrec.eval.baselines import evaluate_popularity, popularity_scores
from genrec.eval.metrics import (
    RankAccumulator,
    hr_at_k,
    mrr,
    ndcg_at_k,
    retrieval_metrics,
)
from genrec.eval.retrieval import evaluate, rank_targets

__all__ = [
    "RankAccumulator",
    "evaluate",
    "evaluate_popularity",
    "hr_at_k",
    "mrr",
    "ndcg_at_k",
    "popularity_scores",
    "rank_targets",
    "retrieval_metrics",
]
