"""Analytic training FLOPs from model shapes and token counts (SPEC §6).

A multiply-add counts as 2 FLOPs. Per layer we count the matmuls (projections and
attention), which dominate; norms, activations and embeddings lookups are ignored. Training
costs 3× the forward pass (backward = 2× forward), the usual convention (Kaplan et al.).
Causal attention over a sequence of n tokens has n(n+1)/2 query–key pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class FlopCounter:
    model: ModelConfig
    train: TrainConfig
    num_items: int

    def per_token(self) -> float:
        """Forward FLOPs per token that do not depend on the sequence length."""
        m, d = self.model, self.model.embedding_dim
        if m.kind == "hstu":
            h, dqk, dv = m.num_heads, m.attention_dim, m.linear_dim
            proj = 2 * d * h * (2 * dqk + 2 * dv)  # Linear_1 -> U, V, Q, K
            out = 2 * h * dv * d  # Linear_2
            layer = proj + out
        else:  # SASRec: QKV + output projection + 2-layer feed-forward of width linear_dim
            layer = 2 * d * 3 * d + 2 * d * d + 2 * 2 * d * m.linear_dim
        return m.num_layers * layer + self.loss_per_token()

    def per_pair(self) -> float:
        """Forward FLOPs per attended (query, key) pair, all layers and heads."""
        m = self.model
        if m.kind == "hstu":
            per_head = 2 * m.attention_dim + 2 * m.linear_dim  # q·k and weight × v
            return m.num_layers * m.num_heads * per_head
        return m.num_layers * 4 * m.embedding_dim

    def loss_per_token(self) -> float:
        d = self.model.embedding_dim
        if self.train.loss == "full_softmax":
            return 2 * d * self.num_items
        return 2 * d * (self.train.num_negatives + 1)

    def forward(self, lengths: np.ndarray) -> float:
        """Forward FLOPs of one batch of causal sequences with the given lengths."""
        lengths = np.asarray(lengths, dtype=np.float64)
        pairs = float((lengths * (lengths + 1) / 2).sum())
        return float(lengths.sum()) * self.per_token() + pairs * self.per_pair()

    def train_step(self, lengths: np.ndarray) -> float:
        return 3.0 * self.forward(lengths)
