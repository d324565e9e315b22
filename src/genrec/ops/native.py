"""Small C++ kernels for the CPU, built on first use with the machine's C++ compiler.

Some CPU loops have no fast form in PyTorch: a scatter-add of many short rows into a small
table is serial or atomic there. Those loops live in ``genrec/ops/csrc/*.cpp`` as plain C
functions (no torch headers, so a build takes about a second), compiled for this CPU with
OpenMP into a shared library kept in the user cache and called through ctypes on tensors'
data pointers.

The same compiler torch.compile's CPU backend needs is enough (``$CXX``, else ``c++``,
``g++`` or ``clang++``). Where there is none, or the build fails, ``load`` returns None once
with a logged warning and callers take their PyTorch path; ``GENREC_NATIVE=0`` (or
``native.ENABLED = False``) skips the kernels outright. Each caller holds its kernel to the
PyTorch reference in the tests.

Builds are keyed by the source (and the folder's headers), the flags, the compiler and this
CPU's feature flags (``-march=native``), written to a temporary name and renamed into place,
so concurrent processes and machines sharing a home directory never load a half-written or
foreign build.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENABLED = os.environ.get("GENREC_NATIVE", "1") != "0"
SOURCES = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-ffp-contract=fast", "-shared", "-fPIC")
OPENMP = ("-fopenmp",)
BUILD_TIMEOUT_S = 120

_loaded: dict[str, ctypes.CDLL | None] = {}


def cache_dir() -> Path:
    """``$GENREC_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/genrec/native``, else
    ``~/.cache/genrec/native``."""
    if os.environ.get("GENREC_NATIVE_CACHE"):
        return Path(os.environ["GENREC_NATIVE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "genrec" / "native"


def compiler() -> str | None:
    """The C++ compiler to build with, or None."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"]) or None
    return next((path for name in ("c++", "g++", "clang++") if (path := shutil.which(name))),
                None)


def load(name: str) -> ctypes.CDLL | None:
    """The built ``csrc/<name>.cpp``, or None (disabled, no compiler, failed build)."""
    if not ENABLED:
        return None
    if name not in _loaded:
        try:
            _loaded[name] = _build_and_load(name)
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("genrec native kernel %s unavailable (%s); using the PyTorch path. "
                        "Set GENREC_NATIVE=0 to skip the attempt.", name,
                        str(err).strip().splitlines()[-1] if str(err).strip() else
                        type(err).__name__)
            _loaded[name] = None
    return _loaded[name]


def _build_and_load(name: str) -> ctypes.CDLL:
    source = SOURCES / f"{name}.cpp"
    cxx = compiler()
    if cxx is None:
        raise OSError("no C++ compiler found (set CXX)")
    # the source and the headers it may include from the same folder
    text = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(SOURCES.glob("*.h")))
    for flags in (FLAGS + OPENMP, FLAGS):  # without OpenMP: one thread, still correct
        key = hashlib.sha256(b"\0".join([
            text, " ".join(flags).encode(), cxx.encode(), _compiler_version(cxx),
            _cpu_signature(), platform.platform().encode(),
        ])).hexdigest()[:20]
        target = cache_dir() / f"{name}-{key}.so"
        if not target.exists():
            try:
                _build(cxx, source, flags, target)
            except subprocess.CalledProcessError as err:
                last_error = err
                continue
        return ctypes.CDLL(str(target))
    raise OSError(f"{cxx} could not build {source.name}: "
                  f"{(last_error.stderr or '').strip()[-500:]}")


def _build(cxx: str, source: Path, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cxx, *flags, str(source), "-o", partial], check=True,
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.replace(partial, target)  # atomic: readers see no build or a whole one
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _compiler_version(cxx: str) -> bytes:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return b""


def _cpu_signature() -> bytes:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo", "rb") as info:
            lines = [line for line in info.read().splitlines()
                     if line.startswith((b"flags", b"model name", b"Features", b"CPU part"))]
        return b"\n".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}".encode()
