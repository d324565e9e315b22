"""A user's own log, CSV or Parquet, described by TableConfig."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.config import TableConfig
from genrec.data import DataError, load_dataset

LOG = [  # user, item, ts, clicked, brand, country
    ("u2", "b", 30, 1, "acme", "FR"),
    ("u1", "a", 10, 0, "zeta", "DE"),
    ("u1", "b", 20, 1, "acme", "US"),  # u1's latest event: country US
    ("u2", "c", 5, 0, "", "FR"),  # item c: no brand
]


def _table_config(path, **overrides) -> TableConfig:
    kwargs = dict(path=str(path), user_col="user", item_col="item", timestamp_col="ts",
                  rating_col="clicked", item_feature_cols=["brand"],
                  user_feature_cols=["country"])
    kwargs.update(overrides)
    return TableConfig(**kwargs)


def _check_log(data) -> None:
    assert data.user_raw_ids.tolist() == ["u1", "u2"]
    assert data.item_raw_ids.tolist() == ["", "a", "b", "c"]
    assert data.user_items(0).tolist() == [1, 2]
    assert data.user_items(1).tolist() == [3, 2]  # c (t=5) before b (t=30)
    assert data.ratings.tolist() == [0, 1, 0, 1]
    assert data.item_features["brand"][:, 0].tolist() == [0, 2, 1, 0]  # acme=1, zeta=2
    # latest values only (u1: US, u2: FR), so DE never becomes a category: FR=1, US=2
    assert data.user_features["country"].tolist() == [2, 1]


def test_custom_csv_with_side_info(write_file, data_config):
    rows = "".join(f"{u},{i},{t},{c},{b},{n}\n" for u, i, t, c, b, n in LOG)
    path = write_file("log.csv", "user,item,ts,clicked,brand,country\n" + rows)
    data = load_dataset(data_config("custom", table=_table_config(path)), progress=False)
    _check_log(data)


def test_custom_parquet_with_side_info(tmp_path, data_config):
    columns = list(zip(*LOG, strict=True))
    table = pa.table({"user": columns[0], "item": columns[1], "ts": columns[2],
                      "clicked": pa.array(columns[3], pa.int8()), "brand": columns[4],
                      "country": columns[5]})
    pq.write_table(table, tmp_path / "log.parquet")
    data = load_dataset(data_config("custom", table=_table_config(tmp_path / "log.parquet")),
                        progress=False)
    _check_log(data)


def test_parquet_timestamp_column_becomes_seconds(tmp_path, data_config):
    ts = pa.array([1_000_000, 2_000_000, 3_000_000], pa.timestamp("ms"))
    pq.write_table(pa.table({"user": [7, 7, 7], "item": [3, 1, 2], "ts": ts}),
                   tmp_path / "log.parquet")
    cfg = _table_config(tmp_path / "log.parquet", rating_col=None, item_feature_cols=[],
                        user_feature_cols=[])
    data = load_dataset(data_config("custom", table=cfg), progress=False)
    assert data.timestamps.tolist() == [1000, 2000, 3000]
    assert data.item_raw_ids.tolist() == [0, 1, 2, 3]
    assert data.ratings.tolist() == [0, 0, 0]


def test_integer_looking_csv_ids_become_integers(write_file, data_config):
    path = write_file("log.csv", "user,item,ts\n10,2,1\n10,11,2\n9,2,3\n9,3,4\n")
    cfg = _table_config(path, rating_col=None, item_feature_cols=[], user_feature_cols=[])
    data = load_dataset(data_config("custom", table=cfg), progress=False)
    assert data.user_raw_ids.tolist() == [9, 10]  # numeric order, not "10" < "9"
    assert data.item_raw_ids.tolist() == [0, 2, 3, 11]


def test_zero_padded_csv_ids_stay_strings(write_file, data_config):
    path = write_file("log.csv", "user,item,ts\n1,007,1\n1,7,2\n")
    cfg = _table_config(path, rating_col=None, item_feature_cols=[], user_feature_cols=[])
    data = load_dataset(data_config("custom", table=cfg), progress=False)
    assert data.item_raw_ids.tolist() == ["", "007", "7"]


def test_custom_csv_missing_column(write_file, data_config):
    path = write_file("log.csv", "user,item,time\n1,2,3\n")
    with pytest.raises(DataError, match=r"log.csv line 1: the header has no column 'ts'"):
        load_dataset(data_config("custom", table=_table_config(path)), progress=False)


def test_custom_csv_timestamp_not_a_number(write_file, data_config):
    path = write_file("log.csv", "user,item,ts\n1,2,3\n1,3,2024-01-01\n")
    cfg = _table_config(path, rating_col=None, item_feature_cols=[], user_feature_cols=[])
    with pytest.raises(DataError, match=r"log.csv line 3, field ts: '2024-01-01' is not a "
                                        r"number \(expected seconds since the epoch\)"):
        load_dataset(data_config("custom", table=cfg), progress=False)


def test_parquet_null_id_names_the_row(tmp_path, data_config):
    pq.write_table(pa.table({"user": [1, None, 1], "item": [1, 2, 3], "ts": [1, 2, 3]}),
                   tmp_path / "log.parquet")
    cfg = _table_config(tmp_path / "log.parquet", rating_col=None, item_feature_cols=[],
                        user_feature_cols=[])
    with pytest.raises(DataError, match=r"log.parquet row 2, field user: missing value"):
        load_dataset(data_config("custom", table=cfg), progress=False)


def test_parquet_missing_column(tmp_path, data_config):
    pq.write_table(pa.table({"user": [1], "item": [1], "ts": [1]}), tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"no column 'clicked'"):
        load_dataset(data_config("custom", table=_table_config(tmp_path / "log.parquet")),
                     progress=False)


def test_custom_table_file_not_found(tmp_path, data_config):
    cfg = _table_config(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"nope.csv: file not found"):
        load_dataset(data_config("custom", table=cfg), progress=False)
