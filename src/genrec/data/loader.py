"""``load_dataset``: find a data set's files, parse them once, and cache the prepared form."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from genrec.config import DataConfig, TableConfig
from genrec.data import cache
from genrec.data.errors import DataError
from genrec.data.interactions import Interactions
from genrec.data.prepare import prepare
from genrec.data.registry import dataset_folder, get_spec, missing_files_message
from genrec.data.sequences import SequenceData
from genrec.data.table import read_table, table_format


def load_dataset(cfg: DataConfig, *, progress: bool = True) -> SequenceData:
    """Read the data set `cfg` names and return its prepared, per-user sequences.

    Files are looked up in ``DATA_DIR/NAME/`` (or ``DATA_DIR`` itself when it holds them);
    ``name == "custom"`` reads ``cfg.table``. The prepared form is cached (see
    :mod:`genrec.data.cache`); a later call with the same files and options reads the cache
    and parses no text. Raises DataError when files are missing or malformed.
    """
    data_dir = Path(cfg.data_dir).expanduser()
    sources, read = _resolve(cfg, data_dir)
    options = {"min_seq_len": cfg.min_seq_len, "max_users": cfg.max_users,
               "table": dataclasses.asdict(cfg.table) if cfg.table else None}
    key = cache.cache_key(cfg.name, sources, options)
    folder = cache.default_cache_dir(data_dir, cfg.cache_dir)
    path = cache.cache_path(folder, cfg.name, key)
    cached = cache.load(path)
    if cached is not None:
        return cached

    with tqdm(total=3, desc=f"{cfg.name}: reading", disable=not progress, leave=False) as bar:
        events = read()
        bar.update()
        bar.set_description(f"{cfg.name}: preparing")
        data = prepare(events, cfg.name, min_seq_len=cfg.min_seq_len, max_users=cfg.max_users)
        bar.update()
        bar.set_description(f"{cfg.name}: caching")
        try:
            cache.save(data, path)
        except OSError as e:  # a cache we cannot write costs time, not correctness
            data.notes.append(f"cache not written ({path}): {e}")
        bar.update()
    return data


def _resolve(cfg: DataConfig, data_dir: Path) -> tuple[list[Path], Callable[[], Interactions]]:
    """(the files to read, a function that reads them), or DataError naming what is missing."""
    if cfg.name == "custom":
        if cfg.table is None or not cfg.table.path:
            raise DataError("data.name is 'custom' but data.table.path is not set")
        path = _table_path(cfg.table, data_dir)
        table = cfg.table
        return [path], lambda: read_table(path, table)
    spec = get_spec(cfg.name)
    files = spec.locate(dataset_folder(spec, data_dir))
    if files["ratings"] is None:
        raise DataError(missing_files_message(spec, data_dir))
    sources = [p for p in files.values() if p is not None]

    def read() -> Interactions:
        return spec.read(files)

    return sources, read


def _table_path(table: TableConfig, data_dir: Path) -> Path:
    path = Path(table.path).expanduser()
    if not path.is_absolute() and not path.exists() and (data_dir / path).exists():
        path = data_dir / path
    if not path.is_file():
        kind = table_format(table, path)
        raise DataError(f"{path}: file not found; data.table.path must name a {kind} file "
                        f"(absolute, or relative to the working directory or data.data_dir)")
    return path
