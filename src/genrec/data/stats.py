"""Summary statistics of a prepared data set, as a dict and as a readable table."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from genrec.data.sequences import SequenceData

QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def dataset_stats(data: SequenceData) -> dict[str, Any]:
    """Users, items, interactions, sequence-length distribution, time span and notes.

    Length quantiles are observed lengths: ``p90`` is the smallest length L such that at least
    90% of users have at most L events (numpy's ``inverted_cdf`` method).
    """
    lengths = data.lengths
    seq_len: dict[str, float] = {"min": 0, **{k: 0 for k in QUANTILES}, "max": 0, "mean": 0.0}
    if len(lengths):
        qs = np.quantile(lengths, list(QUANTILES.values()), method="inverted_cdf")
        seq_len = {"min": int(lengths.min()),
                   **{k: int(q) for k, q in zip(QUANTILES, qs, strict=True)},
                   "max": int(lengths.max()), "mean": float(lengths.mean())}
    stats: dict[str, Any] = {
        "name": data.name,
        "users": data.num_users,
        "items": data.num_items,
        "interactions": data.num_events,
        "density": data.num_events / max(1, data.num_users * data.num_items),
        "seq_len": seq_len,
        "time": None,
        "item_features": {k: int(v.max(initial=0)) for k, v in data.item_features.items()},
        "user_features": {k: int(v.max(initial=0)) for k, v in data.user_features.items()},
        "notes": list(data.notes),
    }
    if data.num_events:
        first, last = int(data.timestamps.min()), int(data.timestamps.max())
        stats["time"] = {"first": _iso(first), "last": _iso(last),
                         "span_days": (last - first) / 86400}
    return stats


def _iso(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):  # not seconds since the epoch
        return str(seconds)


def format_stats(stats: dict[str, Any]) -> str:
    """A two-column text table of :func:`dataset_stats` output."""
    s = stats["seq_len"]
    rows = [
        ("data set", stats["name"]),
        ("users", f"{stats['users']}"),
        ("items", f"{stats['items']}"),
        ("interactions", f"{stats['interactions']}"),
        ("density", f"{stats['density']:.4%}"),
        ("events/user mean", f"{s['mean']:.1f}"),
        ("events/user min", f"{s['min']:,}"),
        *((f"events/user {k}", f"{s[k]:,}") for k in QUANTILES),
        ("events/user max", f"{s['max']:,}"),
    ]
    if stats["time"]:
        t = stats["time"]
        rows.append(("time span", f"{t['first']} .. {t['last']} ({t['span_days']:,.0f} days)"))
    for kind in ("item_features", "user_features"):
        for name, size in stats[kind].items():
            rows.append((f"{kind.split('_')[0]} feature {name}", f"{size:,} categories"))
    rows.extend(("note", note) for note in stats["notes"])
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
