"""The prepared-data cache: hit without parsing, invalidation, location, atomic writes."""

from __future__ import annotations

import os

import numpy as np

from genrec.data import cache, load_dataset, textparse

U_DATA = "1\t5\t3\t10\n1\t6\t4\t20\n2\t5\t5\t30\n2\t7\t1\t40\n"


def _no_parsing(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("text was parsed despite a cache entry")

    monkeypatch.setattr(textparse, "_arrow_read", refuse)
    monkeypatch.setattr(textparse, "_split_lines", refuse)


def test_second_load_reads_the_cache_without_parsing(write_file, data_config, monkeypatch):
    write_file("ml-100k/u.data", U_DATA)
    write_file("ml-100k/u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    first = load_dataset(data_config("ml-100k"), progress=False)
    _no_parsing(monkeypatch)
    second = load_dataset(data_config("ml-100k"), progress=False)
    for name in ("seq_offsets", "item_ids", "timestamps", "ratings", "user_raw_ids",
                 "item_raw_ids"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    np.testing.assert_array_equal(first.user_features["zip"], second.user_features["zip"])
    assert second.notes == first.notes


def test_string_ids_round_trip_without_pickle(write_file, data_config, tmp_path):
    write_file("amzn-books/ratings_Books.csv", "A,x1,5.0,1\nA,x2,4.0,2\n")
    first = load_dataset(data_config("amzn-books"), progress=False)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    with np.load(entry, allow_pickle=False) as z:
        assert z["item_raw_ids"].tolist() == ["", "x1", "x2"]
    second = load_dataset(data_config("amzn-books"), progress=False)
    assert second.user_raw_ids.tolist() == first.user_raw_ids.tolist() == ["A"]


def test_changed_file_invalidates_the_cache(write_file, data_config):
    path = write_file("ml-100k/u.data", U_DATA)
    assert load_dataset(data_config("ml-100k"), progress=False).num_events == 4
    write_file("ml-100k/u.data", U_DATA + "2\t8\t1\t50\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse file systems
    assert load_dataset(data_config("ml-100k"), progress=False).num_events == 5


def test_options_are_part_of_the_key(write_file, data_config):
    write_file("ml-100k/u.data", U_DATA + "3\t5\t1\t60\n")
    assert load_dataset(data_config("ml-100k", min_seq_len=2), progress=False).num_users == 2
    assert load_dataset(data_config("ml-100k", min_seq_len=1), progress=False).num_users == 3


def test_damaged_cache_entry_is_rebuilt(write_file, data_config, tmp_path):
    write_file("ml-100k/u.data", U_DATA)
    load_dataset(data_config("ml-100k"), progress=False)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(b"not a zip")
    assert load_dataset(data_config("ml-100k"), progress=False).num_events == 4


def test_no_temporary_files_are_left(write_file, data_config, tmp_path):
    write_file("ml-100k/u.data", U_DATA)
    load_dataset(data_config("ml-100k"), progress=False)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]


def test_default_cache_dir_is_inside_the_data_dir(tmp_path):
    assert cache.default_cache_dir(tmp_path, None) == tmp_path / ".genrec-cache"


def test_read_only_data_dir_falls_back_to_user_cache(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o500)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    try:
        assert cache.default_cache_dir(data_dir, None) == tmp_path / "xdg" / "genrec"
    finally:
        data_dir.chmod(0o700)


def test_unwritable_data_dir_falls_back_to_user_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")  # mkdir fails even as root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir(blocker, None) == tmp_path / "xdg" / "genrec"
