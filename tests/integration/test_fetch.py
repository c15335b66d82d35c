"""data/fetch.py against a loopback HTTP server serving generated files in the real formats.

The server (127.0.0.1, a free port, one per test, shut down afterwards) records every request
and its Range header, answers Range requests with 206, and can be told to cut a response
short, to ignore Range (answer 200), or to serve corrupt bytes. Nothing leaves 127.0.0.1:
every run gets ``--mirror`` (or ``$ESYNC_DATA_MIRROR``) pointing at the server.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import utils
from data import fetch
from launcher.supervision import free_port
from tests.support.processes import run_py

FASHION = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
FASHION += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
CIFAR_TAR = "cifar-10-python.tar.gz"
CIFAR_SIZES = {**{f"data_batch_{i}": 3 for i in range(1, 6)}, "test_batch": 2}
N_TRAIN, N_TEST = 12, 6


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- generated files in the real formats ---------------------------------------------------


def _idx(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def fashion_files(seed: int = 0) -> dict[str, bytes]:
    """The four Fashion-MNIST idx files, gzipped (a few KB each)."""
    rng = np.random.default_rng(seed)
    arrays = {
        FASHION[0]: (rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8), 0x803),
        FASHION[1]: (rng.integers(0, 10, N_TRAIN, dtype=np.uint8), 0x801),
        FASHION[2]: (rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8), 0x803),
        FASHION[3]: (rng.integers(0, 10, N_TEST, dtype=np.uint8), 0x801),
    }
    return {base + ".gz": gzip.compress(_idx(a, magic)) for base, (a, magic) in arrays.items()}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar_tar(seed: int = 0, extra: dict[str, bytes] | None = None) -> bytes:
    """A tiny cifar-10-python.tar.gz: cifar-10-batches-py/ with the six pickled batches."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, n in CIFAR_SIZES.items():
            batch = {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in rng.integers(0, 10, n)],
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            }
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
        meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for name, data in (extra or {}).items():
            _add(tar, name, data)
    return buf.getvalue()


# --- the loopback server -------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    """What the server serves and how it misbehaves; what it saw."""

    url: str = ""
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    cut: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> bytes sent, once
    ignore_range: set[str] = dataclasses.field(default_factory=set)
    corrupt: set[str] = dataclasses.field(default_factory=set)
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def seen(self, name: str) -> list[str | None]:
        """The Range headers of the requests for ``name``, in order (None: no Range)."""
        with self.lock:
            return [rng for path, rng in self.requests if path == name]


class _Handler(BaseHTTPRequestHandler):
    served: Served  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        name, rng = self.path.lstrip("/"), self.headers.get("Range")
        with self.served.lock:
            self.served.requests.append((name, rng))
            body = self.served.files.get(name)
            cut = self.served.cut.pop(name, None)
        if body is None:
            self.send_error(404)
            return
        if name in self.served.corrupt:
            body = body[:-16] + bytes(16)
        start = 0
        if rng and name not in self.served.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:] if cut is None else body[start : start + cut])
        self.close_connection = True


@pytest.fixture
def server():
    served = Served()
    handler = type("Handler", (_Handler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Loopback requests never go through a proxy of the caller's environment."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)


def use_files(monkeypatch, served: Served, files: dict[str, bytes]) -> None:
    """Serve ``files`` and make the table's checksums theirs (names and URLs unchanged)."""
    served.files.update(files)
    table = {
        key: dataclasses.replace(
            src,
            files=tuple(
                dataclasses.replace(f, md5=md5(files[f.name])) if f.name in files else f
                for f in src.files
            ),
        )
        for key, src in fetch.SOURCES.items()
    }
    monkeypatch.setattr(fetch, "SOURCES", table)


def run(served: Served, name: str, data_dir: Path) -> int:
    return fetch.main([name, "-dd", str(data_dir), "--mirror", served.url])


def cli(args: list[str], **env: str):
    return run_py(["-m", "data.fetch", *args], timeout=120, no_proxy="*", NO_PROXY="*", **env)


# --- the table -----------------------------------------------------------------------------


# --- full fetches, read back by the real loaders --------------------------------------------


def test_fetch_fashion_mnist_places_files_for_the_loader(server, tmp_path, monkeypatch, capsys):
    use_files(monkeypatch, server, fashion_files())
    assert run(server, "fashion-mnist", tmp_path) == 0
    out = capsys.readouterr().out
    ds = utils.load_dataset("fashion-mnist", str(tmp_path))
    assert ds.train_x.shape == (N_TRAIN, 1, 28, 28) and ds.test_x.shape == (N_TEST, 1, 28, 28)
    assert sorted(os.listdir(tmp_path / "FashionMNIST")) == sorted(b + ".gz" for b in FASHION)
    assert server.requests == [(b + ".gz", None) for b in FASHION]
    for base in FASHION:  # one line per file with its size and time
        assert re.search(rf"{base}\.gz: [\d.]+ (?:B|KiB) in [\d.]+ s, MD5 verified", out)
    assert "\r" not in out


def test_fetch_cifar10_unpacks_for_the_loader(server, tmp_path, monkeypatch, capsys):
    use_files(monkeypatch, server, {CIFAR_TAR: cifar_tar()})
    assert run(server, "cifar10", tmp_path) == 0
    ds = utils.load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_x.shape == (2, 3, 32, 32)
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-batches-py", CIFAR_TAR]  # no temp dirs
    assert "unpacked to" in capsys.readouterr().out


# --- resuming --------------------------------------------------------------------------------


def fashion_part(root: Path, name: str, prefix: bytes) -> Path:
    """The Fashion-MNIST folder below ``root`` with ``prefix`` as an interrupted download of
    ``name`` (its ``.part`` file)."""
    folder = root / "FashionMNIST"
    folder.mkdir()
    (folder / (name + ".part")).write_bytes(prefix)
    return folder


def test_partial_download_is_resumed_with_a_range_request(server, tmp_path, monkeypatch, capsys):
    files = fashion_files()
    use_files(monkeypatch, server, files)
    half = len(files[TRAIN_IMAGES]) // 2
    folder = fashion_part(tmp_path, TRAIN_IMAGES, files[TRAIN_IMAGES][:half])
    assert run(server, "fashion-mnist", tmp_path) == 0
    assert server.seen(TRAIN_IMAGES) == [f"bytes={half}-"]
    assert (folder / TRAIN_IMAGES).read_bytes() == files[TRAIN_IMAGES]
    assert not (folder / (TRAIN_IMAGES + ".part")).exists()
    assert "resuming" in capsys.readouterr().out
    assert utils.load_dataset("fashion-mnist", str(tmp_path)).train_x.shape[0] == N_TRAIN


def test_dropped_connection_is_resumed_in_the_same_run(server, tmp_path, monkeypatch, capsys):
    tar = cifar_tar()
    use_files(monkeypatch, server, {CIFAR_TAR: tar})
    server.cut[CIFAR_TAR] = 1000
    assert run(server, "cifar10", tmp_path) == 0
    assert server.seen(CIFAR_TAR) == [None, "bytes=1000-"]
    assert (tmp_path / CIFAR_TAR).read_bytes() == tar
    assert "connection closed after" in capsys.readouterr().out
    assert utils.load_dataset("cifar10", str(tmp_path)).test_x.shape[0] == 2


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path, monkeypatch, capsys):
    files = fashion_files()
    use_files(monkeypatch, server, files)
    server.ignore_range.add(TRAIN_LABELS)
    folder = fashion_part(tmp_path, TRAIN_LABELS, files[TRAIN_LABELS][:10])
    assert run(server, "fashion-mnist", tmp_path) == 0
    assert server.seen(TRAIN_LABELS) == ["bytes=10-"]  # asked to resume, got a 200
    assert (folder / TRAIN_LABELS).read_bytes() == files[TRAIN_LABELS]  # not appended
    assert "ignored the range request" in capsys.readouterr().out


def test_wrong_checksum_after_resume_restarts_once(server, tmp_path, monkeypatch, capsys):
    files = fashion_files()
    use_files(monkeypatch, server, files)
    folder = fashion_part(tmp_path, TRAIN_IMAGES, b"not the right prefix")
    assert run(server, "fashion-mnist", tmp_path) == 0
    assert server.seen(TRAIN_IMAGES) == ["bytes=20-", None]
    assert (folder / TRAIN_IMAGES).read_bytes() == files[TRAIN_IMAGES]
    assert "starting once more from scratch" in capsys.readouterr().out


def test_complete_part_file_is_only_verified(server, tmp_path, monkeypatch):
    files = fashion_files()
    use_files(monkeypatch, server, files)
    folder = fashion_part(tmp_path, TRAIN_IMAGES, files[TRAIN_IMAGES])
    assert run(server, "fashion-mnist", tmp_path) == 0
    assert server.seen(TRAIN_IMAGES) == [f"bytes={len(files[TRAIN_IMAGES])}-"]  # answered 416
    assert (folder / TRAIN_IMAGES).read_bytes() == files[TRAIN_IMAGES]


# --- failures --------------------------------------------------------------------------------


def test_corrupt_download_is_rejected_and_deleted(server, tmp_path, monkeypatch, capsys):
    files = fashion_files()
    use_files(monkeypatch, server, files)
    server.corrupt.add(TRAIN_LABELS)
    assert run(server, "fashion-mnist", tmp_path) == fetch.EXIT_FAILED
    err = capsys.readouterr().err
    corrupt = files[TRAIN_LABELS][:-16] + bytes(16)
    assert TRAIN_LABELS in err and md5(files[TRAIN_LABELS]) in err and md5(corrupt) in err
    assert "checksum mismatch" in err and "Traceback" not in err
    left = os.listdir(tmp_path / "FashionMNIST")
    assert TRAIN_LABELS not in left and TRAIN_LABELS + ".part" not in left


def test_http_error_is_a_failure_naming_the_url(server, tmp_path, monkeypatch, capsys):
    use_files(monkeypatch, server, {})  # the server has nothing: 404
    assert run(server, "cifar10", tmp_path) == fetch.EXIT_FAILED
    err = capsys.readouterr().err
    assert "HTTP 404" in err and server.url + CIFAR_TAR in err


@pytest.mark.parametrize("data_filter", [True, False], ids=["data-filter", "own-checks"])
def test_archive_escaping_its_folder_is_refused(server, tmp_path, monkeypatch, capsys, data_filter):
    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    data_dir = tmp_path / "data"
    use_files(monkeypatch, server, {CIFAR_TAR: cifar_tar(extra={"../escaped.txt": b"x"})})
    assert run(server, "cifar10", data_dir) == fetch.EXIT_FAILED
    assert "escaped.txt" in capsys.readouterr().err
    assert not (data_dir / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert sorted(os.listdir(data_dir)) == [CIFAR_TAR]  # nothing unpacked, no temp dir left


# --- nothing to do ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_already_present_downloads_nothing(server, tmp_path, monkeypatch, capsys, name):
    use_files(monkeypatch, server, {**fashion_files(), CIFAR_TAR: cifar_tar()})
    assert run(server, name, tmp_path) == 0
    server.requests.clear()
    capsys.readouterr()
    assert run(server, name, tmp_path) == 0
    out = capsys.readouterr().out
    assert server.requests == []
    assert "already present and verified" in out and "nothing downloaded" in out


def test_missing_unpacked_batch_is_restored_without_downloading(server, tmp_path, monkeypatch):
    use_files(monkeypatch, server, {CIFAR_TAR: cifar_tar()})
    assert run(server, "cifar10", tmp_path) == 0
    server.requests.clear()
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    assert run(server, "cifar10", tmp_path) == 0
    assert server.requests == []
    assert utils.load_dataset("cifar10", str(tmp_path)).test_x.shape[0] == 2


# --- the command line, as a subprocess ----------------------------------------------------------


def test_cli_unreachable_host_is_exit_2_with_instructions(tmp_path) -> None:
    port = free_port()  # nothing listens there
    res = cli(["fashion-mnist", "-dd", str(tmp_path), "--mirror", f"http://127.0.0.1:{port}/"])
    assert res.returncode == fetch.EXIT_UNREACHABLE, res.stderr
    assert f"127.0.0.1:{port} is unreachable" in res.stderr
    assert "Nothing else in this project needs the network" in res.stderr
    assert str(tmp_path / "FashionMNIST") in res.stderr
    assert all(base + ".gz" in res.stderr for base in FASHION)
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_real_table_rejects_files_that_are_not_the_published_ones(server, tmp_path, how):
    """The real table's published MD5s, checked end to end through ``python -m data.fetch``."""
    server.files.update(fashion_files())
    args = ["fashion-mnist", "-dd", str(tmp_path)]
    env = {fetch.MIRROR_ENV: server.url} if how == "env" else {}
    res = cli(args + (["--mirror", server.url] if how == "flag" else []), **env)
    assert res.returncode == fetch.EXIT_FAILED, res.stdout + res.stderr
    generated = md5(server.files[TRAIN_IMAGES])
    assert TRAIN_IMAGES in res.stderr and generated in res.stderr
    assert "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in res.stderr
    assert "Traceback" not in res.stderr
    assert os.listdir(tmp_path / "FashionMNIST") == []
    assert server.seen(TRAIN_IMAGES) == [None]


def test_cli_bad_data_set_name_lists_the_choices(tmp_path) -> None:
    res = cli(["mnist", "-dd", str(tmp_path)])
    assert res.returncode == 2
    assert "invalid choice: 'mnist'" in res.stderr
    assert "'cifar10'" in res.stderr and "'fashion-mnist'" in res.stderr
    assert "Traceback" not in res.stderr and os.listdir(tmp_path) == []
