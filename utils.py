"""Data sets, worker partitioning and batching for the ESync reproduction.

Everything here is plain numpy: the training code converts batches to MXNet arrays itself.
Data files are read from a local directory only; training never downloads anything
(see ``data/README.md`` for where each data set goes).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10")
NUM_CLASSES = 10

_NO_DOWNLOAD = (
    "Training never downloads data: fetch it once with `python -m data.fetch <name>` "
    "(make data), or see data/README.md for where to put the files."
)


class DatasetError(Exception):
    """A data set cannot be loaded (missing or corrupt files); the message says why."""


@dataclass(frozen=True)
class Dataset:
    """A loaded data set: float32 NCHW images in [0, 1] and int32 labels 0..9."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(
                    f"{self.name} {split}: expected x (N, C, H, W) and y (N,), "
                    f"got {x.shape} and {y.shape}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(
                f"{self.name}: train images {self.train_x.shape[1:]} and test images "
                f"{self.test_x.shape[1:]} differ in shape"
            )

    @property
    def channels(self) -> int:
        """Number of image channels (1 or 3)."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Native side length of the (square) images, e.g. 28 or 32."""
        return int(self.train_x.shape[2])


def load_dataset(name: str, data_dir: str, seed: int = 42) -> Dataset:
    """Load data set ``name`` (one of ``DATASETS``) from ``data_dir``; never downloads.

    ``seed`` only affects ``digits``, whose train/test split is drawn here.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "digits":
        return _load_digits(seed)
    if key == "fashion-mnist":
        return _load_fashion_mnist(data_dir)
    if key == "cifar10":
        return _load_cifar10(data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


# --- digits (bundled with scikit-learn) -----------------------------------------------------


def _load_digits(seed: int, test_fraction: float = 0.2) -> Dataset:
    """sklearn's 8x8 digits, upsampled to 28x28, with a seeded stratified split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a pinned dependency
        raise DatasetError(
            "the 'digits' data set needs scikit-learn, which is not installed"
        ) from exc
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (N, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int32)
    x = resize_batch(images[:, None, :, :], 28)

    rng = np.random.default_rng(seed)
    test_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = max(1, int(round(test_fraction * len(members))))
        test_parts.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test_parts))
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_idx] = False
    train_idx = np.flatnonzero(train_mask)
    return Dataset(
        name="digits",
        train_x=np.ascontiguousarray(x[train_idx]),
        train_y=labels[train_idx],
        test_x=np.ascontiguousarray(x[test_idx]),
        test_y=labels[test_idx],
    )


# --- Fashion-MNIST (idx files) --------------------------------------------------------------

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_FASHION_DIRS = ("FashionMNIST", "fashion-mnist", os.path.join("FashionMNIST", "raw"))
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _idx_candidates(base: str) -> list[str]:
    """File names accepted for one idx file: gzipped or raw, dash or dot before 'idx'."""
    dotted = base.replace("-idx", ".idx")
    return [base + ".gz", base, dotted + ".gz", dotted]


def _find_in(directory: str, base: str) -> str | None:
    for candidate in _idx_candidates(base):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_idx(path: str, expected_magic: int) -> np.ndarray:
    """Parse one idx file (optionally gzipped) into a uint8 array of its declared shape."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if path.endswith(".gz") or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path} is not a valid gzip file ({exc}); re-extract it") from exc
    if len(raw) < 4:
        raise DatasetError(f"{path} is truncated: {len(raw)} bytes, too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == _IDX_IMAGES_MAGIC else "labels"
        raise DatasetError(
            f"{path} has wrong magic number 0x{magic:08x} (expected 0x{expected_magic:08x} "
            f"for idx {kind}); is it the right file?"
        )
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: header needs {header} bytes, file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) < expected:
        raise DatasetError(
            f"{path} is truncated: header declares shape {dims} ({expected} bytes), "
            f"file has {len(raw)} bytes"
        )
    if len(raw) > expected:
        raise DatasetError(
            f"{path} is corrupt: {len(raw) - expected} unexpected bytes after the {dims} payload"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_fashion_mnist(data_dir: str) -> Dataset:
    dirs = [os.path.join(data_dir, d) for d in _FASHION_DIRS]
    chosen = None
    for directory in dirs:
        if any(_find_in(directory, base) for base in _FASHION_FILES.values()):
            chosen = directory
            break
    expected_names = ", ".join(b + ".gz" for b in _FASHION_FILES.values())
    if chosen is None:
        raise DatasetError(
            "Fashion-MNIST files not found. Searched: " + ", ".join(dirs) + ". "
            f"Expected: {expected_names} (uncompressed files without .gz also work). "
            + _NO_DOWNLOAD
        )
    paths = {key: _find_in(chosen, base) for key, base in _FASHION_FILES.items()}
    missing = [_FASHION_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise DatasetError(
            f"Fashion-MNIST is incomplete in {chosen}: missing {', '.join(missing)}. "
            f"Expected all of: {expected_names}. " + _NO_DOWNLOAD
        )

    arrays = {}
    for split in ("train", "test"):
        px, py = paths[f"{split}_x"], paths[f"{split}_y"]
        images = _read_idx(px, _IDX_IMAGES_MAGIC)
        labels = _read_idx(py, _IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise DatasetError(
                f"count mismatch: {px} holds {len(images)} images but {py} holds "
                f"{len(labels)} labels"
            )
        if images.shape[1] != images.shape[2]:
            raise DatasetError(f"{px}: expected square images, got {images.shape[1:]}")
        if labels.size and labels.max() >= NUM_CLASSES:
            raise DatasetError(f"{py}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
        arrays[f"{split}_x"] = (images.astype(np.float32) / 255.0)[:, None, :, :]
        arrays[f"{split}_y"] = labels.astype(np.int32)
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        raise DatasetError(
            f"Fashion-MNIST in {chosen}: train images {arrays['train_x'].shape[2:]} and test "
            f"images {arrays['test_x'].shape[2:]} differ in size"
        )
    return Dataset(name="fashion-mnist", **arrays)


# --- CIFAR-10 (python pickle batches) -------------------------------------------------------

_CIFAR_DIRS = (os.path.join("CIFAR10", "cifar-10-batches-py"), "cifar-10-batches-py")
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_PIXELS = 3 * 32 * 32

# Globals a CIFAR batch may reference: numpy's array reconstruction, plus the bytes codec
# that Python 3 uses for ``bytes`` in protocol-2 pickles. Nothing else is ever imported.
_PICKLE_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction."""

    def find_class(self, module: str, name: str) -> object:
        if module.startswith("numpy._core"):  # pickles written by numpy >= 2
            module = "numpy.core" + module[len("numpy._core") :]
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _get(batch: dict, key: str) -> object:
    if key.encode() in batch:
        return batch[key.encode()]
    if key in batch:
        return batch[key]
    raise KeyError(key)


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 pickle batch into uint8 (N, 3072) data and int32 labels."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types on garbage input
        raise DatasetError(
            f"{path} is not a readable CIFAR-10 pickle batch "
            f"({type(exc).__name__}: {exc}); re-extract cifar-10-python.tar.gz"
        ) from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    try:
        data = np.asarray(_get(batch, "data"))
        labels = np.asarray(_get(batch, "labels"))
    except KeyError as exc:
        raise DatasetError(f"{path}: batch dict has no {exc.args[0]!r} entry") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise DatasetError(
            f"{path}: expected uint8 data of shape (N, {_CIFAR_PIXELS}), "
            f"got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if labels.size and (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= NUM_CLASSES
    ):
        raise DatasetError(f"{path}: labels must be integers in 0..{NUM_CLASSES - 1}")
    return data, labels.astype(np.int32)


def _cifar_to_float(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack batches into float32 (N, 3, 32, 32) in [0, 1] without a second full copy."""
    total = sum(len(d) for d, _ in batches)
    x = np.empty((total, 3, 32, 32), dtype=np.float32)
    pos = 0
    for data, _ in batches:
        n = len(data)
        np.divide(data.reshape(n, 3, 32, 32), np.float32(255), out=x[pos : pos + n])
        pos += n
    y = np.concatenate([labels for _, labels in batches]).astype(np.int32)
    return x, y


def _load_cifar10(data_dir: str) -> Dataset:
    dirs = [os.path.join(data_dir, d) for d in _CIFAR_DIRS]
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    chosen = next((d for d in dirs if any(os.path.isfile(os.path.join(d, n)) for n in names)), None)
    if chosen is None:
        raise DatasetError(
            "CIFAR-10 files not found. Searched: " + ", ".join(dirs) + ". "
            f"Expected the python batches {', '.join(names)} "
            "(extracted from cifar-10-python.tar.gz). " + _NO_DOWNLOAD
        )
    missing = [n for n in names if not os.path.isfile(os.path.join(chosen, n))]
    if missing:
        raise DatasetError(
            f"CIFAR-10 is incomplete in {chosen}: missing {', '.join(missing)}. "
            f"Expected all of: {', '.join(names)}. " + _NO_DOWNLOAD
        )
    train_x, train_y = _cifar_to_float(
        [_read_cifar_batch(os.path.join(chosen, n)) for n in _CIFAR_TRAIN]
    )
    test_x, test_y = _cifar_to_float([_read_cifar_batch(os.path.join(chosen, _CIFAR_TEST))])
    return Dataset("cifar10", train_x, train_y, test_x, test_y)


# --- partitioning ---------------------------------------------------------------------------


def partition(
    labels: np.ndarray, num_workers: int, rank: int, split_by_class: bool, seed: int = 42
) -> np.ndarray:
    """Indices (int64) of worker ``rank``'s shard of a training set with these labels.

    iid: a seeded permutation of all indices (identical on every worker for the same seed)
    cut into ``num_workers`` equal contiguous shards. ``split_by_class`` (non-iid): the
    indices stably sorted by label, cut the same way, so each shard holds few classes.
    Each shard has ``len(labels) // num_workers`` samples; the remainder is dropped.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if int(num_workers) != num_workers or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if int(rank) != rank or not 0 <= rank < num_workers:
        raise ValueError(f"rank must be in [0, {num_workers}), got {rank!r}")
    shard = len(labels) // num_workers
    if shard == 0:
        raise ValueError(f"cannot split {len(labels)} samples among {num_workers} workers")
    if split_by_class:
        order = np.argsort(labels, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(len(labels))
    return order[rank * shard : (rank + 1) * shard].astype(np.int64)


# --- resizing and batching ------------------------------------------------------------------


@lru_cache(maxsize=32)
def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, half-pixel centres (like PIL / OpenCV)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    m = m.astype(np.float32)
    m.flags.writeable = False
    return m


def resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resize an NCHW batch to ``size`` x ``size`` (float32, values kept in range).

    Returns ``x`` itself (as float32) when it already has that size.
    """
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW batch, got shape {x.shape}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[2], x.shape[3]
    if h == size and w == size:
        return x
    if x.size == 0:
        return np.zeros((*x.shape[:2], size, size), dtype=np.float32)
    out = _interp_matrix(h, size) @ (x @ _interp_matrix(w, size).T)
    # Weights sum to 1, so only float rounding can leave the input range; clip that away.
    np.clip(out, x.min(), x.max(), out=out)
    return out


class BatchIterator:
    """Endless iterator over one shard: reshuffles every epoch and yields ``(x, y)`` batches.

    Every batch has exactly ``batch_size`` samples: when an epoch runs out the batch is
    completed from the next epoch's order (nothing is dropped). ``take(n)`` draws a batch of
    another size from the same stream. Epoch ``e`` is shuffled with
    ``np.random.default_rng([seed, e])``; pass ``seed = base_seed + rank`` so workers differ.
    Images are resized to ``size`` when it differs from their native size. ``epoch`` counts
    completed passes over the shard.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        seed: int,
        size: int | None = None,
    ) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        if x.ndim != 4 or len(x) != len(y):
            raise ValueError(f"expected x (N, C, H, W) and y (N,), got {x.shape} and {y.shape}")
        if indices.ndim != 1 or len(indices) == 0:
            raise ValueError("indices must be a non-empty 1-D array")
        if indices.min() < 0 or indices.max() >= len(x):
            raise ValueError(f"indices must lie in [0, {len(x)})")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.x = x
        self.y = y
        self.indices = indices
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.size = size
        self.epoch = 0
        self._order = self._shuffled(0)
        self._pos = 0

    def _shuffled(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed % 2**64, epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def __iter__(self) -> BatchIterator:
        return self

    def state(self) -> dict[str, int]:
        """Where the iterator stands (epoch, position); ``restore`` continues from there."""
        return {"epoch": self.epoch, "pos": self._pos}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a ``state()``: the same batches follow as after that call."""
        epoch, pos = int(state["epoch"]), int(state["pos"])
        if epoch < 0 or not 0 <= pos < len(self.indices):
            raise ValueError(f"iterator state out of range: {state}")
        self.epoch, self._order, self._pos = epoch, self._shuffled(epoch), pos

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.take(self.batch_size)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` samples of the order (any n >= 1; ``next()`` takes ``batch_size``).

        A smaller batch consumes only its samples: the next batch starts right after them,
        so the data order (and every epoch's shuffle) is the same as with full batches.
        """
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        parts = []
        need = int(n)
        while need > 0:
            take = self._order[self._pos : self._pos + need]
            parts.append(take)
            need -= len(take)
            self._pos += len(take)
            if self._pos == len(self._order):
                self.epoch += 1
                self._order = self._shuffled(self.epoch)
                self._pos = 0
        idx = parts[0] if len(parts) == 1 else np.concatenate(parts)
        bx = np.asarray(self.x[idx], dtype=np.float32)
        if self.size is not None and self.size != bx.shape[-1]:
            bx = resize_batch(bx, self.size)
        return bx, np.asarray(self.y[idx], dtype=np.int32)


def test_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, size: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """In-order ``(x, y)`` batches over a whole split; the last one may be short."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(x), batch_size):
            bx = np.asarray(x[start : start + batch_size], dtype=np.float32)
            if size is not None and size != bx.shape[-1]:
                bx = resize_batch(bx, size)
            yield bx, np.asarray(y[start : start + batch_size], dtype=np.int32)

    return gen()


test_batches.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
