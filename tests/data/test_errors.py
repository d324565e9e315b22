"""Bad input: every case gives a DataError naming the file, line and field."""

from __future__ import annotations

import pytest

from genrec.data import DataError, load_dataset

GOOD_U_DATA = "".join(f"{1 + i % 3}\t{10 + i}\t{1 + i % 5}\t{881250000 + i}\n" for i in range(50))


def _load_error(cfg) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(cfg, progress=False)
    return str(info.value)


def test_non_integer_item_id_names_line_51(write_file, data_config):
    write_file("ml-100k/u.data", GOOD_U_DATA + "196\tabc\t3\t881250949\n")
    message = _load_error(data_config("ml-100k"))
    assert "u.data line 51, field item_id: 'abc' is not an integer" in message


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_wrong_separator_is_named(write_file, data_config):
    write_file("ml-100k/u.data", GOOD_U_DATA.replace("\t", ","))
    message = _load_error(data_config("ml-100k"))
    assert "u.data line 1" in message
    assert "expected 4 tab-separated fields" in message and "comma-separated" in message


def test_wrong_field_count_names_the_line(write_file, data_config):
    write_file("ml-1m/ratings.dat", "1::10::3::100\n1::20::3\n")
    message = _load_error(data_config("ml-1m"))
    assert "ratings.dat line 2" in message and "found 3" in message


def test_timestamp_not_a_number(write_file, data_config):
    write_file("ml-1m/ratings.dat", "1::10::3::100\n1::20::3::100\n1::30::3::yesterday\n")
    message = _load_error(data_config("ml-1m"))
    assert "ratings.dat line 3, field timestamp: 'yesterday' is not an integer" in message


def test_empty_field_is_named(write_file, data_config):
    write_file("ml-100k/u.data", GOOD_U_DATA + "196\t\t3\t881250949\n")
    message = _load_error(data_config("ml-100k"))
    assert "line 51, field item_id: is empty" in message


def test_nan_rating_is_rejected(write_file, data_config):
    write_file("ml-latest-small/ratings.csv",
               "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,nan,964982704\n")
    message = _load_error(data_config("ml-latest-small"))
    assert "ratings.csv line 3, field rating: 'nan' is not a number" in message


def test_missing_column_in_header(write_file, data_config):
    write_file("ml-latest-small/ratings.csv", "userId,itemId,rating,timestamp\n1,1,4.0,9\n")
    message = _load_error(data_config("ml-latest-small"))
    assert "ratings.csv line 1" in message and "no column 'movieId'" in message


def test_header_with_wrong_separator(write_file, data_config):
    write_file("ml-latest-small/ratings.csv", "userId;movieId;rating;timestamp\n1;1;4.0;9\n")
    message = _load_error(data_config("ml-latest-small"))
    assert "line 1" in message and "semicolon-separated" in message


def test_empty_file(write_file, data_config):
    write_file("ml-100k/u.data", "")
    message = _load_error(data_config("ml-100k"))
    assert "u.data" in message and "is empty" in message


def test_header_only_file(write_file, data_config):
    write_file("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n")
    message = _load_error(data_config("ml-latest-small"))
    assert "header but no data lines" in message


def test_missing_file_says_what_to_place_where(tmp_path, data_config):
    message = _load_error(data_config("ml-1m"))
    assert str(tmp_path / "ml-1m" / "ratings.dat") in message
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in message


def test_several_partial_files_are_ambiguous(write_file, data_config):
    write_file("ml-1m/ratings.a.dat.gz", "1::10::3::100\n")
    write_file("ml-1m/ratings.b.dat.gz", "1::10::3::100\n")
    message = _load_error(data_config("ml-1m"))
    assert "several ratings files" in message


def test_bad_line_in_gz_file_is_located(write_file, data_config):
    write_file("ml-1m/ratings.dat.gz", "1::10::3::100\n" * 10 + "1::x::3::100\n")
    message = _load_error(data_config("ml-1m"))
    assert "ratings.dat.gz line 11, field item_id: 'x' is not an integer" in message


def test_bad_line_in_side_file_is_located(write_file, data_config):
    write_file("ml-1m/ratings.dat", "1::10::3::100\n1::20::3::101\n")
    write_file("ml-1m/movies.dat", "10::A (1995)::Drama\nten::B (1996)::Drama\n")
    message = _load_error(data_config("ml-1m"))
    assert "movies.dat line 2, field item_id: 'ten' is not an integer" in message


def test_invalid_utf8_is_located(write_file, tmp_path, data_config):
    from genrec.config import TableConfig

    path = write_file("log.csv", "user,item,ts\nu1,i1,1\nu1,i2,2\n")
    path.write_bytes(path.read_bytes() + b"u1,\xff\xfe,3\n")
    cfg = data_config("custom", table=TableConfig(path=str(path), user_col="user",
                                                  item_col="item", timestamp_col="ts"))
    message = _load_error(cfg)
    assert "log.csv line 4" in message and "utf-8" in message


def test_unknown_data_set_name(data_config):
    message = _load_error(data_config("ml-2b"))
    assert "unknown data set 'ml-2b'" in message


@pytest.mark.parametrize("name, relative, line", [
    ("ml-1m", "ml-1m/ratings.dat.gz", "{u}::{i}::3::{t}\n"),
    ("ml-latest-small", "ml-latest-small/ratings.csv", "{u},{i},3.5,{t}\n"),
])
def test_bad_line_deep_in_a_large_file_is_located(write_file, data_config, name, relative,
                                                  line):
    header = "userId,movieId,rating,timestamp\n" if relative.endswith(".csv") else ""
    good = "".join(line.format(u=1 + k // 100, i=k % 100 + 1, t=k) for k in range(200_000))
    bad = line.format(u=7, i="x7", t=1)
    write_file(relative, header + good + "\n" + bad + good[:1000])  # a blank line, then bad
    message = _load_error(data_config(name))
    field = "movieId" if header else "item_id"
    bad_line = 200_000 + 2 + (1 if header else 0)
    assert f"line {bad_line}, field {field}: 'x7' is not an integer" in message
