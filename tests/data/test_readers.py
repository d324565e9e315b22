"""Each reader on small files written by the test."""

from __future__ import annotations

import numpy as np

from genrec.data import load_dataset

ML_1M_RATINGS = "1::20::5::300\n1::10::3::100\n2::10::4::200\n2::30::1::200\n"
ML_1M_MOVIES = ("10::Am\xe9lie (2001)::Comedy|Romance\n20::Heat (1995)::Action\n"
                "30::Nothing::\n")
ML_1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n"


def test_ml_1m_reads_ratings_movies_and_users(write_file, data_config):
    write_file("ml-1m/ratings.dat", ML_1M_RATINGS)
    write_file("ml-1m/movies.dat", ML_1M_MOVIES, encoding="latin-1")
    write_file("ml-1m/users.dat", ML_1M_USERS)
    data = load_dataset(data_config("ml-1m"), progress=False)
    assert data.num_users == 2 and data.num_items == 3 and data.num_events == 4
    assert data.item_raw_ids.tolist() == [0, 10, 20, 30]
    assert data.user_items(0).tolist() == [1, 2]  # item 10 (t=100) before item 20 (t=300)
    assert data.ratings.dtype == np.float32 and data.ratings.tolist() == [3, 5, 4, 1]
    # genres sorted: Action=1, Comedy=2, Romance=3; item 30 has none
    assert data.item_features["genre"].tolist() == [[0, 0], [2, 3], [1, 0], [0, 0]]
    assert data.user_features["gender"].tolist() == [1, 2]  # F, M
    assert data.user_features["age"].tolist() == [1, 2]  # "1" < "56"


def test_ml_1m_partial_gz_file_gets_a_note(write_file, data_config):
    write_file("ml-1m/ratings.users0001-0002.PARTIAL.dat.gz", ML_1M_RATINGS)
    data = load_dataset(data_config("ml-1m"), progress=False)
    assert data.num_events == 4
    assert any("partial: 2 of 6,040 users" in note for note in data.notes)
    assert any("movies.dat not found" in note for note in data.notes)


def test_ml_1m_prefers_ratings_dat_gz_over_partial_files(write_file, data_config):
    write_file("ml-1m/ratings.dat.gz", ML_1M_RATINGS)
    write_file("ml-1m/ratings.users0001-0001.PARTIAL.dat.gz", "1::10::3::100\n1::20::3::101\n")
    data = load_dataset(data_config("ml-1m"), progress=False)
    assert data.num_events == 4


def test_ml_100k_reads_genre_flags_and_users(write_file, data_config):
    write_file("ml-100k/u.data", "1\t5\t3\t10\n1\t6\t4\t20\n2\t5\t5\t30\n2\t6\t1\t40\n")
    flags_5 = ["0"] * 19
    flags_5[1] = flags_5[8] = "1"  # Action, Drama
    flags_6 = ["1"] + ["0"] * 18  # unknown only
    write_file("ml-100k/u.item",
               f"5|Se7en (1995)|01-Jan-1995||http://x|{'|'.join(flags_5)}\n"
               f"6|Caf\xe9 (1994)|01-Jan-1994||http://y|{'|'.join(flags_6)}\n",
               encoding="latin-1")
    write_file("ml-100k/u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    data = load_dataset(data_config("ml-100k"), progress=False)
    assert data.item_features["genre"].tolist() == [[0, 0], [1, 2], [0, 0]]
    assert data.user_features["occupation"].tolist() == [2, 1]  # other < technician


def test_ml_csv_handles_crlf_and_quoted_titles(write_file, data_config):
    write_file("ml-latest-small/ratings.csv",
               "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
               "2,3,0.5,964981000\n2,1,2.0,964981001\n", newline="\r\n")
    write_file("ml-latest-small/movies.csv",
               'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama\n'
               "3,Grumpier Old Men (1995),(no genres listed)\n", newline="\r\n")
    data = load_dataset(data_config("ml-latest-small"), progress=False)
    assert data.num_events == 4
    assert data.user_items(0).tolist() == [2, 1]  # item 3 (earlier) then item 1
    assert data.ratings[:2].tolist() == [4.5, 4.0]
    assert data.item_features["genre"].tolist() == [[0, 0], [1, 2], [0, 0]]


def test_amazon_books_keeps_string_ids(write_file, data_config):
    write_file("amzn-books/ratings_Books.csv",
               "AH2L9G3DQHHAJ,0000000116,4.0,1019865600\n"
               "A2IIIDRK3PRRZY,0000000116,1.0,1395619200\n"
               "AH2L9G3DQHHAJ,0000013714,5.0,1019865601\n"
               "A2IIIDRK3PRRZY,000100039X,5.0,1395619100\n")
    data = load_dataset(data_config("amzn-books"), progress=False)
    assert data.user_raw_ids.tolist() == ["A2IIIDRK3PRRZY", "AH2L9G3DQHHAJ"]
    assert data.item_raw_ids.tolist() == ["", "0000000116", "0000013714", "000100039X"]
    assert data.user_items(0).tolist() == [3, 1]


def test_data_dir_may_point_at_the_data_set_folder(write_file, data_config, tmp_path):
    write_file("ml-100k/u.data", "1\t5\t3\t10\n1\t6\t4\t20\n")
    data = load_dataset(data_config("ml-100k", data_dir=str(tmp_path / "ml-100k")),
                        progress=False)
    assert data.num_events == 2
