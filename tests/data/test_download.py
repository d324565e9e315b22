"""download_dataset against a local HTTP server (never the internet)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from genrec.data import DATASET_SPECS, DataError, download_dataset, load_dataset

U_DATA = b"1\t5\t3\t10\n1\t6\t4\t20\n2\t5\t5\t30\n2\t7\t1\t40\n"


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("ml-100k/u.data", U_DATA)
        z.writestr("ml-100k/u.user", b"1|24|M|technician|85711\n2|53|F|other|94043\n")
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server for tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "ml-100k.zip").write_bytes(_zip_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def trust_test_zip(monkeypatch) -> None:
    """Make the registry expect the test zip's MD5 and know no file digests."""
    spec = dataclasses.replace(DATASET_SPECS["ml-100k"],
                               archive_md5=hashlib.md5(_zip_bytes()).hexdigest(),
                               file_sha256={})
    monkeypatch.setitem(DATASET_SPECS, "ml-100k", spec)


def test_download_extracts_into_data_dir_name(server, trust_test_zip, tmp_path, data_config):
    folder = download_dataset("ml-100k", tmp_path / "data", base_url=server, progress=False)
    assert folder == tmp_path / "data" / "ml-100k"
    assert (folder / "u.data").read_bytes() == U_DATA
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ml-100k"]  # no leftovers
    data = load_dataset(data_config("ml-100k", data_dir=str(tmp_path / "data")), progress=False)
    assert data.num_events == 4


def test_checksum_mismatch_installs_nothing(server, tmp_path):
    with pytest.raises(DataError, match="checksum mismatch"):
        download_dataset("ml-100k", tmp_path / "data", base_url=server, progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_known_file_digest_mismatch_installs_nothing(server, monkeypatch, tmp_path):
    spec = dataclasses.replace(DATASET_SPECS["ml-100k"],
                               archive_md5=hashlib.md5(_zip_bytes()).hexdigest())
    monkeypatch.setitem(DATASET_SPECS, "ml-100k", spec)  # keeps the real u.data sha256
    with pytest.raises(DataError, match="u.data does not match its known checksum"):
        download_dataset("ml-100k", tmp_path / "data", base_url=server, progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_unreachable_host_says_what_to_place_where(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError) as info:
        download_dataset("ml-1m", tmp_path, base_url=f"http://127.0.0.1:{port}", progress=False)
    message = str(info.value)
    assert "could not download" in message and "ml-1m.zip" in message
    assert str(tmp_path / "ml-1m" / "ratings.dat") in message


def test_missing_archive_is_reported(server, tmp_path):
    with pytest.raises(DataError, match="could not download .*ml-1m.zip"):
        download_dataset("ml-1m", tmp_path, base_url=server, progress=False)


def test_present_data_set_is_not_downloaded_again(tmp_path):
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_bytes(U_DATA)
    closed = "http://127.0.0.1:9"  # would fail if it were contacted
    assert download_dataset("ml-100k", tmp_path, base_url=closed, progress=False) == (
        tmp_path / "ml-100k")
