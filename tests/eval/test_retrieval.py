import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrec.data.batching import JaggedBatch, target_positions
from genrec.data.sequences import SequenceData
from genrec.data.synthetic import make_synthetic
from genrec.eval import evaluate, retrieval_metrics
from genrec.models.base import SequentialRetrievalModel

NUM_ITEMS = 6


class NextItemTableModel(SequentialRetrievalModel):
    """Fixed predictions: after input item p, item j scores ``next_scores[p, j]``.

    Items are one-hot vectors, so a user vector is directly a row of scores. It records every
    batch it sees and whether it was in eval mode.
    """

    def __init__(self, next_scores: torch.Tensor) -> None:
        super().__init__()
        self.num_items = next_scores.shape[1] - 1
        self.embedding_dim = next_scores.shape[1]
        self.register_buffer("next_scores", F.normalize(next_scores, dim=-1))
        self.seen: list[tuple[JaggedBatch, bool]] = []

    def forward(self, batch, *, num_candidates=None, return_kv=False):
        self.seen.append((batch, self.training))
        return self.next_scores[batch.item_ids]

    def item_embeddings(self, ids=None):
        table = torch.eye(self.num_items + 1)
        table[0] = 0.0
        return table if ids is None else table[ids]


def _data() -> SequenceData:
    # user 0: 5 1 2 3 4 | user 1: 2 6 1 | user 2: 3 (no history, never evaluated) | user 3: 6 4 6
    items = np.array([5, 1, 2, 3, 4, 2, 6, 1, 3, 6, 4, 6])
    return SequenceData(
        name="toy", seq_offsets=np.array([0, 5, 8, 9, 12]), item_ids=items,
        timestamps=np.arange(len(items)) * 10, ratings=np.ones(len(items), dtype=np.float32),
        user_raw_ids=np.arange(4), item_raw_ids=np.arange(NUM_ITEMS + 1),
    )


def _model() -> NextItemTableModel:
    s = torch.full((NUM_ITEMS + 1, NUM_ITEMS + 1), 0.05)
    s[:, 0] = 0.0
    # item:       1    2    3    4    5    6
    s[2, 1:] = torch.tensor([0.9, 0.8, 0.3, 0.1, 0.5, 0.2])
    s[3, 1:] = torch.tensor([0.1, 0.2, 0.3, 0.5, 0.9, 0.4])
    s[4, 1:] = torch.tensor([0.5, 0.1, 0.2, 0.9, 0.4, 0.45])
    s[6, 1:] = torch.tensor([0.2, 0.8, 0.1, 0.6, 0.7, 0.3])
    return NextItemTableModel(s)


def _eval(model, **kw):
    kw = {"protocol": "paper", "split": "test", "max_seq_len": 200, "ks": (1, 2, 3, 10)} | kw
    return evaluate(model, _data(), **kw)


def _last_targets(model) -> list[int]:
    """The target each user was scored on, in user order (batches may reorder users)."""
    pairs = [(u, t) for b, _ in model.seen
             for u, t in zip(b.users.tolist(), b.target_ids[b.last_positions()].tolist())]
    return [t for _, t in sorted(pairs)]


# Expected ranks, worked out from the score rows above:
#   paper/strict test: user 0 target 4 after 3 -> only 5 scores higher, but 5 is history: 1
#                      user 1 target 1 after 6 -> 2, 4, 5, 6 higher; 2 and 6 are history:  3
#                      user 3 target 6 after 4 -> 1 and 4 higher; 4 is history, 6 is not:  2
#   strict valid:      user 0 target 3 after 2 -> 1, 2, 5 higher, all history:              1
#                      user 1 target 6 after 2 -> 1, 2, 3, 5 higher; 2 is history:          4
#                      user 3 target 4 after 6 -> 2, 5 higher, neither history:             3
PAPER_TEST_RANKS = [1, 3, 2]
STRICT_VALID_RANKS = [1, 4, 3]


def test_paper_test_split_ranks_the_last_event_without_history():
    model = _model()
    assert _eval(model) == retrieval_metrics(PAPER_TEST_RANKS, (1, 2, 3, 10))
    assert _last_targets(model) == [4, 1, 6]


def test_without_history_exclusion_history_items_count():
    assert _eval(_model(), exclude_history=False) == retrieval_metrics([2, 5, 3], (1, 2, 3, 10))


def test_strict_valid_split_ranks_the_second_to_last_event():
    model = _model()
    m = _eval(model, protocol="strict", split="valid")
    assert m == retrieval_metrics(STRICT_VALID_RANKS, (1, 2, 3, 10))
    assert _last_targets(model) == [3, 6, 4]


def test_strict_test_split_ranks_the_last_event():
    model = _model()
    m = _eval(model, protocol="strict", split="test")
    assert m == retrieval_metrics(PAPER_TEST_RANKS, (1, 2, 3, 10))
    assert _last_targets(model) == [4, 1, 6]


def test_paper_protocol_has_no_validation_split():
    with pytest.raises(ValueError, match="strict"):
        _eval(_model(), split="valid")


@pytest.mark.parametrize("max_seq_len", [1, 2])
def test_history_exclusion_reaches_beyond_the_truncated_window(max_seq_len):
    model = _model()
    # user 0 sees only [3] or [2, 3]; item 5, its first event, must still be excluded
    assert _eval(model, max_seq_len=max_seq_len)["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert max(b.lengths.max().item() for b, _ in model.seen) == max_seq_len


def test_small_batches_and_user_subsets():
    assert _eval(_model(), batch_size=1) == _eval(_model())
    assert _eval(_model(), users=np.array([1, 3])) == retrieval_metrics([3, 2], (1, 2, 3, 10))


def test_model_runs_in_eval_mode_and_its_mode_is_restored():
    model = _model().train()
    _eval(model)
    assert model.training and not any(training for _, training in model.seen)
    model.eval()
    _eval(model)
    assert not model.training


class RandomEncoder(SequentialRetrievalModel):
    """User vector at a token = normalised W · embedding of the input item."""

    def __init__(self, num_items: int, dim: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.num_items, self.embedding_dim = num_items, dim
        self.table = torch.nn.Parameter(torch.randn(num_items + 1, dim, generator=gen))
        self.proj = torch.nn.Parameter(torch.randn(dim, dim, generator=gen))

    def forward(self, batch, *, num_candidates=None, return_kv=False):
        return F.normalize(self.table[batch.item_ids] @ self.proj, dim=-1)

    def item_embeddings(self, ids=None):
        table = F.normalize(self.table, dim=-1)
        return table if ids is None else table[ids]


def _reference_ranks(model, data, protocol, split) -> list[int]:
    """One user at a time with Python sets: the plain statement of the protocol."""
    targets = target_positions(data, protocol, split)
    items = model.item_embeddings().detach()
    ranks = []
    for u in range(data.num_users):
        start, t = data.seq_offsets[u], targets[u]
        if t <= start:
            continue
        last_input = torch.tensor([data.item_ids[t - 1]])
        scores = (model.table[last_input] @ model.proj).detach()[0] @ items.T
        target = int(data.item_ids[t])
        seen = set(data.item_ids[start:t].tolist()) - {target}
        ranks.append(1 + sum(1 for i in range(1, data.num_items + 1)
                             if i not in seen and scores[i] > scores[target]))
    return ranks


@pytest.mark.parametrize(("protocol", "split"), [("paper", "test"), ("strict", "valid")])
def test_evaluate_matches_a_per_user_reference(protocol, split):
    data = make_synthetic(num_users=40, num_items=30, min_len=3, max_len=25, seed=1)
    model = RandomEncoder(data.num_items)
    expected = retrieval_metrics(_reference_ranks(model, data, protocol, split))
    got = evaluate(model, data, protocol=protocol, split=split, max_seq_len=5, batch_size=16)
    assert got == pytest.approx(expected)
