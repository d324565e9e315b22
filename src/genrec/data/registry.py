"""Known data sets: where their files live, how to read them, where to download them.

Checksums, and what they prove:

- ``archive_md5``: the MD5 GroupLens publishes next to each zip (``ml-1m.zip.md5`` …), as
  quoted by several independent loaders. Verified on every download when set. ml-latest-small
  is republished from time to time, so its zip has none.
- ``file_sha256`` / ``file_git_blob``: digests of extracted files as we hold them (the
  project's copy of the GroupLens archives). Verified after extraction when set; the complete
  ML-1M ``ratings.dat`` is known only by its ``git hash-object`` id.
- Amazon Books (SNAP) publishes no checksum: its download is not verified (a note says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from genrec.data.amazon import locate_amazon_books, read_amazon
from genrec.data.errors import DataError
from genrec.data.interactions import Interactions
from genrec.data.movielens import (
    Files,
    locate_ml_1m,
    locate_ml_100k,
    locate_ml_csv,
    read_ml_1m,
    read_ml_100k,
    read_ml_csv,
)

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
SNAP_AMAZON = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"


@dataclass(frozen=True)
class DatasetSpec:
    """One public data set: its folder layout, reader and download."""

    name: str  # also the folder under DATA_DIR
    url: str
    ratings_file: str  # the file that must exist, as named in "place it here" messages
    locate: Callable[[Path], Files]
    read: Callable[[Files], Interactions]
    archive_md5: str | None = None
    file_sha256: dict[str, str] = field(default_factory=dict)
    file_git_blob: dict[str, str] = field(default_factory=dict)

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def is_zip(self) -> bool:
        return self.archive_name.endswith(".zip")


DATASET_SPECS: dict[str, DatasetSpec] = {
    "ml-1m": DatasetSpec(
        "ml-1m", f"{GROUPLENS}/ml-1m.zip", "ratings.dat", locate_ml_1m, read_ml_1m,
        archive_md5="c4d9eecfca2ab87c1945afe126590906",
        file_sha256={
            "README": "2d5ddce86ccbd247207456165827b4b9ddf27282bca93807d4c763e28414f133",
            "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
            "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
        },
        file_git_blob={"ratings.dat": "77a7c4b150f588c23bb9e1f068aa996c0b413695"},
    ),
    "ml-100k": DatasetSpec(
        "ml-100k", f"{GROUPLENS}/ml-100k.zip", "u.data", locate_ml_100k, read_ml_100k,
        archive_md5="0e33842e24a9c977be4e0107933c0723",
        file_sha256={
            "README": "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
            "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
        },
    ),
    "ml-latest-small": DatasetSpec(
        "ml-latest-small", f"{GROUPLENS}/ml-latest-small.zip", "ratings.csv", locate_ml_csv,
        read_ml_csv,
        file_sha256={
            "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
            "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
            "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
            "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
        },
    ),
    "ml-20m": DatasetSpec(
        "ml-20m", f"{GROUPLENS}/ml-20m.zip", "ratings.csv", locate_ml_csv, read_ml_csv,
        archive_md5="cd245b17a1ae2cc31bb14903e1204af3",
    ),
    "amzn-books": DatasetSpec(
        "amzn-books", f"{SNAP_AMAZON}/ratings_Books.csv", "ratings_Books.csv",
        locate_amazon_books, read_amazon,
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a known data set, or a DataError listing the known names."""
    try:
        return DATASET_SPECS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASET_SPECS)} "
                        f"(or 'custom' with data.table set)") from None


def dataset_folder(spec: DatasetSpec, data_dir: Path) -> Path:
    """DATA_DIR/NAME, or DATA_DIR itself when it already holds the data set's files."""
    nested = data_dir / spec.name
    if not nested.is_dir() and spec.locate(data_dir)["ratings"] is not None:
        return data_dir
    return nested


def missing_files_message(spec: DatasetSpec, data_dir: Path) -> str:
    """What to do when a data set's ratings file is not where it should be."""
    target = data_dir / spec.name / spec.ratings_file
    fetch = (f"download {spec.url} and unzip it so that {target} exists"
             if spec.is_zip else f"download {spec.url} and place it at {target}")
    return (f"{spec.name}: {target} not found. Run `genrec data download {spec.name} "
            f"--data-dir {data_dir}`, or {fetch}")
