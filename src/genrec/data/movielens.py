"""MovieLens readers: ML-1M (``::`` .dat files), ML-100K (``u.data`` & co), ML-20M and
ml-latest-small (``ratings.csv`` / ``movies.csv``).

Each data set has a ``locate_*`` function (which files of a folder to read: roles ``ratings``,
``items``, ``users``; ``None`` when absent) and a ``read_*`` function (parse them). Only the
ratings file is required; a missing side file leaves a note and no features.

Side-info: item feature ``genre`` (multi-valued); ML-1M / ML-100K user features ``gender``,
``age``, ``occupation`` and ``zip``, all categorical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.errors import DataError
from genrec.data.interactions import FeatureTable, Interactions, multi_valued, single_valued
from genrec.data.textparse import Column, TextFormat, read_bulk, read_small

Files = dict[str, Path | None]

ML_1M_USERS = 6040  # users in the complete ratings.dat
USER_FEATURES = ("gender", "age", "occupation", "zip")


def _ratings_format(separator: str, example: str, header: bool = False,
                    names: tuple[str, str, str, str] | None = None,
                    quoting: bool = False) -> TextFormat:
    kinds = (("user_id", "int"), ("item_id", "int"), ("rating", "number"), ("timestamp", "int"))
    headers = names or (None, None, None, None)
    cols = tuple(Column(n, k, header=h) for (n, k), h in zip(kinds, headers, strict=True))
    return TextFormat(cols, separator, header=header, encoding="latin-1", quoting=quoting,
                      example=example)


def events_from_table(table: pa.Table) -> Interactions:
    """Interactions from a table with columns user_id, item_id, timestamp and maybe rating."""
    ratings = None
    if "rating" in table.column_names:
        ratings = table.column("rating").to_numpy().astype(np.float32)
    return Interactions(
        users=table.column("user_id"),
        items=table.column("item_id"),
        timestamps=table.column("timestamp").to_numpy().astype(np.int64),
        ratings=ratings,
    )


def _user_features(values: dict[str, list]) -> dict[str, FeatureTable]:
    ids = pa.array(values["user_id"], type=pa.int64())
    return {name: FeatureTable(ids, single_valued(values[name])) for name in USER_FEATURES}


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# ML-1M

ML_1M_RATINGS = _ratings_format("::", "1::1193::5::978300760")
ML_1M_USERS_FORMAT = TextFormat(
    (Column("user_id", "int"), Column("gender"), Column("age"), Column("occupation"),
     Column("zip")),
    "::", encoding="latin-1", example="1::F::1::10::48067")
ML_1M_MOVIES = TextFormat(
    (Column("item_id", "int"), Column("title", required=False),
     Column("genres", required=False)),
    "::", encoding="latin-1", example="1::Toy Story (1995)::Animation|Children's|Comedy")


def locate_ml_1m(folder: Path) -> Files:
    """ratings.dat, else ratings.dat.gz, else a single ``ratings*.dat.gz`` (a partial copy)."""
    ratings = _existing(folder / "ratings.dat") or _existing(folder / "ratings.dat.gz")
    if ratings is None:
        candidates = sorted(folder.glob("ratings*.dat.gz"))
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise DataError(f"{folder}: several ratings files ({names}); keep only one, or "
                            f"place the complete ratings.dat there")
        ratings = candidates[0] if candidates else None
    return {"ratings": ratings, "items": _existing(folder / "movies.dat"),
            "users": _existing(folder / "users.dat")}


def read_ml_1m(files: Files) -> Interactions:
    """ML-1M: ``user::item::rating::timestamp``, latin-1; users.dat and movies.dat side-info."""
    ratings_path = files["ratings"]
    assert ratings_path is not None
    events = events_from_table(read_bulk(ratings_path, ML_1M_RATINGS))
    num_users = len(pc.unique(events.users))
    if num_users != ML_1M_USERS:
        events.notes.append(f"partial: {num_users:,} of {ML_1M_USERS:,} users "
                            f"({ratings_path.name})")
    if files["items"] is not None:
        movies = read_small(files["items"], ML_1M_MOVIES)
        events.item_features["genre"] = FeatureTable(
            pa.array(movies["item_id"], type=pa.int64()), multi_valued(movies["genres"]))
    else:
        events.notes.append("movies.dat not found: no item features")
    if files["users"] is not None:
        events.user_features.update(_user_features(read_small(files["users"],
                                                              ML_1M_USERS_FORMAT)))
    else:
        events.notes.append("users.dat not found: no user features")
    return events


# ---------------------------------------------------------------------------------------------
# ML-100K

ML_100K_RATINGS = _ratings_format("\t", "196\t242\t3\t881250949")
ML_100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                  "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                  "Romance", "Sci-Fi", "Thriller", "War", "Western")
ML_100K_ITEMS = TextFormat(
    (Column("item_id", "int"),
     *(Column(n, required=False) for n in ("title", "release_date", "video_release_date", "url")),
     *(Column(f"genre_{g}", "int") for g in ML_100K_GENRES)),
    "|", encoding="latin-1",
    example="1|Toy Story (1995)|01-Jan-1995||http://...|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0")
ML_100K_USERS = TextFormat(
    (Column("user_id", "int"), Column("age"), Column("gender"), Column("occupation"),
     Column("zip")),
    "|", encoding="latin-1", example="1|24|M|technician|85711")


def locate_ml_100k(folder: Path) -> Files:
    """u.data (ratings), u.item (genres), u.user (demographics)."""
    return {"ratings": _existing(folder / "u.data"), "items": _existing(folder / "u.item"),
            "users": _existing(folder / "u.user")}


def read_ml_100k(files: Files) -> Interactions:
    """ML-100K: tab-separated u.data; ``|``-separated u.item (19 genre flags) and u.user."""
    assert files["ratings"] is not None
    events = events_from_table(read_bulk(files["ratings"], ML_100K_RATINGS))
    if files["items"] is not None:
        items = read_small(files["items"], ML_100K_ITEMS)
        flags = np.array([items[f"genre_{g}"] for g in ML_100K_GENRES]).T  # [n, 19]
        genres = ["|".join(g for g, f in zip(ML_100K_GENRES, row, strict=True) if f)
                  for row in flags]
        events.item_features["genre"] = FeatureTable(
            pa.array(items["item_id"], type=pa.int64()),
            multi_valued(genres, missing=("unknown",)))
    else:
        events.notes.append("u.item not found: no item features")
    if files["users"] is not None:
        events.user_features.update(_user_features(read_small(files["users"], ML_100K_USERS)))
    else:
        events.notes.append("u.user not found: no user features")
    return events


# ---------------------------------------------------------------------------------------------
# ML-20M and ml-latest-small (same CSV layout)

ML_CSV_RATINGS = _ratings_format(",", "1,2,3.5,1112486027", header=True,
                                 names=("userId", "movieId", "rating", "timestamp"),
                                 quoting=True)
ML_CSV_MOVIES = TextFormat(
    (Column("item_id", "int", header="movieId"), Column("genres", header="genres",
                                                         required=False)),
    ",", header=True, quoting=True, example="1,Toy Story (1995),Adventure|Animation")


def locate_ml_csv(folder: Path) -> Files:
    """ratings.csv (ratings) and movies.csv (genres)."""
    return {"ratings": _existing(folder / "ratings.csv"),
            "items": _existing(folder / "movies.csv"), "users": None}


def read_ml_csv(files: Files) -> Interactions:
    """ML-20M / ml-latest-small: ``userId,movieId,rating,timestamp`` with a header line."""
    assert files["ratings"] is not None
    events = events_from_table(read_bulk(files["ratings"], ML_CSV_RATINGS))
    if files["items"] is not None:
        movies = read_small(files["items"], ML_CSV_MOVIES)
        events.item_features["genre"] = FeatureTable(
            pa.array(movies["item_id"], type=pa.int64()),
            multi_valued(movies["genres"], missing=("(no genres listed)",)))
    else:
        events.notes.append("movies.csv not found: no item features")
    return events
