"""The run folder layout, written and parsed here only (format: docs/log-format.md).

    <log_dir>/<network>/<mode-dir>/<host>/<device>-rank<r>/meta.json, rounds.jsonl, events.*
    <log_dir>/<network>/<mode-dir>/summary.json
    <log_dir>/<network>/<mode-dir>/model.params, model.json           (the final model)
    <log_dir>/<network>/<mode-dir>/checkpoints/round-<N>.params, .json   (rank 0)
    <log_dir>/<network>/<mode-dir>/checkpoints/round-<N>.rank<r>.json    (every worker)
    <log_dir>/<network>/<mode-dir>/checkpoints/round-<N>.rank<r>.params  (a worker with arrays)
    <log_dir>/processes/<network>/<mode-dir>/<process>.log, pids.json

``<mode-dir>`` is the mode's registry name, with ``-niid`` appended for the split-by-class
partition (``-s 1``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

META_NAME = "meta.json"
ROUNDS_NAME = "rounds.jsonl"
DROPPED_NAME = "rounds.dropped.jsonl"  # records a restart did not go on from (kept, not lost)
SUMMARY_NAME = "summary.json"
PIDS_NAME = "pids.json"
PROCESSES_DIR = "processes"
TENSORBOARD_GLOB = "events.out.tfevents.*"  # tensorboardX's event files in a worker folder
MODEL_PARAMS = "model.params"
MODEL_INFO = "model.json"
CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^round-(?P<round>\d{8})\.json$")
SPLITS = ("iid", "niid")
_NIID_SUFFIX = "-niid"
_WORKER_RE = re.compile(r"^(?P<device>.+)-rank(?P<rank>\d+)$")


def mode_dir_name(mode: str, split_by_class: bool) -> str:
    """``esync`` or ``esync-niid``."""
    return mode + (_NIID_SUFFIX if split_by_class else "")


def split_of(mode_dir: str) -> str:
    """``iid`` or ``niid`` of a mode-dir name."""
    return "niid" if mode_dir.endswith(_NIID_SUFFIX) else "iid"


def mode_of(mode_dir: str) -> str:
    """The mode name of a mode-dir name (``esync-niid`` -> ``esync``)."""
    return mode_dir.removesuffix(_NIID_SUFFIX)


def same_split(mode: str, like: str) -> str:
    """The mode-dir of ``mode`` with the split of the mode-dir ``like``."""
    return mode_dir_name(mode, split_of(like) == "niid")


def mode_dir_names(modes: Iterable[str]) -> list[str]:
    """Every mode-dir name of ``modes``: the iid ones first, then the non-iid ones."""
    modes = list(modes)
    return [mode_dir_name(m, split == "niid") for split in SPLITS for m in modes]


def mode_dir(log_dir: str | os.PathLike[str], network: str, mode_dir: str) -> Path:
    """``<log_dir>/<network>/<mode-dir>``."""
    return Path(log_dir) / network / mode_dir


def worker_dir(
    log_dir: str | os.PathLike[str], network: str, mode_dir_: str, host: str, device: str, rank: int
) -> Path:
    """``<log_dir>/<network>/<mode-dir>/<host>/<device>-rank<r>``."""
    return mode_dir(log_dir, network, mode_dir_) / host / f"{device}-rank{rank}"


def process_dir(log_dir: str | os.PathLike[str], network: str, mode_dir_: str) -> Path:
    """``<log_dir>/processes/<network>/<mode-dir>``: one log file per process, pids.json."""
    return Path(log_dir) / PROCESSES_DIR / network / mode_dir_


def checkpoint_dir(mode_dir_path: str | os.PathLike[str]) -> Path:
    """``<mode-dir>/checkpoints``."""
    return Path(mode_dir_path) / CHECKPOINTS_DIR


def checkpoint_files(folder: str | os.PathLike[str], round_no: int) -> tuple[Path, Path]:
    """(parameters, description) of the checkpoint after round ``round_no``."""
    stem = Path(folder) / f"round-{round_no:08d}"
    return stem.with_suffix(".params"), stem.with_suffix(".json")


def worker_state_file(folder: str | os.PathLike[str], round_no: int, rank: int) -> Path:
    """One worker's own part of a checkpoint (its data order position, its clock)."""
    return Path(folder) / f"round-{round_no:08d}.rank{rank}.json"


def worker_arrays_file(folder: str | os.PathLike[str], round_no: int, rank: int) -> Path:
    """One worker's arrays in a checkpoint (its algorithm's state: control variates,
    velocity), MXNet's NDArray format."""
    return Path(folder) / f"round-{round_no:08d}.rank{rank}.params"


def checkpoint_rounds(folder: str | os.PathLike[str]) -> list[int]:
    """Rounds of the checkpoints in ``folder`` (by their description file), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = (_CHECKPOINT_RE.match(p.name) for p in folder.iterdir())
    return sorted(int(m["round"]) for m in found if m)


@dataclass(frozen=True)
class WorkerDir:
    """One worker's record folder and what its path says."""

    path: Path
    host: str
    device: str
    rank: int

    @property
    def rounds(self) -> Path:
        return self.path / ROUNDS_NAME

    @property
    def meta(self) -> Path:
        return self.path / META_NAME


def parse_worker_dir(path: str | os.PathLike[str]) -> WorkerDir:
    """Host, device and rank of ``<host>/<device>-rank<r>`` (device = name, rank 0 if odd)."""
    path = Path(path)
    match = _WORKER_RE.match(path.name)
    device, rank = (match["device"], int(match["rank"])) if match else (path.name, 0)
    return WorkerDir(path, path.parent.name, device, rank)


def worker_dirs(mode_dir_path: str | os.PathLike[str], host: str = "*") -> list[WorkerDir]:
    """Every worker folder below a mode folder (of one host, or all), sorted by path."""
    found = sorted(p for p in Path(mode_dir_path).glob(f"{host}/*-rank*") if p.is_dir())
    return [parse_worker_dir(p) for p in found]
