"""Amazon Reviews (SNAP, 2014) ratings-only files: ``ratings_Books.csv``.

Lines are ``user,item,rating,timestamp`` with no header; ids are strings (``A2S166WSCFIFP5``,
ASIN ``0001713353``), so they stay strings and are ordered lexicographically.
"""

from __future__ import annotations

from pathlib import Path

from genrec.data.interactions import Interactions
from genrec.data.movielens import Files, events_from_table
from genrec.data.textparse import Column, TextFormat, read_bulk

AMAZON_RATINGS = TextFormat(
    (Column("user_id"), Column("item_id"), Column("rating", "number"),
     Column("timestamp", "int")),
    ",", example="AH2L9G3DQHHAJ,0000000116,4.0,1019865600")


def locate_amazon_books(folder: Path) -> Files:
    """ratings_Books.csv (no side-info files)."""
    path = folder / "ratings_Books.csv"
    return {"ratings": path if path.is_file() else None, "items": None, "users": None}


def read_amazon(files: Files) -> Interactions:
    """Parse an Amazon ratings-only CSV (string user and item ids)."""
    assert files["ratings"] is not None
    return events_from_table(read_bulk(files["ratings"], AMAZON_RATINGS))
