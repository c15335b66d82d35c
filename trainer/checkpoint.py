"""Saved models and checkpoints (paths: trainer/layout.py; format: docs/log-format.md).

Every file is written to a temporary name, fsynced, renamed, and its folder fsynced, so a
crash or a power loss leaves either the old file or the new one; a temporary file is removed
on every error. A checkpoint after round N is three kinds of files in
``<mode-dir>/checkpoints``: ``round-N.params`` (rank 0: the global parameters and BatchNorm
statistics, Gluon's ``save_parameters`` format), ``round-N.rank<r>.json`` (every worker: where
its data order stands, its training clock, the round's record, its algorithm's state) and
``round-N.json`` (rank 0, written last: the description whose presence marks the checkpoint
complete, with the SHA-256 of the ``.params``). A worker's arrays (control variates, velocity)
go in ``round-N.rank<r>.params``, with their SHA-256 in its ``.json``.

A checkpoint that does not verify (a truncated or corrupt file) is skipped, with a warning
naming it, and the one before it is used. Only the newest ``keep`` checkpoints stay.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer import layout

# what must match between a checkpoint and the run that resumes from it
COMPATIBLE = (
    *("network", "dataset", "mode", "split", "num_workers", "input_size", "batch_size", "seed"),
)
# the errors a restart cannot fix: no room to write
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MARGIN = 1 << 20  # a write that failed with less than this left: the disk is full


class CheckpointError(Exception):
    """No usable checkpoint, or one of another run; the text names the file and the field."""


class DiskFullError(CheckpointError):
    """A checkpoint or model could not be written for want of space (its own exit code: a
    restart would fail the same way)."""


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: str | os.PathLike[str], directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: Path, write: Callable[[str], None]) -> str:
    """Write ``path`` through a temporary file; returns the SHA-256 of what was written."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        _fsync(tmp)
        digest = sha256_of(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except Exception as exc:
        full = disk_full(exc, path.parent)  # before the partial file frees its space
        _remove(tmp)
        if full:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise DiskFullError(f"{path}: cannot write it, the disk is full ({reason})") from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    return digest


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC/EDQUOT from Python, or any
    error (MXNet's C++ writer says only "FileStream.Write incomplete") while less than
    ``DISK_FULL_MARGIN`` bytes are left."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_MARGIN
    except OSError:
        return False


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_json(path: Path, obj: dict[str, Any]) -> str:
    """``obj`` as JSON at ``path``, atomically and durably; returns its SHA-256."""

    def dump(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)

    path.parent.mkdir(parents=True, exist_ok=True)
    return _atomic(path, dump)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; CheckpointError naming the file when it is not one."""
    try:
        with open(path) as fh:
            obj = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return obj


def save_parameters(net: Any, params_path: Path, info_path: Path, info: dict[str, Any]) -> None:
    """The network's parameters (Gluon format), then their description with their SHA-256
    (the commit mark)."""
    params_path.parent.mkdir(parents=True, exist_ok=True)
    digest = _atomic(params_path, net.save_parameters)
    write_json(info_path, {**info, "params_sha256": digest})


def verify(path: Path, expected: str | None) -> None:
    """CheckpointError naming ``path`` when it is missing or its SHA-256 is not
    ``expected`` (None: an older checkpoint without one, taken as it is)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    if expected is not None and sha256_of(path) != expected:
        raise CheckpointError(
            f"{path}: its SHA-256 does not match the checkpoint's (truncated or corrupt)"
        )


def check_compatible(found: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    """Refuse a checkpoint of another network, data set, mode, split or cluster size."""
    for key in COMPATIBLE:
        if key in expected and found.get(key) != expected[key]:
            raise CheckpointError(
                f"{where} is a checkpoint of {key}={found.get(key)!r}, this run has "
                f"{key}={expected[key]!r}: refusing to resume from it (start without --resume, "
                "or with a log dir whose checkpoints match)"
            )


def check_hyperparameters(
    found: dict[str, Any], current: dict[str, Any], overrides: tuple[str, ...], where: Path
) -> list[str]:
    """Refuse a resume that changes a hyperparameter the checkpoint recorded, unless it is
    named in ``overrides`` (``--resume-override``); returns the overridden changes."""
    recorded = found.get("hyperparameters")
    if not isinstance(recorded, dict):
        return []  # an older checkpoint: nothing recorded to compare
    unknown = [name for name in overrides if name not in recorded]
    if unknown:
        raise CheckpointError(
            f"--resume-override {unknown[0]}: {where} records no such hyperparameter "
            f"(choose from {', '.join(sorted(recorded))})"
        )
    changed, refused = [], []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name), current.get(name)
        if old != new:
            (changed if name in overrides else refused).append((name, old, new))
    if refused:
        what = ", ".join(f"{name}={old!r} (this run: {new!r})" for name, old, new in refused)
        flags = " ".join(f"--resume-override {name}" for name, _, _ in refused)
        raise CheckpointError(
            f"{where} was trained with {what}: refusing to resume with other "
            f"hyperparameters (give {flags} to accept the change)"
        )
    return [f"{name} {old!r} -> {new!r}" for name, old, new in changed]


class Checkpointer:
    """Writes this worker's part of a checkpoint every ``every`` rounds and at the end, and
    finds the ones to resume from.

    ``hyperparameters`` are recorded in every part; a resume that changes one is refused
    unless it is in ``overrides`` (``--resume-override``).
    """

    def __init__(
        self,
        folder: Path,
        rank: int,
        every: int,
        keep: int,
        run: dict[str, Any],
        hyperparameters: dict[str, Any] | None = None,
        overrides: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder
        self.rank = rank
        self.every = every
        self.keep = keep
        self.run = run  # the COMPATIBLE facts of this run, plus the command line
        self.hyperparameters = dict(hyperparameters or {})
        self.overrides = overrides

    def due(self, round_no: int, stop: bool) -> bool:
        """Every ``every`` rounds, and after the last one (0 turns checkpoints off)."""
        return self.every > 0 and (stop or round_no % self.every == 0)

    def write(
        self,
        round_no: int,
        elapsed: float,
        net: Any,
        worker: dict[str, Any],
        save_arrays: Callable[[str], None] | None = None,
    ) -> None:
        """This worker's state (``save_arrays`` writes its arrays to the path it is given);
        on rank 0 also the parameters and, last, the description."""
        facts = {**self.run, "hyperparameters": self.hyperparameters}
        state = {**facts, "round": round_no, "elapsed": elapsed, "rank": self.rank, **worker}
        if save_arrays is not None:
            arrays = layout.worker_arrays_file(self.folder, round_no, self.rank)
            arrays.parent.mkdir(parents=True, exist_ok=True)
            state["arrays_sha256"] = _atomic(arrays, save_arrays)
        write_json(layout.worker_state_file(self.folder, round_no, self.rank), state)
        if self.rank == 0:
            params, info = layout.checkpoint_files(self.folder, round_no)
            save_parameters(net, params, info, {**facts, "round": round_no, "elapsed": elapsed})
        self.prune()

    def prune(self) -> None:
        """Delete this worker's files of all but the newest ``keep`` checkpoints."""
        rounds = sorted(self._own_rounds())
        for old in rounds[: max(0, len(rounds) - self.keep)]:
            files = [
                layout.worker_state_file(self.folder, old, self.rank),
                layout.worker_arrays_file(self.folder, old, self.rank),
            ]
            if self.rank == 0:
                files += list(layout.checkpoint_files(self.folder, old))
            for path in files:
                path.unlink(missing_ok=True)

    def _own_rounds(self) -> list[int]:
        if self.rank == 0:
            return layout.checkpoint_rounds(self.folder)
        suffix = f".rank{self.rank}.json"
        if not self.folder.is_dir():
            return []
        names = (p.name for p in self.folder.glob(f"round-*{suffix}"))
        return sorted(int(n[len("round-") : -len(suffix)]) for n in names)

    def usable(self) -> list[int]:
        """The rounds this worker can resume from, newest first: its part is complete and
        every file of it verifies. Each one skipped is named on stderr, with why."""
        good = []
        for round_no in reversed(self._own_rounds()):
            try:
                self.verify(round_no)
            except CheckpointError as exc:
                print(
                    f"warning: the checkpoint after round {round_no} is skipped: {exc}",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            good.append(round_no)
        return good

    def newest(self) -> int | None:
        """The newest round this worker can resume from."""
        usable = self.usable()
        return usable[0] if usable else None

    def verify(self, round_no: int) -> None:
        """CheckpointError naming the file when this worker's part of ``round_no`` is
        incomplete, unreadable or does not match its SHA-256."""
        if self.rank == 0:
            params, info = layout.checkpoint_files(self.folder, round_no)
            verify(params, read_json(info).get("params_sha256"))
        path = layout.worker_state_file(self.folder, round_no, self.rank)
        if self.rank != 0 or path.exists():  # rank 0's own part is optional (older runs)
            state = read_json(path)
            if "arrays_sha256" in state:
                arrays = layout.worker_arrays_file(self.folder, round_no, self.rank)
                verify(arrays, state["arrays_sha256"])

    def arrays_file(self, round_no: int) -> Path | None:
        """This worker's saved arrays of ``round_no``, when it saved any."""
        path = layout.worker_arrays_file(self.folder, round_no, self.rank)
        return path if path.exists() else None

    def load(self, round_no: int, net: Any, ctx: Any) -> dict[str, Any]:
        """Load checkpoint ``round_no`` (rank 0: into ``net``); returns this worker's state,
        empty when it has none (it then starts its data order afresh, with a warning)."""
        if self.rank == 0:
            params, info_path = layout.checkpoint_files(self.folder, round_no)
            self._check(read_json(info_path), info_path)
            net.load_parameters(str(params), ctx=ctx)
        path = layout.worker_state_file(self.folder, round_no, self.rank)
        if not path.exists():
            print(f"warning: {path} missing: this worker's data order restarts", file=sys.stderr)
            return {}
        state = read_json(path)
        self._check(state, path)
        return state

    def _check(self, found: dict[str, Any], where: Path) -> None:
        check_compatible(found, self.run, where)
        for change in check_hyperparameters(found, self.hyperparameters, self.overrides, where):
            print(f"warning: --resume-override: {change}", file=sys.stderr, flush=True)


def newest_held_by_all(candidates: list[float], holders: list[float], workers: int) -> int:
    """The newest of rank 0's ``candidates`` (rounds, newest first; 0 pads) that all
    ``workers`` hold (``holders[i]``: how many hold ``candidates[i]``); 0 when none is."""
    for round_no, count in zip(candidates, holders, strict=True):
        if round_no > 0 and round(count) == workers:
            return int(round_no)
    return 0
