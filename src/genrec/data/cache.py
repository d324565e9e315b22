"""On-disk cache of prepared data sets, so that text is parsed once.

One ``.npz`` file per prepared data set (``np.load(..., allow_pickle=False)``: no pickle, ever),
named after a hash of everything that determines its content: the source files (path, size,
modification time), the reader options, the preparation options and :data:`FORMAT_VERSION`.
Change any of them and the key changes, so a stale entry is never read. Writes go to a
temporary file in the same folder, then ``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from genrec.data.sequences import SequenceData

FORMAT_VERSION = 1  # bump when the prepared form or a reader's output changes

_ARRAYS = ("seq_offsets", "item_ids", "timestamps", "ratings", "user_raw_ids", "item_raw_ids")


def cache_key(name: str, sources: list[Path], options: dict[str, Any]) -> str:
    """Hex digest identifying one prepared data set."""
    files = []
    for path in sources:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {"version": FORMAT_VERSION, "name": name, "files": files, "options": options}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _writable(folder: Path) -> bool:
    """Whether we may create files in `folder` (creating it if needed).

    A folder whose permission bits forbid writing counts as read-only even for root, who
    could write there anyway: shared data folders are made read-only on purpose.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.stat().st_mode & 0o222:
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def default_cache_dir(data_dir: Path, cache_dir: str | None) -> Path:
    """``cache_dir`` if set, else DATA_DIR/.genrec-cache, else ~/.cache/genrec.

    The user cache (``$XDG_CACHE_HOME/genrec`` when set) is used when DATA_DIR is read-only.
    """
    if cache_dir:
        return Path(cache_dir).expanduser()
    preferred = data_dir / ".genrec-cache"
    if _writable(data_dir) and _writable(preferred):
        return preferred
    user_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return user_cache / "genrec"


def cache_path(folder: Path, name: str, key: str) -> Path:
    return folder / f"{name}-{key}.npz"


def save(data: SequenceData, path: Path) -> None:
    """Write `data` to `path` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: getattr(data, k) for k in _ARRAYS}
    arrays.update({f"item_feature.{k}": v for k, v in data.item_features.items()})
    arrays.update({f"user_feature.{k}": v for k, v in data.user_features.items()})
    meta = {"version": FORMAT_VERSION, "name": data.name, "notes": data.notes}
    arrays["meta"] = np.array(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> SequenceData | None:
    """The cached data set at `path`, or None when absent, unreadable or of another version."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != FORMAT_VERSION:
                return None
            arrays = {k: z[k] for k in _ARRAYS}
            item_features = {k.split(".", 1)[1]: z[k] for k in z.files
                             if k.startswith("item_feature.")}
            user_features = {k.split(".", 1)[1]: z[k] for k in z.files
                             if k.startswith("user_feature.")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return None  # a damaged entry is rebuilt, never trusted
    return SequenceData(name=meta["name"], item_features=item_features,
                        user_features=user_features, notes=list(meta["notes"]), **arrays)
