"""``download_dataset``: fetch a public data set into DATA_DIR/NAME/, verified, atomically.

The archive streams to ``DATA_DIR/ARCHIVE.part`` (urllib, tqdm bar), its MD5 is checked when
one is published, a zip is extracted into a temporary folder whose files are checked against
the digests we know (see :mod:`genrec.data.registry`), and only then are the files moved into
``DATA_DIR/NAME/`` (one ``os.replace`` each). A failure leaves no partial data set behind.

Offline, or when the host cannot be reached, it fails within ``TIMEOUT_S`` seconds with a
DataError saying which file to fetch by hand and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from genrec.data.errors import DataError
from genrec.data.registry import DatasetSpec, get_spec

TIMEOUT_S = 15.0
_CHUNK = 1 << 20


def download_dataset(name: str, data_dir: str | Path, *, base_url: str | None = None,
                     progress: bool = True) -> Path:
    """Download data set `name` into ``data_dir/name/`` and return that folder.

    Args:
        name: a registered data set ("ml-1m", "ml-20m", "ml-100k", "ml-latest-small",
            "amzn-books").
        data_dir: the DATA_DIR; created if needed.
        base_url: fetch ``base_url/ARCHIVE`` instead of the official URL (a mirror, tests).
        progress: show a progress bar.

    Does nothing when ``data_dir/name/`` already holds the data set's ratings file.
    """
    spec = get_spec(name)
    data_dir = Path(data_dir).expanduser()
    target = data_dir / spec.name
    if (target / spec.ratings_file).is_file():
        return target
    url = spec.url if base_url is None else f"{base_url.rstrip('/')}/{spec.archive_name}"
    data_dir.mkdir(parents=True, exist_ok=True)
    part = data_dir / f"{spec.archive_name}.part"
    try:
        md5 = _fetch(url, part, spec, target, progress)
        if spec.archive_md5 is not None and md5 != spec.archive_md5:
            raise DataError(f"{url}: checksum mismatch (MD5 {md5}, expected {spec.archive_md5});"
                            f" the download is damaged or the file changed upstream. Nothing "
                            f"was installed; try again, or fetch {spec.url} yourself")
        if spec.archive_md5 is None and progress:
            print(f"note: {spec.archive_name} has no published checksum; archive not verified",
                  file=sys.stderr)
        staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{spec.name}.staging-"))
        try:
            if spec.is_zip:
                _extract(part, staging)
            else:
                os.replace(part, staging / spec.archive_name)
            _verify_files(staging, spec)
            _move_into(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        part.unlink(missing_ok=True)
    return target


def _fetch(url: str, part: Path, spec: DatasetSpec, target: Path, progress: bool) -> str:
    """Stream `url` to `part`; return its MD5 (hex)."""
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                              desc=spec.archive_name, disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        how = "unzip it so that" if spec.is_zip else "place it so that"
        raise DataError(f"could not download {url} ({reason}). Download {spec.archive_name} "
                        f"yourself ({spec.url}) and {how} {target / spec.ratings_file} "
                        f"exists") from None
    return md5.hexdigest()


def _extract(archive: Path, staging: Path) -> None:
    """Extract a zip into `staging`, dropping the archive's single top-level folder."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            parts = [PurePosixPath(m.filename).parts for m in members]
            if any(p.is_absolute() or ".." in p.parts
                   for p in map(PurePosixPath, (m.filename for m in members))):
                raise DataError(f"{archive}: unsafe paths in the archive; not extracted")
            tops = {p[0] for p in parts}
            strip = 1 if len(tops) == 1 and all(len(p) > 1 for p in parts) else 0
            for member, p in zip(members, parts, strict=True):
                dest = staging.joinpath(*p[strip:])
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a valid zip file ({e})") from None


def _digest(path: Path, algorithm: str) -> str:
    if algorithm == "git":  # `git hash-object`: sha1 of "blob <size>\0" + content
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify_files(staging: Path, spec: DatasetSpec) -> None:
    """Check the ratings file is there and every file we know a digest of matches it."""
    if not (staging / spec.ratings_file).is_file():
        raise DataError(f"{spec.archive_name}: the archive has no {spec.ratings_file}; "
                        f"nothing was installed")
    expected = [(n, "sha256", d) for n, d in spec.file_sha256.items()]
    expected += [(n, "git", d) for n, d in spec.file_git_blob.items()]
    for file_name, algorithm, digest in expected:
        path = staging / file_name
        if path.is_file() and _digest(path, algorithm) != digest:
            raise DataError(f"{spec.archive_name}: {file_name} does not match its known "
                            f"checksum ({algorithm}); nothing was installed")


def _move_into(staging: Path, target: Path) -> None:
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        dest = target / path.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
