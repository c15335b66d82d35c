"""Saved models and checkpoints (paths: trainer/layout.py; format: docs/log-format.md).

Every file is written to a temporary name and renamed, so a crash leaves either the old file
or the new one. A checkpoint after round N is three kinds of files in ``<mode-dir>/checkpoints``:
``round-N.params`` (rank 0: the global parameters and BatchNorm statistics, Gluon's
``save_parameters`` format), ``round-N.rank<r>.json`` (every worker: where its data order
stands, its training clock) and ``round-N.json`` (rank 0, written last: the description whose
presence marks the checkpoint complete). Only the newest ``keep`` checkpoints stay.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer import layout

# what must match between a checkpoint and the run that resumes from it
COMPATIBLE = (
    *("network", "dataset", "mode", "split", "num_workers", "input_size", "batch_size", "seed"),
)


class CheckpointError(Exception):
    """No usable checkpoint, or one of another run; the text names the file and the field."""


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """``obj`` as JSON at ``path``, atomically."""

    def dump(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)

    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, dump)


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
    """The network's parameters (Gluon format), then their description (the commit mark)."""
    params_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(params_path, net.save_parameters)
    write_json(info_path, info)


def check_compatible(found: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    """Refuse a checkpoint of another network, data set, mode, split or cluster size."""
    for key in COMPATIBLE:
        if key in expected and found.get(key) != expected[key]:
            raise CheckpointError(
                f"{where} is a checkpoint of {key}={found.get(key)!r}, this run has "
                f"{key}={expected[key]!r}: refusing to resume from it (start without --resume, "
                "or with a log dir whose checkpoints match)"
            )


class Checkpointer:
    """Writes this worker's part of a checkpoint every ``every`` rounds and at the end, and
    finds the one to resume from."""

    def __init__(self, folder: Path, rank: int, every: int, keep: int, run: dict[str, Any]) -> None:
        self.folder = folder
        self.rank = rank
        self.every = every
        self.keep = keep
        self.run = run  # the COMPATIBLE facts of this run, plus the command line

    def due(self, round_no: int, stop: bool) -> bool:
        """Every ``every`` rounds, and after the last one (0 turns checkpoints off)."""
        return self.every > 0 and (stop or round_no % self.every == 0)

    def write(self, round_no: int, elapsed: float, net: Any, worker: dict[str, Any]) -> None:
        """This worker's state; on rank 0 also the parameters and the description."""
        state = {**self.run, "round": round_no, "elapsed": elapsed, "rank": self.rank, **worker}
        write_json(layout.worker_state_file(self.folder, round_no, self.rank), state)
        if self.rank == 0:
            params, info = layout.checkpoint_files(self.folder, round_no)
            save_parameters(net, params, info, {**self.run, "round": round_no, "elapsed": elapsed})
        self.prune()

    def prune(self) -> None:
        """Delete this worker's files of all but the newest ``keep`` checkpoints."""
        rounds = sorted(self._own_rounds())
        for old in rounds[: max(0, len(rounds) - self.keep)]:
            files = [layout.worker_state_file(self.folder, old, self.rank)]
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

    def newest(self) -> int | None:
        """The newest round this worker can resume from (rank 0: a complete checkpoint)."""
        rounds = [r for r in self._own_rounds() if self._complete(r)]
        return rounds[-1] if rounds else None

    def _complete(self, round_no: int) -> bool:
        if self.rank != 0:
            return True
        params, info = layout.checkpoint_files(self.folder, round_no)
        return params.exists() and info.exists()

    def load(self, round_no: int, net: Any, ctx: Any) -> dict[str, Any]:
        """Load checkpoint ``round_no`` (rank 0: into ``net``); returns this worker's state,
        empty when it has none (it then starts its data order afresh, with a warning)."""
        if self.rank == 0:
            params, info_path = layout.checkpoint_files(self.folder, round_no)
            check_compatible(read_json(info_path), self.run, info_path)
            net.load_parameters(str(params), ctx=ctx)
        path = layout.worker_state_file(self.folder, round_no, self.rank)
        if not path.exists():
            print(f"warning: {path} missing: this worker's data order restarts", file=sys.stderr)
            return {}
        state = read_json(path)
        check_compatible(state, self.run, path)
        return state
