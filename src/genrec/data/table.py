"""A user's own interaction log, CSV or Parquet, described by a :class:`TableConfig`.

Required columns: user, item and timestamp (seconds since the epoch; Parquet timestamp and
date columns are converted). Optional: a rating / action column (numeric or boolean) and
categorical side-info columns for items and users.

Ids may be integers or strings. In CSV, an id column whose every value is a plain integer
(``"42"``, not ``"042"``) is read as integers, otherwise as strings. Side-info is given per
event; each item (user) takes the value of its latest event. An empty or null side-info value
means "unknown"; a null id, timestamp or rating is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.config import TableConfig
from genrec.data.errors import DataError, field_error
from genrec.data.interactions import Interactions, latest_per_entity
from genrec.data.textparse import Column, TextFormat, check_value, read_bulk

_PARQUET_SUFFIXES = (".parquet", ".pq")


def table_format(cfg: TableConfig, path: Path) -> str:
    """The table's format, ``"csv"`` or ``"parquet"`` (from the file name when "auto")."""
    if cfg.format != "auto":
        return cfg.format
    return "parquet" if path.suffix.lower() in _PARQUET_SUFFIXES else "csv"


def _roles(cfg: TableConfig) -> dict[str, str]:
    """Internal column name -> the file's column name."""
    roles = {"user_id": cfg.user_col, "item_id": cfg.item_col, "timestamp": cfg.timestamp_col}
    if cfg.rating_col:
        roles["rating"] = cfg.rating_col
    roles.update({f"item:{c}": c for c in cfg.item_feature_cols})
    roles.update({f"user:{c}": c for c in cfg.user_feature_cols})
    return roles


def read_table(path: Path, cfg: TableConfig) -> Interactions:
    """Parse a user's log into :class:`Interactions` (raw ids, file order)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (data.table.path)")
    if table_format(cfg, path) == "parquet":
        columns = _read_parquet(path, cfg)
    else:
        columns = _read_csv(path, cfg)
    timestamps = columns["timestamp"]
    events = Interactions(
        users=columns["user_id"],
        items=columns["item_id"],
        timestamps=timestamps,
        ratings=columns.get("rating"),
    )
    for name, values in columns.items():
        if name.startswith("item:"):
            events.item_features[name[5:]] = latest_per_entity(events.items, timestamps, values)
        elif name.startswith("user:"):
            events.user_features[name[5:]] = latest_per_entity(events.users, timestamps, values)
    return events


# ---------------------------------------------------------------------------------------------
# CSV


def _read_csv(path: Path, cfg: TableConfig) -> dict:
    kinds = {"user_id": "string", "item_id": "string", "timestamp": "number", "rating": "number"}
    cols = tuple(Column(name, kinds.get(name, "string"), header=header,
                        required=name in ("user_id", "item_id"))
                 for name, header in _roles(cfg).items())
    fmt = TextFormat(cols, cfg.separator, header=True, quoting=True)
    table = read_bulk(path, fmt)
    out: dict = {name: table.column(name) for name in table.column_names}
    out["user_id"] = _maybe_int_ids(out["user_id"])
    out["item_id"] = _maybe_int_ids(out["item_id"])
    out["timestamp"] = np.floor(out["timestamp"].to_numpy()).astype(np.int64)
    if "rating" in out:
        out["rating"] = out["rating"].to_numpy().astype(np.float32)
    return out


def _maybe_int_ids(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integers when every id is a plain integer that prints back the same, else strings."""
    trimmed = pc.utf8_trim_whitespace(ids)
    try:
        as_int = pc.cast(trimmed, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return trimmed
    same = pc.all(pc.equal(pc.cast(as_int, pa.string()), trimmed)).as_py()
    return as_int if same is not False else trimmed


# ---------------------------------------------------------------------------------------------
# Parquet


def _read_parquet(path: Path, cfg: TableConfig) -> dict:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    roles = _roles(cfg)
    for header in roles.values():
        if header not in schema.names:
            raise DataError(f"{path}: no column {header!r} (columns: "
                            f"{', '.join(map(repr, schema.names))}); set data.table columns")
    table = pq.read_table(path, columns=list(dict.fromkeys(roles.values())))
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    out: dict = {}
    for name, header in roles.items():
        column = table.column(header)
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        if name.startswith(("item:", "user:")):
            out[name] = column
            continue
        _check_no_nulls(path, header, column)
        if name in ("user_id", "item_id"):
            out[name] = _parquet_ids(path, header, column)
        else:
            out[name] = _parquet_number(path, header, column, timestamp=name == "timestamp")
    out["timestamp"] = out["timestamp"].astype(np.int64)
    if "rating" in out:
        out["rating"] = out["rating"].astype(np.float32)
    return out


def _check_no_nulls(path: Path, header: str, column: pa.ChunkedArray) -> None:
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py() + 1
        raise field_error(path, row, header, "missing value", unit="row")


def _parquet_ids(path: Path, header: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.int64())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.string())
        empty = pc.equal(pc.utf8_trim_whitespace(column), "")
        if pc.any(empty).as_py():
            row = pc.index(empty, True).as_py() + 1
            raise field_error(path, row, header, "is empty", unit="row")
        return column
    raise DataError(f"{path}: column {header!r} has type {column.type}; ids must be integers "
                    f"or strings")


def _parquet_number(path: Path, header: str, column: pa.ChunkedArray,
                    timestamp: bool) -> np.ndarray:
    kind = column.type
    if timestamp and (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        seconds = pc.cast(pc.cast(column, pa.timestamp("s"), safe=False), pa.int64())
        return seconds.to_numpy()
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return pc.cast(column, pa.int64()).to_numpy()
    if pa.types.is_floating(kind):
        values = column.to_numpy()
        bad = ~np.isfinite(values)
        if bad.any():
            raise field_error(path, int(np.argmax(bad)) + 1, header,
                              f"{values[bad][0]!r} is not a number", unit="row")
        return np.floor(values) if timestamp else values
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        col = Column("timestamp" if timestamp else header, "number")
        for row, value in enumerate(column.to_pylist(), start=1):
            problem = check_value(value, col)
            if problem:
                raise field_error(path, row, header, problem, unit="row")
        values = np.asarray(column.to_pylist(), dtype=np.float64)
        return np.floor(values) if timestamp else values
    what = "a number (seconds since the epoch) or a timestamp" if timestamp else "a number"
    raise DataError(f"{path}: column {header!r} has type {kind}; expected {what}")
