"""What every reader returns: parsed events in file order, with raw ids, before remapping.

:func:`genrec.data.prepare.prepare` turns :class:`Interactions` into the dense, time-sorted
:class:`~genrec.data.sequences.SequenceData`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RawIds = pa.Array | pa.ChunkedArray  # int64 or string


@dataclass
class FeatureTable:
    """One categorical side-info feature of items or users, keyed by raw id.

    ``values[r]`` holds the categories of entity ``raw_ids[r]``; multi-valued features (genres)
    use several columns, padded with ``""`` (missing).
    """

    raw_ids: RawIds  # [n]
    values: np.ndarray  # [n, k] str


@dataclass
class Interactions:
    """Events in file order. Row ``e`` of every array is the e-th event of the file."""

    users: RawIds  # [E] raw user ids
    items: RawIds  # [E] raw item ids
    timestamps: np.ndarray  # [E] int64 seconds
    ratings: np.ndarray | None = None  # [E] float32; None when the source has none
    item_features: dict[str, FeatureTable] = field(default_factory=dict)
    user_features: dict[str, FeatureTable] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_events(self) -> int:
        return len(self.users)


def multi_valued(texts: Sequence[str], separator: str = "|", missing: Sequence[str] = ()) -> (
        np.ndarray):
    """``["A|B", "C"]`` -> ``[["A", "B"], ["C", ""]]``; values in `missing` count as absent."""
    split = [[v for v in t.split(separator) if v and v not in missing] for t in texts]
    width = max((len(s) for s in split), default=0) or 1
    out = np.full((len(split), width), "", dtype=object)
    for row, values in enumerate(split):
        out[row, : len(values)] = values
    return out.astype(str)


def single_valued(values: Sequence[object]) -> np.ndarray:
    """[n] values -> [n, 1] str array (a one-column categorical feature)."""
    return np.asarray([str(v) for v in values], dtype=str).reshape(-1, 1)


def latest_per_entity(ids: RawIds, timestamps: np.ndarray, values: RawIds) -> FeatureTable:
    """Feature of each entity taken from its latest event (ties: the later line in the file).

    Used for side-info given per event (a user's own log): slowly changing attributes take
    the value they had most recently.
    """
    order = np.lexsort((np.arange(len(timestamps)), timestamps))[::-1]  # latest first
    ids_latest_first = pc.take(ids, pa.array(order))
    unique = pc.unique(ids_latest_first)  # no duplicates, so index_in below is exact
    codes = pc.index_in(ids_latest_first, value_set=unique).to_numpy()
    _, first_index = np.unique(codes, return_index=True)  # latest event of each entity
    picked = pc.take(values, pa.array(order[first_index])).to_pylist()
    texts = ["" if v is None else str(v) for v in picked]
    return FeatureTable(raw_ids=unique, values=np.asarray(texts, dtype=str).reshape(-1, 1))
