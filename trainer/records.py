"""Per-worker run records: meta.json once, then one JSON line per round (docs/log-format.md)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from trainer.layout import DROPPED_NAME, META_NAME, ROUNDS_NAME, TENSORBOARD_GLOB

if TYPE_CHECKING:
    from trainer.progress import ProgressReporter


class RunLog:
    """Writes meta.json and appends flushed lines to rounds.jsonl.

    ``resume`` continues a run from a checkpoint taken after round ``resume.round`` at
    ``resume.elapsed`` seconds of training: records of later rounds (work the restart threw
    away) move to rounds.dropped.jsonl, the checkpoint's round comes back from the
    checkpoint when its line is missing, and the time axis goes on from the checkpoint's
    time. Without ``resume``, earlier records in the folder move there too.

    ``reporter`` (trainer/progress.py) gets every record too, for the State Server's
    dashboard, and is told the run finished when the log is closed.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        meta: dict[str, Any],
        resume: Resume | None = None,
        reporter: ProgressReporter | None = None,
    ) -> None:
        self.reporter = reporter
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.resumed_at = resume.elapsed if resume else 0.0
        self.started_at = time.time() - self.resumed_at
        self.off_clock = 0.0
        self.meta = {**meta, "started_at": self.started_at}
        rounds_path = os.path.join(folder, ROUNDS_NAME)
        kept = self._keep_records(rounds_path, resume)
        if resume:
            self.meta["resumed"] = [*_old_meta(folder).get("resumed", []), resume.as_dict()]
        _write_json_atomically(os.path.join(folder, META_NAME), self.meta)
        self._rounds: IO[str] = open(rounds_path, "a")
        self.board = TensorBoardLog(folder, self.started_at, kept, resume is not None)

    def _keep_records(self, rounds_path: str, resume: Resume | None) -> list[dict[str, Any]]:
        """The earlier records this run goes on from (those up to the checkpoint's round;
        none when it starts afresh). The others are appended to rounds.dropped.jsonl, never
        lost: a restart that found no checkpoint (rank 0 on another host) wipes nothing."""
        upto = resume.round if resume else 0
        earlier = read_records(rounds_path) if os.path.exists(rounds_path) else []
        kept = [r for r in earlier if r.get("round", 0) <= upto]
        dropped = [r for r in earlier if r.get("round", 0) > upto]
        if resume and resume.record and not any(r.get("round") == upto for r in kept):
            kept.append(resume.record)  # killed after its checkpoint, before its record
        if dropped:
            with open(os.path.join(self.folder, DROPPED_NAME), "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in dropped)
        if earlier or resume:
            _write_lines(rounds_path, kept)
        return kept

    def elapsed(self) -> float:
        """Seconds of device time since this worker started training: wall time less what
        ``exclude`` took off the clock (rank 0's evaluations)."""
        return time.time() - self.started_at - self.off_clock

    def start_clock(self) -> None:
        """Training starts now (after the set-up, when every worker is ready)."""
        self.started_at = self.board.started_at = time.time() - self.resumed_at
        self.meta["started_at"] = self.started_at
        _write_json_atomically(os.path.join(self.folder, META_NAME), self.meta)

    def exclude(self, seconds: float) -> None:
        """Take ``seconds`` that were not device time off the clock."""
        self.off_clock += seconds

    def write(self, record: dict[str, Any]) -> None:
        """Append one round and flush it, so a killed process loses at most one line."""
        self._rounds.write(json.dumps(record) + "\n")
        self._rounds.flush()
        self.board.add(record)
        if self.reporter is not None:
            self.reporter.report(record)

    def close(self) -> None:
        self._rounds.close()
        self.board.close()
        if self.reporter is not None:
            self.reporter.finish(True)


class TensorBoardLog:
    """The records as TensorBoard scalars (step = round), event files next to rounds.jsonl.

    ``tensorboard --logdir logs`` shows one run per worker folder: ``test/accuracy`` and
    ``test/loss`` (rank 0's evaluations), ``worker/samples_per_s`` and
    ``worker/compute_time_ratio`` (since the start), ``worker/local_iterations`` per round and
    ``worker/slowdown``. A resumed run drops the events after its checkpoint (purge_step).
    """

    def __init__(
        self, folder: str | os.PathLike[str], started_at: float, kept: list[dict], resume: bool
    ) -> None:
        from tensorboardX import SummaryWriter

        if not resume:  # a fresh run in an old folder: its curves start from nothing
            for old in Path(folder).glob(TENSORBOARD_GLOB):
                old.unlink()
        purge = kept[-1]["round"] + 1 if resume and kept else None
        self.writer = SummaryWriter(logdir=str(folder), purge_step=purge, flush_secs=5)
        self.started_at = started_at
        self.samples = sum(r.get("samples", 0) for r in kept)
        self.compute = sum(r.get("compute_s", 0.0) for r in kept)

    def add(self, record: dict[str, Any]) -> None:
        """The scalars of one round's record."""
        step, seconds = record["round"], record["time"]
        wall = self.started_at + seconds
        self.samples += record.get("samples", 0)
        self.compute += record.get("compute_s", 0.0)
        scalars = {
            "worker/local_iterations": record.get("local_iterations", 1),
            "worker/samples_per_s": self.samples / seconds if seconds > 0 else 0.0,
            "worker/compute_time_ratio": self.compute / seconds if seconds > 0 else 0.0,
        }
        if "slowdown" in record:
            scalars["worker/slowdown"] = record["slowdown"]
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step, walltime=wall)
        if "test_acc" in record:  # at the round the evaluated parameters belong to
            at = record.get("eval_round", step)
            when = self.started_at + record.get("eval_time", seconds)
            self.writer.add_scalar("test/accuracy", record["test_acc"], at, walltime=when)
            self.writer.add_scalar("test/loss", record.get("test_loss", 0.0), at, walltime=when)

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class Resume:
    """Where a resumed worker continues: after ``round``, at ``elapsed`` s of training."""

    round: int
    elapsed: float
    checkpoint: str
    record: dict[str, Any] | None = None  # the checkpoint's copy of its round's record

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "elapsed": self.elapsed,
            "checkpoint": self.checkpoint,
            "at": time.time(),
        }


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete record of a rounds.jsonl (a torn last line is left out)."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _old_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, META_NAME)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _write_lines(path: str, records: list[dict[str, Any]]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def _write_json_atomically(path: str, obj: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


class RecordTail:
    """Reads the records appended to a rounds.jsonl since the last call (complete lines only)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        """The records written since the previous call; a half-written last line waits."""
        try:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < self.offset:
                    self.offset = 0  # rewritten (a resumed run dropped its lost rounds)
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = []
        for line in complete.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records
