"""Delimited text files: a fast bulk parser and a careful one that names the bad line.

Large files (ML-20M's 20M ratings) go through ``pyarrow.csv`` in one call (:func:`read_bulk`).
When pyarrow refuses the file, or a parsed value fails validation, the file is scanned again
line by line with :func:`iter_records`, which raises a :class:`DataError` naming the file,
the 1-based physical line (a header is line 1) and the field. Small side files (movies, users)
are read with :func:`read_small`, which uses the careful scanner directly.

Formats: any single-character separator, plus MovieLens' ``::``; optional header; optional
CSV double-quote quoting; gzip when the name ends in ``.gz``. Blank lines are skipped (they
hold no event); every other line must parse, so no row is ever dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from genrec.data.errors import DataError, field_error

Kind = Literal["int", "number", "string"]

_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INT64_MAX = 2**63 - 1
_SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "'|'", "::": "'::'"}
_ARROW_SAFE_SEPARATOR = "\x1f"  # stands in for '::', which pyarrow cannot split on


@dataclass(frozen=True)
class Column:
    """One column of a text file: its name in results and messages, and its kind.

    ``header`` is the column's name in the file's header line (default: ``name``).
    ``required`` string columns must not be empty (ids); numbers are always required.
    """

    name: str
    kind: Kind = "string"
    header: str | None = None
    required: bool = True

    @property
    def header_name(self) -> str:
        return self.header or self.name


@dataclass(frozen=True)
class TextFormat:
    """How a file is laid out.

    Without a header, ``columns`` are all of the file's columns in order and every line must
    have exactly that many fields. With a header, ``columns`` are looked up by header name and
    other columns are ignored (but every line must have as many fields as the header).
    """

    columns: tuple[Column, ...]
    separator: str
    header: bool = False
    encoding: str = "utf-8"
    quoting: bool = False  # CSV double-quote quoting ("Toy Story, The (1995)")
    example: str = ""  # a good line, quoted in field-count errors

    @property
    def separator_name(self) -> str:
        return _SEPARATOR_NAMES.get(self.separator, repr(self.separator))


# ---------------------------------------------------------------------------------------------
# Careful line-by-line scanning.


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _decoded_lines(path: Path, encoding: str) -> Iterator[str]:
    """Lines of `path` split at "\\n" (line endings kept); a bad byte names its line."""
    try:
        with _open_binary(path) as raw, io.TextIOWrapper(raw, encoding, newline="\n") as text:
            yield from text
    except UnicodeDecodeError:
        raise _decode_error(path, encoding) from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read: {e}") from None


def _decode_error(path: Path, encoding: str) -> DataError:
    """The error for the first line of `path` that is not valid `encoding`."""
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as e:
                return field_error(path, number, None, f"not valid {encoding} text ({e.reason} "
                                   f"at byte {e.start}); save the file as {encoding}")
    return DataError(f"{path}: not valid {encoding} text; save the file as {encoding}")


def _split_lines(path: Path, fmt: TextFormat) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line, before any validation."""
    lines = _decoded_lines(path, fmt.encoding)
    if fmt.quoting:
        reader = csv.reader(lines, delimiter=fmt.separator, quotechar='"', strict=True)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise field_error(path, reader.line_num, None, f"malformed CSV: {e}") from None
            if fields:
                yield start, fields
    else:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n")
            if line:
                yield number, line.split(fmt.separator)


def _separator_hint(line: str, fmt: TextFormat) -> str:
    others = [s for s in _SEPARATOR_NAMES if s != fmt.separator and s in line]
    if not others:
        return ""
    return (f"; the line looks {_SEPARATOR_NAMES[others[0]]}-separated, but this file must be "
            f"{fmt.separator_name}-separated")


def _header_positions(path: Path, fmt: TextFormat, header: list[str]) -> list[int]:
    names = [h.strip() for h in header]
    if names and names[0].startswith("\ufeff"):  # byte-order mark written by some editors
        names[0] = names[0][1:]
    positions = []
    for col in fmt.columns:
        if col.header_name not in names:
            hint = _separator_hint(fmt.separator.join(header), fmt)
            raise field_error(path, 1, None, f"the header has no column {col.header_name!r} "
                              f"(columns found: {', '.join(map(repr, names))}){hint}")
        positions.append(names.index(col.header_name))
    return positions


def check_value(value: str, col: Column) -> str | None:
    """Why `value` is not a valid `col`, or None when it is."""
    text = value.strip()
    epoch = " (expected seconds since the epoch)" if "time" in col.name.lower() else ""
    if col.kind == "int":
        if not text:
            return f"is empty (expected an integer){epoch}"
        if not _INT.fullmatch(text) or abs(int(text)) > _INT64_MAX:
            return f"{value!r} is not an integer{epoch}"
    elif col.kind == "number":
        if not text:
            return f"is empty (expected a number){epoch}"
        if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
            return f"{value!r} is not a number{epoch}"
    elif col.required and not text:
        return "is empty"
    return None


def iter_records(path: Path, fmt: TextFormat, *,
                 check_from: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(line number, the format's fields in column order) of each record, validated.

    Raises DataError at the first bad line, or when the file has no records at all.
    ``check_from``: records before this (0-based) index are counted, not checked or yielded;
    the bulk parser uses it to jump to the block pyarrow failed on.
    """
    records = _split_lines(path, fmt)
    positions = list(range(len(fmt.columns)))
    width = len(fmt.columns)
    if fmt.header:
        first = next(records, None)
        if first is None:
            raise DataError(f"{path}: empty file; expected a header line "
                            f"{fmt.separator.join(c.header_name for c in fmt.columns)!r}")
        positions = _header_positions(path, fmt, first[1])
        width = len(first[1])
    count = 0
    for number, fields in records:
        count += 1
        if count <= check_from:
            continue
        if len(fields) != width:
            names = ", ".join(c.name for c in fmt.columns) if not fmt.header else "the header"
            example = f" like {fmt.example!r}" if fmt.example else ""
            hint = _separator_hint(fmt.separator.join(fields), fmt)
            raise field_error(path, number, None,
                              f"expected {width} {fmt.separator_name}-separated fields "
                              f"({names}){example}, found {len(fields)}{hint}")
        selected = [fields[p] for p in positions]
        for col, value in zip(fmt.columns, selected, strict=True):
            problem = check_value(value, col)
            if problem:
                raise field_error(path, number, col.header_name if fmt.header else col.name,
                                  problem)
        yield number, selected
    if count == 0:
        what = "has a header but no data lines" if fmt.header else "is empty"
        example = f"; expected lines like {fmt.example!r}" if fmt.example else ""
        raise DataError(f"{path}: the file {what}{example}")


def read_small(path: Path, fmt: TextFormat) -> dict[str, list]:
    """Read a small file with the careful scanner: column name -> typed values."""
    out: dict[str, list] = {c.name: [] for c in fmt.columns}
    for _, fields in iter_records(path, fmt):
        for col, value in zip(fmt.columns, fields, strict=True):
            out[col.name].append(_convert(value, col.kind))
    return out


def _convert(value: str, kind: Kind) -> int | float | str:
    if kind == "int":
        return int(value)
    if kind == "number":
        return float(value)
    return value


# ---------------------------------------------------------------------------------------------
# Fast bulk parsing.

_ARROW_TYPES = {"int": pa.int64(), "number": pa.float64(), "string": pa.string()}


def _arrow_source(path: Path, fmt: TextFormat) -> tuple[object, str]:
    """What to hand pyarrow, and the separator it should split on."""
    if len(fmt.separator) == 1:
        return str(path), fmt.separator  # pyarrow decompresses .gz itself
    with _open_binary(path) as f:
        raw = f.read()
    raw = raw.replace(fmt.separator.encode(), _ARROW_SAFE_SEPARATOR.encode())
    return pa.BufferReader(raw), _ARROW_SAFE_SEPARATOR


def _arrow_options(fmt: TextFormat, separator: str) -> dict:
    has_strings = any(c.kind == "string" for c in fmt.columns)
    encoding = fmt.encoding if has_strings else "utf8"
    if fmt.header:
        read = pv.ReadOptions(encoding=encoding)
        include = [c.header_name for c in fmt.columns]
    else:
        read = pv.ReadOptions(column_names=[c.name for c in fmt.columns], encoding=encoding)
        include = [c.name for c in fmt.columns]
    types = {name: _ARROW_TYPES[c.kind] for name, c in zip(include, fmt.columns, strict=True)}
    convert = pv.ConvertOptions(column_types=types, include_columns=include, null_values=[],
                                strings_can_be_null=False, quoted_strings_can_be_null=False)
    parse = pv.ParseOptions(delimiter=separator, quote_char='"' if fmt.quoting else False)
    return {"read_options": read, "parse_options": parse, "convert_options": convert}


def _arrow_read(path: Path, fmt: TextFormat) -> pa.Table:
    source, separator = _arrow_source(path, fmt)
    table = pv.read_csv(source, **_arrow_options(fmt, separator))
    return table.rename_columns([c.name for c in fmt.columns])


def _first_failing_block(path: Path, fmt: TextFormat) -> int:
    """Index of the first record of the block pyarrow fails on (0 when it does not fail)."""
    source, separator = _arrow_source(path, fmt)
    rows = 0
    try:
        for batch in pv.open_csv(source, **_arrow_options(fmt, separator)):
            rows += batch.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return rows
    return 0


def _first_bad_value(table: pa.Table, fmt: TextFormat) -> int | None:
    """Index of the first row pyarrow accepted but genrec does not (NaN, empty id), or None."""
    first = None
    for col in fmt.columns:
        values = table.column(col.name)
        if col.kind == "number":
            bad = ~np.isfinite(values.to_numpy())
        elif col.kind == "string" and col.required:
            bad = pc.equal(pc.utf8_trim_whitespace(values), "").to_numpy(zero_copy_only=False)
        else:
            continue
        if bad.any():
            index = int(np.argmax(bad))
            first = index if first is None else min(first, index)
    return first


def _locate_error(path: Path, fmt: TextFormat, reason: str, near: int = 0) -> DataError:
    """Scan carefully for the first bad line; return an error for it (or a general one).

    `near` is the index of a record at or before the first bad one: the scan checks from
    there (a full scan follows in case that guess was wrong).
    """
    for check_from in dict.fromkeys((near, 0)):
        for _ in iter_records(path, fmt, check_from=check_from):  # raises at the bad line
            pass
    return DataError(f"{path}: could not be parsed: {reason}")


def read_bulk(path: Path, fmt: TextFormat) -> pa.Table:
    """Parse a large file with pyarrow: a table with one column per ``fmt.columns`` entry.

    Raises DataError naming the first bad line when the file does not match `fmt`.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt.header:  # check the header ourselves: pyarrow's message would not name the line
        records = _split_lines(path, fmt)
        first = next(records, None)
        if first is None:
            raise _locate_error(path, fmt, "empty file")
        _header_positions(path, fmt, first[1])
    try:
        table = _arrow_read(path, fmt)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise _locate_error(path, fmt, str(e), _first_failing_block(path, fmt)) from None
    if table.num_rows == 0:
        raise _locate_error(path, fmt, "no rows")
    bad = _first_bad_value(table, fmt)
    if bad is not None:
        raise _locate_error(path, fmt, "invalid values", bad)
    return table

