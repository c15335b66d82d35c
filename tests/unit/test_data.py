"""Tests for utils.py: loaders on real-format files built in tmp_path, partitioning, batching."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

import utils
from utils import BatchIterator, Dataset, DatasetError, load_dataset, partition, resize_batch

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
FASHION_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


# --- helpers that write the real on-disk formats ---------------------------------------------


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    """Encode a uint8 array as an idx file: big-endian magic, dims, raw payload."""
    header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fashion(
    folder: Path, n_train: int = 7, n_test: int = 3, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train_x"][0] = 255  # make sure the extremes map to exactly 0 and 1
    arrays["train_x"][1] = 0
    folder.mkdir(parents=True, exist_ok=True)
    for key, base in FASHION_NAMES.items():
        data = idx_bytes(arrays[key], IMAGES_MAGIC if key.endswith("x") else LABELS_MAGIC)
        if gz:
            (folder / (base + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / base).write_bytes(data)
    return arrays


def write_cifar(
    folder: Path, sizes: tuple[int, ...] = (3, 4, 2, 5, 3, 4), seed: int = 0, protocol: int = 2
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write data_batch_1..5 and test_batch (sizes[5]) like cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name, n in zip(names, sizes, strict=True):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = (data, np.array(labels))
    return written


# --- Fashion-MNIST ----------------------------------------------------------------------------


def test_fashion_gz_round_trip(tmp_path: Path) -> None:
    arrays = write_fashion(tmp_path / "FashionMNIST", gz=True)
    ds = load_dataset("fashion-mnist", str(tmp_path))
    assert ds.name == "fashion-mnist"
    assert ds.train_x.shape == (7, 1, 28, 28) and ds.test_x.shape == (3, 1, 28, 28)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
    assert ds.channels == 1 and ds.image_size == 28
    np.testing.assert_array_equal(ds.train_x[:, 0], arrays["train_x"].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.test_x[:, 0], arrays["test_x"].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.train_y, arrays["train_y"])
    np.testing.assert_array_equal(ds.test_y, arrays["test_y"])
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0


def test_fashion_raw_files_upstream_folder_and_dot_variant(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    arrays = write_fashion(folder, gz=False, seed=3)
    os.rename(folder / "t10k-images-idx3-ubyte", folder / "t10k-images.idx3-ubyte")
    ds = load_dataset("fashion-mnist", str(tmp_path))
    np.testing.assert_array_equal(ds.test_x[:, 0], arrays["test_x"].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.train_y, arrays["train_y"])


def test_fashion_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST") in msg and str(tmp_path / "fashion-mnist") in msg
    for base in FASHION_NAMES.values():
        assert base in msg
    assert "never downloads" in msg


def _corrupt_wrong_magic(folder: Path) -> str:
    name = "train-images-idx3-ubyte.gz"
    labels = np.zeros(7, dtype=np.uint8)
    (folder / name).write_bytes(gzip.compress(idx_bytes(labels, LABELS_MAGIC)))
    return name


def _corrupt_truncated(folder: Path) -> str:
    name = "train-images-idx3-ubyte.gz"
    data = gzip.decompress((folder / name).read_bytes())
    (folder / name).write_bytes(gzip.compress(data[:-100]))
    return name


def _corrupt_truncated_header(folder: Path) -> str:
    name = "t10k-labels-idx1-ubyte.gz"
    (folder / name).write_bytes(gzip.compress(struct.pack(">I", LABELS_MAGIC) + b"\x00\x00"))
    return name


def _corrupt_garbage_gzip(folder: Path) -> str:
    name = "t10k-images-idx3-ubyte.gz"
    (folder / name).write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    return name


def _corrupt_truncated_gzip(folder: Path) -> str:
    name = "train-labels-idx1-ubyte.gz"
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: len(raw) // 2])
    return name


def _corrupt_count_mismatch(folder: Path) -> str:
    name = "train-labels-idx1-ubyte.gz"
    labels = np.zeros(6, dtype=np.uint8)  # 7 images
    (folder / name).write_bytes(gzip.compress(idx_bytes(labels, LABELS_MAGIC)))
    return name


def _corrupt_trailing_bytes(folder: Path) -> str:
    name = "t10k-labels-idx1-ubyte.gz"
    data = gzip.decompress((folder / name).read_bytes())
    (folder / name).write_bytes(gzip.compress(data + b"\x00" * 5))
    return name


def _corrupt_bad_label(folder: Path) -> str:
    name = "t10k-labels-idx1-ubyte.gz"
    labels = np.array([1, 2, 12], dtype=np.uint8)
    (folder / name).write_bytes(gzip.compress(idx_bytes(labels, LABELS_MAGIC)))
    return name


@pytest.mark.parametrize(
    "corrupt, phrase",
    [
        (_corrupt_wrong_magic, "magic"),
        (_corrupt_truncated, "truncated"),
        (_corrupt_truncated_header, "truncated"),
        (_corrupt_garbage_gzip, "gzip"),
        (_corrupt_truncated_gzip, "gzip"),
        (_corrupt_count_mismatch, "mismatch"),
        (_corrupt_trailing_bytes, "unexpected bytes"),
        (_corrupt_bad_label, "label 12"),
    ],
)
def test_fashion_corrupt_files(tmp_path: Path, corrupt, phrase: str) -> None:
    folder = tmp_path / "FashionMNIST"
    write_fashion(folder)
    name = corrupt(folder)
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", str(tmp_path))
    msg = str(err.value)
    assert name in msg and phrase in msg


# --- CIFAR-10 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout, protocol",
    [("CIFAR10/cifar-10-batches-py", 2), ("cifar-10-batches-py", pickle.HIGHEST_PROTOCOL)],
)
def test_cifar_round_trip(tmp_path: Path, layout: str, protocol: int) -> None:
    written = write_cifar(tmp_path / layout, protocol=protocol)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.name == "cifar10" and ds.channels == 3 and ds.image_size == 32
    assert ds.train_x.shape == (17, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_x.dtype == np.float32 and ds.test_y.dtype == np.int32
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.train_y, train_labels)
    np.testing.assert_array_equal(ds.test_y, written["test_batch"][1])
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    i, c, r, col = 5, 2, 7, 19
    pixel = np.float32(train_data[i, c * 1024 + r * 32 + col]) / np.float32(255)
    assert ds.train_x[i, c, r, col] == pixel
    expected = train_data.reshape(-1, 3, 32, 32).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.train_x, expected)
    test_expected = written["test_batch"][0].reshape(-1, 3, 32, 32).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.test_x, test_expected)
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0


def test_cifar_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "CIFAR10" / "cifar-10-batches-py") in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "data_batch_5" in msg and "test_batch" in msg
    assert "never downloads" in msg


@pytest.mark.parametrize(
    ("dataset", "folder_name", "missing", "listed"),
    [  # listed: a file the message names too, as part of the full expected set
        (
            "fashion-mnist",
            "FashionMNIST",
            "t10k-labels-idx1-ubyte.gz",
            "train-images-idx3-ubyte.gz",
        ),
        ("cifar10", "cifar-10-batches-py", "data_batch_4", None),
    ],
)
def test_one_missing_file_is_named(
    tmp_path: Path, dataset: str, folder_name: str, missing: str, listed: str | None
) -> None:
    folder = tmp_path / folder_name
    (write_fashion if dataset == "fashion-mnist" else write_cifar)(folder)
    (folder / missing).unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(dataset, str(tmp_path))
    msg = str(err.value)
    assert str(folder) in msg and f"missing {missing.removesuffix('.gz')}" in msg
    assert listed is None or listed in msg


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def _pickled(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


@pytest.mark.parametrize(
    "payload, phrase",
    [
        (b"this is not a pickle at all", "not a readable"),
        (
            _pickled({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})[:-40],
            "not a readable",
        ),
        (b"", "not a readable"),
        (_pickled([1, 2, 3]), "dict"),
        (_pickled({b"labels": [1, 2]}), "data"),
        (_pickled({b"data": np.zeros((2, 1000), np.uint8), b"labels": [1, 2]}), "3072"),
        (_pickled({b"data": np.zeros((2, 3072), np.float64), b"labels": [1, 2]}), "uint8"),
        (_pickled({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2, 3]}), "labels"),
        (_pickled({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}), "labels"),
        (_pickled({b"data": _Evil(), b"labels": []}), "refusing"),
    ],
)
def test_cifar_corrupt_batches(tmp_path: Path, payload: bytes, phrase: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").write_bytes(payload)
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", str(tmp_path))
    msg = str(err.value)
    assert "data_batch_3" in msg and phrase in msg


# --- digits and the dispatcher ----------------------------------------------------------------


def test_digits_shapes_range_classes_and_determinism(tmp_path: Path) -> None:
    ds = load_dataset("digits", str(tmp_path))  # needs no files at all
    assert ds.name == "digits" and ds.channels == 1 and ds.image_size == 28
    assert ds.train_x.shape[1:] == (1, 28, 28) and ds.test_x.shape[1:] == (1, 28, 28)
    assert len(ds.train_x) + len(ds.test_x) == 1797
    assert 0.18 < len(ds.test_x) / 1797 < 0.22
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
    for x in (ds.train_x, ds.test_x):
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
    assert set(np.unique(ds.train_y)) == set(range(10)) == set(np.unique(ds.test_y))
    # stratified: every class has ~20% of its samples in the test split
    frac = np.bincount(ds.test_y, minlength=10) / (
        np.bincount(ds.test_y, minlength=10) + np.bincount(ds.train_y, minlength=10)
    )
    assert np.all(np.abs(frac - 0.2) < 0.02)

    again = load_dataset("digits", str(tmp_path))
    np.testing.assert_array_equal(again.test_x, ds.test_x)
    np.testing.assert_array_equal(again.train_y, ds.train_y)
    other = load_dataset("digits", str(tmp_path), seed=7)
    assert not np.array_equal(other.test_x, ds.test_x)


def test_unknown_dataset_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet", str(tmp_path))
    for name in utils.DATASETS:
        assert name in str(err.value)


def test_dataset_rejects_mismatched_arrays() -> None:
    x = np.zeros((3, 1, 28, 28), np.float32)
    with pytest.raises(ValueError):
        Dataset("bad", x, np.zeros(2, np.int32), x, np.zeros(3, np.int32))


# --- partitioning -----------------------------------------------------------------------------


@pytest.mark.parametrize("n, workers", [(100, 1), (100, 3), (101, 4), (1438, 7), (10, 10)])
@pytest.mark.parametrize("split_by_class", [False, True])
def test_partition_properties(n: int, workers: int, split_by_class: bool) -> None:
    labels = np.random.default_rng(n).integers(0, 10, n).astype(np.int32)
    shards = [partition(labels, workers, r, split_by_class, seed=5) for r in range(workers)]
    for s in shards:
        assert s.dtype == np.int64 and len(s) == n // workers
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union)  # disjoint
    assert n - len(union) == n % workers < workers  # covers all but the remainder
    assert union.min() >= 0 and union.max() < n
    if split_by_class:
        for s in shards:
            shard_labels = labels[s]
            assert np.all(np.diff(shard_labels) >= 0)  # contiguous class blocks
        # concatenated in rank order the shards are the stably label-sorted indices
        np.testing.assert_array_equal(union, np.argsort(labels, kind="stable")[: len(union)])


def test_partition_non_iid_gives_few_classes_per_worker() -> None:
    labels = np.repeat(np.arange(10), 10)
    np.random.default_rng(0).shuffle(labels)
    for rank in range(5):
        shard = partition(labels, 5, rank, split_by_class=True)
        assert sorted(set(labels[shard])) == [2 * rank, 2 * rank + 1]


def test_partition_iid_is_seeded_and_mixed() -> None:
    labels = np.repeat(np.arange(10), 50)
    a = partition(labels, 4, 1, split_by_class=False, seed=3)
    np.testing.assert_array_equal(a, partition(labels, 4, 1, split_by_class=False, seed=3))
    assert not np.array_equal(a, partition(labels, 4, 1, split_by_class=False, seed=4))
    assert not np.all(np.diff(a) > 0)  # shuffled, not a plain range
    assert len(set(labels[a])) == 10


@pytest.mark.parametrize("workers, rank", [(0, 0), (-1, 0), (3, 3), (3, -1), (2, 5)])
def test_partition_rejects_bad_rank_or_workers(workers: int, rank: int) -> None:
    with pytest.raises(ValueError):
        partition(np.zeros(10), workers, rank, split_by_class=False)


def test_partition_rejects_more_workers_than_samples() -> None:
    with pytest.raises(ValueError):
        partition(np.zeros(3), 4, 0, split_by_class=False)


# --- batching ---------------------------------------------------------------------------------


def _tracked_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels encode their index, and 'labels' equal to the index."""
    x = np.repeat(np.arange(n, dtype=np.float32) / n, 64).reshape(n, 1, 8, 8)
    return x, np.arange(n, dtype=np.int32)


@pytest.mark.parametrize("shard_size, batch_size", [(40, 8), (37, 8), (5, 8), (12, 12)])
def test_batch_iterator_sizes_coverage_and_epochs(shard_size: int, batch_size: int) -> None:
    x, y = _tracked_data(100)
    indices = np.arange(100, dtype=np.int64)[3 : 3 + 2 * shard_size : 2]  # non-trivial shard
    it = BatchIterator(x, y, indices, batch_size, seed=11)
    assert iter(it) is it and it.epoch == 0
    n_epochs = 3
    n_batches = -(-n_epochs * shard_size // batch_size) + 1
    seen = []
    for _ in range(n_batches):
        bx, by = next(it)
        assert bx.shape == (batch_size, 1, 8, 8) and by.shape == (batch_size,)
        assert bx.dtype == np.float32 and by.dtype == np.int32
        np.testing.assert_array_equal(bx[:, 0, 0, 0], x[by, 0, 0, 0])  # x and y stay paired
        seen.extend(by.tolist())
    assert it.epoch == len(seen) // shard_size
    for e in range(n_epochs):
        block = seen[e * shard_size : (e + 1) * shard_size]
        assert sorted(block) == sorted(indices.tolist())  # each epoch covers the shard once
    if shard_size > 1:
        assert seen[:shard_size] != seen[shard_size : 2 * shard_size]  # reshuffled


def test_batch_iterator_seeded_order() -> None:
    x, y = _tracked_data(50)
    idx = np.arange(50)

    def first_labels(seed: int) -> list[int]:
        it = BatchIterator(x, y, idx, 10, seed=seed)
        return np.concatenate([next(it)[1] for _ in range(5)]).tolist()

    assert first_labels(1) == first_labels(1)
    assert first_labels(1) != first_labels(2)


def test_batch_iterator_resizes() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 20).astype(np.int32)
    it = BatchIterator(x, y, np.arange(20), 4, seed=0, size=224)
    bx, by = next(it)
    assert bx.shape == (4, 1, 224, 224) and bx.dtype == np.float32
    assert bx.min() >= 0.0 and bx.max() <= 1.0
    native = BatchIterator(x, y, np.arange(20), 4, seed=0, size=28)
    assert next(native)[0].shape == (4, 1, 28, 28)


def test_batch_iterator_rejects_bad_arguments() -> None:
    x, y = _tracked_data(10)
    with pytest.raises(ValueError):
        BatchIterator(x, y, np.arange(10), 0, seed=0)
    with pytest.raises(ValueError):
        BatchIterator(x, y, np.array([], dtype=np.int64), 4, seed=0)
    with pytest.raises(ValueError):
        BatchIterator(x, y, np.array([3, 10]), 4, seed=0)


def test_test_batches_in_order_with_short_tail() -> None:
    x, y = _tracked_data(23)
    batches = list(utils.test_batches(x, y, 5))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    resized = next(utils.test_batches(x, y, 4, size=32))[0]
    assert resized.shape == (4, 1, 32, 32)
    with pytest.raises(ValueError):
        utils.test_batches(x, y, 0)


# --- resizing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, size", [((2, 1, 28, 28), 224), ((3, 3, 32, 32), 299)])
def test_resize_batch_shape_and_range(shape: tuple[int, ...], size: int) -> None:
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    x[0, 0, 0, 0], x[0, 0, 1, 1] = 0.0, 1.0
    out = resize_batch(x, size)
    assert out.shape == (*shape[:2], size, size) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # upsampling by bilinear interpolation keeps each channel's mean roughly unchanged
    np.testing.assert_allclose(out.mean(axis=(2, 3)), x.mean(axis=(2, 3)), atol=0.02)


def test_resize_batch_values() -> None:
    x = np.array([[[[0.0, 1.0], [1.0, 0.0]]]], dtype=np.float32)
    out = resize_batch(x, 4)
    # half-pixel centres: the outer ring copies the nearest source pixel's row/column mix
    assert out[0, 0, 0, 0] == 0.0 and out[0, 0, 0, 3] == 1.0 and out[0, 0, 3, 0] == 1.0
    np.testing.assert_allclose(out[0, 0, 1, 1], 0.375)  # 0.75*0.75*0 + 2*0.75*0.25*1 + ...
    const = np.full((2, 3, 8, 8), 0.7, dtype=np.float32)
    np.testing.assert_allclose(resize_batch(const, 224), 0.7, rtol=0, atol=1e-6)
    same = resize_batch(const, 8)
    assert same.shape == const.shape and np.array_equal(same, const)
    down = resize_batch(np.random.default_rng(2).random((1, 1, 32, 32), dtype=np.float32), 8)
    assert down.shape == (1, 1, 8, 8)


def test_resize_batch_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        resize_batch(np.zeros((28, 28), np.float32), 32)
    with pytest.raises(ValueError):
        resize_batch(np.zeros((1, 1, 28, 28), np.float32), 0)
