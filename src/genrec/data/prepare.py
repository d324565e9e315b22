"""Parsed events -> :class:`SequenceData`: filter users, remap ids, sort each user by time.

Decisions (SPEC §1 leaves them open):

- Users with fewer than ``min_seq_len`` events are dropped, with a note giving the count.
  This is the only filtering; no event of a kept user is ever dropped.
- ``max_users`` then keeps the first N of the remaining users in order of first appearance
  in the file (for MovieLens files, sorted by user, that is the N smallest user ids), so a
  quick run gets exactly N usable users when there are that many.
- Ids are remapped after filtering, so every item has at least one event: items are
  ``1..num_items`` in sorted raw-id order (0 = padding), users ``0..U-1`` in sorted raw-id
  order. Integer ids sort numerically, string ids lexicographically.
- Each user's events are sorted by timestamp; ties keep their order in the file (stable).
- Side-info categories get dense ids ``1..V`` in sorted order of their text; 0 = unknown,
  padding of multi-valued features, or an item/user absent from the side-info file.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.errors import DataError
from genrec.data.interactions import FeatureTable, Interactions
from genrec.data.sequences import SequenceData


def prepare(events: Interactions, name: str, *, min_seq_len: int = 1,
            max_users: int | None = None) -> SequenceData:
    """Turn `events` (file order, raw ids) into dense, per-user time-sorted sequences."""
    notes = list(events.notes)
    # One hash pass per id column; everything after works on integer codes.
    user_dict, user_codes = _encode(events.users)  # dictionary in order of first appearance
    item_dict, item_codes = _encode(events.items)
    keep = _kept_events(user_codes, len(user_dict), min_seq_len, max_users, notes)
    timestamps, ratings = events.timestamps, events.ratings
    if ratings is None:
        ratings = np.zeros(len(timestamps), dtype=np.float32)
    if keep is not None:
        user_codes, item_codes = user_codes[keep], item_codes[keep]
        timestamps, ratings = timestamps[keep], ratings[keep]
    if len(user_codes) == 0:
        raise DataError(f"{name}: no user has at least {min_seq_len} events "
                        f"(data.min_seq_len); nothing to train on")

    user_vocab, user_rows = _sorted_codes(user_dict, user_codes)
    item_vocab, item_rows = _sorted_codes(item_dict, item_codes)
    order = _time_order(user_rows, timestamps)
    offsets = np.zeros(len(user_vocab) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_rows, minlength=len(user_vocab)), out=offsets[1:])

    item_features = {
        feature: _dense_features(table, item_vocab, first_row=1, what=f"item feature {feature}",
                                 notes=notes)
        for feature, table in events.item_features.items()
    }
    user_features = {
        feature: _dense_features(table, user_vocab, first_row=0, what=f"user feature {feature}",
                                 notes=notes)[:, 0]
        for feature, table in events.user_features.items()
    }
    return SequenceData(
        name=name,
        seq_offsets=offsets,
        item_ids=item_rows[order] + 1,
        timestamps=np.ascontiguousarray(timestamps[order], dtype=np.int64),
        ratings=np.ascontiguousarray(ratings[order], dtype=np.float32),
        user_raw_ids=_to_numpy(user_vocab),
        item_raw_ids=_with_padding_slot(_to_numpy(item_vocab)),
        item_features=item_features,
        user_features=user_features,
        notes=notes,
    )


def _encode(values: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(distinct values in order of first appearance, [E] int64 index into them)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    return encoded.dictionary, encoded.indices.to_numpy().astype(np.int64)


def _kept_events(user_codes: np.ndarray, num_users: int, min_seq_len: int,
                 max_users: int | None, notes: list[str]) -> np.ndarray | None:
    """[E] bool mask of events of kept users, or None to keep everything."""
    lengths = np.bincount(user_codes, minlength=num_users)  # codes follow first appearance
    long_enough = lengths >= min_seq_len
    dropped = int((~long_enough).sum())
    if dropped:
        notes.append(f"dropped {dropped:,} of {num_users:,} users with fewer than "
                     f"{min_seq_len} events ({int(lengths[~long_enough].sum()):,} events)")
    kept_users = long_enough
    num_kept = num_users - dropped
    if max_users is not None and num_kept > max_users:
        notes.append(f"max_users: kept the first {max_users:,} of {num_kept:,} users "
                     f"(in file order)")
        kept_users = long_enough & (np.cumsum(long_enough) <= max_users)
    elif not dropped:
        return None
    return kept_users[user_codes]


def _sorted_codes(dictionary: pa.Array, codes: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """(sorted distinct values that occur in `codes`, [E] int64 index into them)."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(dictionary)))
    vocab_order = pc.sort_indices(pc.take(dictionary, pa.array(present))).to_numpy()
    rank = np.full(len(dictionary), -1, dtype=np.int64)
    rank[present[vocab_order]] = np.arange(len(present))
    return pc.take(dictionary, pa.array(present[vocab_order])), rank[codes]


def _time_order(user_rows: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """[E] event order: by user row, then timestamp; ties keep file order.

    Arrow's sort_indices is documented stable, and ~6x faster than np.lexsort at 20M events.
    """
    keys = pa.table({"user": user_rows, "timestamp": timestamps})
    order = pc.sort_indices(keys, sort_keys=[("user", "ascending"), ("timestamp", "ascending")])
    return order.to_numpy()


def _to_numpy(vocab: pa.Array) -> np.ndarray:
    if pa.types.is_integer(vocab.type):
        return vocab.to_numpy(zero_copy_only=False).astype(np.int64)
    return np.asarray(vocab.to_pylist(), dtype=str)


def _with_padding_slot(raw_ids: np.ndarray) -> np.ndarray:
    """Prepend entry 0 (the padding item): 0 for integer ids, "" for string ids."""
    pad = np.zeros(1, dtype=raw_ids.dtype)
    return np.concatenate([pad, raw_ids])


def _dense_features(table: FeatureTable, vocab: pa.Array, first_row: int, what: str,
                    notes: list[str]) -> np.ndarray:
    """[len(vocab) + first_row, k] int64 category ids of each entity (0 = unknown)."""
    try:
        raw_ids = pc.cast(table.raw_ids, vocab.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{what}: its ids ({table.raw_ids.type}) do not match the event ids "
                        f"({vocab.type})") from None
    rows = pc.fill_null(pc.index_in(raw_ids, value_set=vocab), -1).to_numpy(zero_copy_only=False)
    present = rows >= 0
    values = table.values[present]
    categories = np.unique(values[values != ""])
    dense = np.where(values != "", np.searchsorted(categories, values) + 1, 0)
    out = np.zeros((len(vocab) + first_row, values.shape[1]), dtype=np.int64)
    out[rows[present] + first_row] = dense
    missing = len(vocab) - len(np.unique(rows[present]))
    if missing:
        notes.append(f"{what}: {missing:,} of {len(vocab):,} have no entry in the side-info "
                     f"file (id 0)")
    return out
