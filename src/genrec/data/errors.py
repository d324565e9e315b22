"""The one exception the data layer raises for bad or missing input files."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file, line and field.

    The CLI catches it and prints the message without a traceback, so every message must
    say what was wrong, where, and what to do about it.
    """


def field_error(path: Path | str, line: int | None, field: str | None, problem: str,
                unit: str = "line") -> DataError:
    """``"u.data line 51, field item_id: 'abc' is not an integer"`` (unit "row" for Parquet)."""
    where = str(path)
    if line is not None:
        where += f" {unit} {line}"
    if field is not None:
        where += f", field {field}"
    return DataError(f"{where}: {problem}")
