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
from genrec.ops.compile import compile_dynamic
from genrec.train.losses import full_softmax_loss, sample_negatives, sampled_softmax_loss


class RetrievalObjective(nn.Module):
    """forward(batch) -> scalar loss: next-item prediction at every position (SPEC §2)."""

    def __init__(self, model: SequentialRetrievalModel, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        # compiled twins of the encoder and losses, kept out of the module tree (a plain dict)
        self._compiled: dict[str, Callable] = {}

    def compile(self) -> None:
        """torch.compile the encoder and the loss (dynamic shapes: jagged batches vary).

        Random sampling stays outside the compiled code."""
        self._compiled = {
            "encode": compile_dynamic(self.model),
            "sampled": compile_dynamic(sampled_softmax_loss),
            "full": compile_dynamic(full_softmax_loss),
        }

    def uncompile(self) -> None:
        """Back to eager PyTorch (after a failed compilation)."""
        self._compiled = {}

    @property
    def compiled(self) -> bool:
        return bool(self._compiled)

    @property
    def encoder(self) -> Callable[[JaggedBatch], torch.Tensor]:
        """The model, or its compiled twin (which delegates eval(), item_embeddings(), ...)."""
        return self._compiled.get("encode", self.model)

    def forward(self, batch: JaggedBatch) -> torch.Tensor:
        user = self.encoder(batch)  # [T, d]
        targets = batch.target_ids
        cfg = self.cfg
        if cfg.loss == "full_softmax":
            full_loss = self._compiled.get("full", full_softmax_loss)
            return full_loss(user, targets, self.model.item_embeddings, cfg.temperature)
        negatives = sample_negatives(
            len(targets), cfg.num_negatives, self.model.num_items,
            shared=cfg.shared_negatives, device=targets.device,
        )
        sampled_loss = self._compiled.get("sampled", sampled_softmax_loss)
        return sampled_loss(
            user, targets, negatives, self.model.item_embeddings, cfg.temperature,
            in_batch_negatives=cfg.in_batch_negatives,
        )
