"""Small configs and jagged batches for the model tests (imported by them; not a test file)."""

from __future__ import annotations

import dataclasses

import torch

from genrec.config import ModelConfig
from genrec.data.batching import JaggedBatch

NUM_ITEMS = 40


def small_config(**overrides) -> ModelConfig:
    """A tiny HSTU config: d 8, 2 layers, 2 heads, dqk 3, dv 4, N = 8 + 3 = 11."""
    base = ModelConfig(kind="hstu", embedding_dim=8, num_layers=2, num_heads=2, attention_dim=3,
                       linear_dim=4, input_dropout=0.2, dropout=0.2, max_seq_len=8,
                       attn_norm_extra=3)
    return dataclasses.replace(base, **overrides)


def random_batch(lengths: list[int], seed: int = 0) -> JaggedBatch:
    """Random items; timestamps whose gaps span every time bucket (incl. the clamp at 128),
    query times not always after the keys' times (negative gaps), one exact tie."""
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    exponents = torch.rand(total, generator=g, dtype=torch.float64) * 18
    timestamps = (10.0 ** exponents).long()
    query_timestamps = (10.0 ** (torch.rand(total, generator=g, dtype=torch.float64) * 18)).long()
    query_timestamps[0] = timestamps[0]
    return JaggedBatch(
        item_ids=torch.randint(1, NUM_ITEMS + 1, (total,), generator=g),
        timestamps=timestamps,
        query_timestamps=query_timestamps,
        ratings=torch.ones(total),
        target_ids=torch.randint(1, NUM_ITEMS + 1, (total,), generator=g),
        seq_offsets=offsets,
        users=torch.arange(len(lengths)),
        max_len=max(lengths),
    )


def token_range(batch: JaggedBatch, start: int, end: int) -> JaggedBatch:
    """Tokens start..end-1 of `batch` as one sequence."""
    s = slice(start, end)
    return JaggedBatch(batch.item_ids[s], batch.timestamps[s], batch.query_timestamps[s],
                       batch.ratings[s], batch.target_ids[s], torch.tensor([0, end - start]),
                       batch.users[:1], end - start)


def sub_batch(batch: JaggedBatch, b: int) -> JaggedBatch:
    """Sequence b of `batch` alone."""
    return token_range(batch, int(batch.seq_offsets[b]), int(batch.seq_offsets[b + 1]))
