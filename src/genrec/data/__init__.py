"""Data: readers, the prepared sequence form and its cache, jagged batching.

Public API: :func:`load_dataset` (read + prepare + cache a data set), :func:`dataset_stats` /
:func:`format_stats`, :func:`download_dataset`, and :class:`DataError` for bad input.
"""

from genrec.data.batching import JaggedBatch
from genrec.data.download import download_dataset
from genrec.data.errors import DataError
from genrec.data.loader import load_dataset
from genrec.data.registry import DATASET_SPECS
from genrec.data.sequences import SequenceData
from genrec.data.stats import dataset_stats, format_stats

__all__ = [
    "DATASET_SPECS",
    "DataError",
    "JaggedBatch",
    "SequenceData",
    "dataset_stats",
    "download_dataset",
    "format_stats",
    "load_dataset",
]
