"""Data: readers, the prepared sequence form and its cache, jagged batching."""

from genrec.data.batching import JaggedBatch
from genrec.data.sequences import SequenceData

__all__ = ["JaggedBatch", "SequenceData"]
