"""The training objective as a module: model + retrieval loss on a jagged batch.

Wrapping model and loss in one ``nn.Module`` gives parallelism (DDP, FSDP) a single forward
to wrap from outside; the trainer never needs to know whether it is wrapped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from genrec.config import TrainConfig
from genrec.data.batching import JaggedBatch
from genrec.models.base import SequentialRetrievalModel
from genrec.train.losses import full_softmax_loss, sample_negatives, sampled_softmax_loss


class RetrievalObjective(nn.Module):
    """forward(batch) -> scalar loss: next-item prediction at every position (SPEC §2)."""

    def __init__(self, model: SequentialRetrievalModel, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        # Replaceable by compiled twins (see `compile`); random sampling stays outside them.
        self.encode: Callable[[JaggedBatch], torch.Tensor] = model
        self.sampled_loss = sampled_softmax_loss
        self.full_loss = full_softmax_loss

    def compile(self) -> None:
        """torch.compile the encoder and the loss (dynamic shapes: jagged batches vary)."""
        self.encode = torch.compile(self.model, dynamic=True)
        self.sampled_loss = torch.compile(sampled_softmax_loss, dynamic=True)
        self.full_loss = torch.compile(full_softmax_loss, dynamic=True)

    def forward(self, batch: JaggedBatch) -> torch.Tensor:
        user = self.encode(batch)  # [T, d]
        targets = batch.target_ids
        cfg = self.cfg
        if cfg.loss == "full_softmax":
            return self.full_loss(user, targets, self.model.item_embeddings, cfg.temperature)
        negatives = sample_negatives(
            len(targets), cfg.num_negatives, self.model.num_items,
            shared=cfg.shared_negatives, device=targets.device,
        )
        return self.sampled_loss(
            user, targets, negatives, self.model.item_embeddings, cfg.temperature,
            in_batch_negatives=cfg.in_batch_negatives,
        )
