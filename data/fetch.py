"""Download Fashion-MNIST or CIFAR-10 into the data folder, checked against the published MD5s.

    python -m data.fetch fashion-mnist   # data/FashionMNIST/{train,t10k}-*-ubyte.gz
    python -m data.fetch cifar10         # data/cifar-10-python.tar.gz, unpacked to
                                         # data/cifar-10-batches-py/
    python -m data.fetch cifar10 -dd /elsewhere --mirror http://host/path/

This is the only part of the project that uses the network (``utils.load_dataset`` only reads
files, exactly where this puts them). Each file is downloaded to ``<name>.part`` and renamed
once its MD5 matches the published one; a ``.part`` left by an interrupted run is resumed
with an HTTP range request. Files already present with the right MD5 are not downloaded again.
``--mirror URL`` (or ``$ESYNC_DATA_MIRROR``) fetches the same file names from another base URL.

Exit status: 0 done; 1 a file failed (checksum mismatch, HTTP error, bad archive, local I/O);
2 the server is unreachable (or a usage error).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from typing import IO

import config
from argtypes import http_url

EXIT_FAILED = 1
EXIT_UNREACHABLE = 2
MIRROR_ENV = "ESYNC_DATA_MIRROR"
TIMEOUT_S = 30.0  # per connect / read; a stalled transfer counts as a dropped one
MAX_TRANSFERS = 5  # per file: a transfer that breaks off is resumed this many times in all
CHUNK = 1 << 16
USER_AGENT = "esync-data-fetch/1.0 (Python urllib)"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name (on the server and on disk), URL and published MD5."""

    name: str
    url: str
    md5: str


@dataclass(frozen=True)
class Source:
    """A data set's files and where they go: ``folder`` under the data dir ("" = the data
    dir itself). An archive with ``unpack_to`` set is unpacked next to itself, and that
    folder must then hold the ``unpacked`` files."""

    title: str
    folder: str
    files: tuple[RemoteFile, ...]
    unpack_to: str = ""
    unpacked: tuple[str, ...] = ()


# Fashion-MNIST: URLs and MD5s are the "Get the Data" table of Zalando's README,
# https://github.com/zalandoresearch/fashion-mnist#get-the-data (torchvision's
# datasets.FashionMNIST.resources lists the same URLs and MD5s). The bucket serves plain http.
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# CIFAR-10: URL and MD5 ("CIFAR-10 python version ... md5sum") from the data set's page,
# https://www.cs.toronto.edu/~kriz/cifar.html (torchvision's datasets.CIFAR10 uses the same).
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"

# The table: data set name (as in utils.DATASETS) -> where its files come from and go.
SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(
        title="Fashion-MNIST",
        folder="FashionMNIST",  # the first folder utils._load_fashion_mnist searches
        files=tuple(RemoteFile(n, _FASHION_URL + n, md5) for n, md5 in _FASHION_MD5.items()),
    ),
    "cifar10": Source(
        title="CIFAR-10",
        folder="",
        files=(RemoteFile("cifar-10-python.tar.gz", _CIFAR_URL, _CIFAR_MD5),),
        unpack_to="cifar-10-batches-py",
        unpacked=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    ),
}


class FetchError(Exception):
    """A file could not be fetched, verified or unpacked (exit 1); the message says why."""


class Unreachable(Exception):
    """The server cannot be reached (exit 2)."""

    def __init__(self, url: str, reason: object) -> None:
        self.host = urllib.parse.urlsplit(url).netloc or url
        self.reason = reason
        super().__init__(f"{self.host} is unreachable ({reason})")


class _Dropped(Exception):
    """A transfer broke off; what arrived is kept in the .part file and can be resumed."""


def _say(message: str) -> None:
    print(message, flush=True)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def md5_of(path: str) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_url(remote: RemoteFile, mirror: str | None) -> str:
    """The official URL, or the same file name under ``mirror`` (a base URL) when given."""
    return mirror.rstrip("/") + "/" + remote.name if mirror else remote.url


# --- one HTTP transfer ---------------------------------------------------------------------


def _open(url: str, offset: int) -> http.client.HTTPResponse | None:
    """GET ``url`` (from byte ``offset`` on, if > 0); None when nothing is left to send."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # range not satisfiable: the .part is whole (or longer)
            return None
        raise FetchError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise Unreachable(url, exc.reason) from None
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(url, exc) from None


def _header_int(response: http.client.HTTPResponse, name: str, pattern: str) -> int | None:
    match = re.fullmatch(pattern, (response.headers.get(name) or "").strip())
    return int(match.group(1)) if match else None


def _copy(response: IO[bytes], fh: IO[bytes], name: str, done: int, total: int | None) -> int:
    """Copy the body into ``fh`` (a live progress line only on a terminal); bytes copied."""
    live = sys.stderr.isatty()
    got, shown = 0, 0.0
    try:
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Dropped(f"the transfer broke off after {_size(got)} ({exc})") from None
            if not block:
                return got
            fh.write(block)
            got += len(block)
            if live and time.monotonic() - shown >= 0.2:
                shown = time.monotonic()
                sys.stderr.write(f"\r  {name}: {_size(done + got)} of {_size(total)}\033[K")
    finally:
        if live:
            sys.stderr.write("\r\033[K")


def _transfer(url: str, part: str, name: str) -> bool:
    """One request for what ``part`` still lacks (all of it when absent).

    True when the bytes were appended to an earlier partial download (HTTP 206), False when
    ``part`` now holds one whole response (a server that ignores ``Range`` answers 200).
    """
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    response = _open(url, offset)
    if response is None:
        return True
    with response:
        append = offset > 0 and response.status == 206
        start = _header_int(response, "Content-Range", r"bytes (\d+)-\d+/(?:\d+|\*)")
        if append and start != offset:
            os.remove(part)
            raise _Dropped(f"the server sent another range ({response.headers['Content-Range']})")
        if offset and not append:
            _say(
                f"{name}: the server ignored the range request (HTTP {response.status}); "
                "restarting from scratch"
            )
        elif append:
            _say(f"{name}: resuming after the {_size(offset)} already downloaded")
        length = _header_int(response, "Content-Length", r"(\d+)")
        done = offset if append else 0
        total = None if length is None else done + length
        with open(part, "ab" if append else "wb") as fh:
            got = _copy(response, fh, name, done, total)
    if length is not None and got < length:
        raise _Dropped(f"the connection closed after {_size(got)} of {_size(length)}")
    return append


def _download(url: str, part: str, name: str) -> bool:
    """Fetch ``url`` into ``part``, resuming ``part`` if present and after a dropped
    connection; True when the result was assembled from more than one transfer."""
    transfers = 1
    while True:
        try:
            return _transfer(url, part, name)
        except _Dropped as exc:
            if transfers == MAX_TRANSFERS:
                raise Unreachable(url, f"{exc}; gave up after {transfers} attempts") from None
            transfers += 1
            _say(f"{name}: {exc}; trying again")


# --- one file, one data set ----------------------------------------------------------------


def _fetch_file(remote: RemoteFile, folder: str, url: str) -> bool:
    """Make ``folder/<name>`` a copy with the published MD5; True if anything was downloaded."""
    path = os.path.join(folder, remote.name)
    if os.path.isfile(path):
        got = md5_of(path)
        if got == remote.md5:
            _say(f"{remote.name}: already present, MD5 verified")
            return False
        _say(f"{remote.name}: present but its MD5 is {got}, not {remote.md5}; downloading again")
        os.remove(path)
    part = path + ".part"
    started = time.monotonic()
    resumed = _download(url, part, remote.name)
    got = md5_of(part)
    if got != remote.md5 and resumed:
        _say(
            f"{remote.name}: MD5 {got} after resuming, expected {remote.md5}; "
            "deleting the partial download and starting once more from scratch"
        )
        os.remove(part)
        _download(url, part, remote.name)
        got = md5_of(part)
    if got != remote.md5:
        os.remove(part)
        raise FetchError(
            f"{remote.name}: checksum mismatch, expected MD5 {remote.md5}, got {got} "
            f"(downloaded from {url}); the file was deleted"
        )
    os.replace(part, path)
    seconds = time.monotonic() - started
    _say(f"{remote.name}: {_size(os.path.getsize(path))} in {seconds:.1f} s, MD5 verified")
    return True


def _extract(tar: tarfile.TarFile, dest: str) -> None:
    """Extract with the "data" filter (no absolute paths, no ``..``, no links out, no
    devices); on Pythons without it, only plain files and folders inside ``dest``."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = os.path.realpath(dest)
    for member in tar.getmembers():
        target = os.path.realpath(os.path.join(root, member.name))
        if not (member.isfile() or member.isdir()) or os.path.commonpath([root, target]) != root:
            raise FetchError(f"refusing to unpack {member.name!r}: not a plain file inside {dest}")
    tar.extractall(dest)  # every member was checked above


def _unpack(archive: str, source: Source) -> str:
    """Unpack ``archive`` next to itself (via a temporary folder); the unpacked folder."""
    folder = os.path.dirname(archive)
    target = os.path.join(folder, source.unpack_to)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=folder)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            _extract(tar, tmp)
        unpacked = os.path.join(tmp, source.unpack_to)
        missing = [n for n in source.unpacked if not os.path.isfile(os.path.join(unpacked, n))]
        if missing:
            raise FetchError(f"{archive} holds no {source.unpack_to}/{', '.join(missing)}")
        os.makedirs(target, exist_ok=True)
        for entry in os.listdir(unpacked):
            if os.path.isdir(os.path.join(target, entry)):
                shutil.rmtree(os.path.join(target, entry))
            os.replace(os.path.join(unpacked, entry), os.path.join(target, entry))
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise FetchError(f"cannot unpack {archive}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(f"{os.path.basename(archive)}: unpacked to {target}")
    return target


def target_folder(source: Source, data_dir: str) -> str:
    """Where a data set's downloaded files go."""
    return os.path.join(data_dir, source.folder) if source.folder else data_dir


def fetch(name: str, data_dir: str, mirror: str | None = None) -> str:
    """Download (or resume, or verify) data set ``name`` into ``data_dir``; the folder that
    ``utils.load_dataset(name, data_dir)`` will read. Raises FetchError or Unreachable."""
    source = SOURCES[name]
    folder = target_folder(source, data_dir)
    os.makedirs(folder, exist_ok=True)
    _say(f"{source.title}: {folder}")
    downloaded = [_fetch_file(f, folder, file_url(f, mirror)) for f in source.files]
    ready = folder
    if source.unpack_to:
        ready = os.path.join(folder, source.unpack_to)
        whole = all(os.path.isfile(os.path.join(ready, n)) for n in source.unpacked)
        if any(downloaded) or not whole:
            for remote in source.files:
                _unpack(os.path.join(folder, remote.name), source)
            downloaded.append(True)
    if any(downloaded):
        _say(f"{source.title}: ready in {ready}")
    else:
        _say(f"{source.title}: already present and verified in {ready}; nothing downloaded")
    return ready


# --- command line --------------------------------------------------------------------------


def _unreachable_message(exc: Unreachable, name: str, data_dir: str) -> str:
    source = SOURCES[name]
    folder = target_folder(source, data_dir)
    again = f"python -m data.fetch {name}"
    if os.path.abspath(data_dir) != os.path.abspath(config.DATA_DIR):
        again += f" -dd {data_dir}"
    lines = [
        f"error: cannot download {source.title}: the host {exc}.",
        "Nothing else in this project needs the network: training, `make run` and the tests use",
        "the bundled digits data set, and the loaders only read files from the data folder.",
        f"To place the files by hand, download them elsewhere and copy them to {folder}/",
        *(f"    {f.name:<28} MD5 {f.md5}  from {f.url}" for f in source.files),
    ]
    if source.unpack_to:
        archive = source.files[0].name
        lines.append(
            f"then run `{again}` to verify and unpack it into "
            f"{os.path.join(folder, source.unpack_to)}/ (or unpack it yourself: "
            f"tar -xzf {archive} -C {folder})."
        )
    else:
        lines.append(f"then run `{again}` to verify them (nothing is downloaded if all are right).")
    if any(os.path.isfile(os.path.join(folder, f.name + ".part")) for f in source.files):
        lines.append("Partial downloads (*.part) are kept and resumed by the next run.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data.fetch",
        description="Download a data set's official files into the data folder, verify their "
        "published MD5s (resuming partial downloads), and unpack CIFAR-10.",
    )
    p.add_argument(
        "datasets",
        nargs="+",
        choices=sorted(SOURCES),
        metavar="DATASET",
        help=f"one or more of: {', '.join(sorted(SOURCES))}",
    )
    p.add_argument(
        "-dd",
        "--data-dir",
        dest="data_dir",
        default=config.DATA_DIR,
        help="data folder, as main.py's -dd (default: %(default)s)",
    )
    p.add_argument(
        "--mirror",
        type=http_url,
        default=None,
        help=f"base URL to fetch the same file names from (default: ${MIRROR_ENV}, "
        "else the official sources)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mirror = args.mirror
    if mirror is None and os.environ.get(MIRROR_ENV):
        try:
            mirror = http_url(os.environ[MIRROR_ENV])
        except argparse.ArgumentTypeError as exc:
            parser.error(f"${MIRROR_ENV}: {exc}")
    for name in args.datasets:
        try:
            fetch(name, args.data_dir, mirror)
        except Unreachable as exc:
            print(_unreachable_message(exc, name, args.data_dir), file=sys.stderr)
            return EXIT_UNREACHABLE
        except (FetchError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print(
                "interrupted; partial downloads (*.part) are resumed by the next run",
                file=sys.stderr,
            )
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
