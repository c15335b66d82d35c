"""Training progress as the workers report it: the dashboard's data. Django-free.

Every worker, in every mode, posts its finished rounds to ``POST /progress/`` (the client is
``trainer/progress.py``); the launcher may post a run message (announce a run, or mark it
failed). This module parses both strictly (:func:`decode_body`, :func:`parse_progress`: every
malformed input is a :class:`ProgressError` naming the field, with the HTTP status to answer)
and keeps what the dashboard shows in a :class:`ProgressStore`, with bounded memory: at most
``max_points`` points per series (older points are averaged in pairs), ``max_workers`` workers
per run, ``max_runs`` runs. The store has its own lock; it never touches the Alg. 2 dispatcher
or its state (progress is not on the hot path).

A worker's message (``records``: the rounds finished since its previous message, at most
``config.PROGRESS_MAX_RECORDS``; ``totals``: sums over every round this worker reported, so
that rates and time shares survive dropped messages and a State Server restart)::

    {"msg_type": "progress", "run": "lenet/esync", "mode": "esync", "num_workers": 4,
     "rank": 1, "host": "node-a", "device": "cpu", "started": 1764496000.0,
     "state": "running", "slowdown": 4.0, "epsilon": 0.0, "rounds": 200, "max_time": 60.0,
     "dropped": 0,
     "totals": {"rounds": 12, "samples": 2304, "compute_s": 2.1, "wait_s": 0.1,
                "query_s": 0.05, "comm_s": 0.6, "eval_s": 0.0},
     "records": [{"round": 12, "time": 3.5, "local_iterations": 3, "samples": 192,
                  "compute_s": 0.09, "slowdown": 4.0, "overruns": 0,
                  "test_acc": 0.91, "test_loss": 0.3, "eval_time": 3.1}]}

A record's ``overruns`` (device emulation only) counts its batches that missed their emulated
deadline: the dashboard shows each worker's share of batches on time and the run's fidelity.
``eval_time`` (only with ``test_acc``) is the device time of the round whose parameters were
evaluated; the curves plot the accuracy and loss there (else at the record's ``time``).

``state`` is ``running``, ``finished`` (its last message) or ``failed`` (with ``error``).
A run message (the launcher)::

    {"msg_type": "run", "run": "lenet/esync", "mode": "esync", "num_workers": 4,
     "rounds": 200, "max_time": 60.0, "failed": "worker 2 exited with code 1"}

Every field but ``msg_type`` is optional there; without ``run`` it applies to the most
recently updated run. A worker message or an announcement for a run that has FINISHED or
FAILED starts that run afresh (a new run under the same name).
"""

from __future__ import annotations

import json
import math
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import config

RUNNING, FINISHED, FAILED, STALE, STARTING = "running", "finished", "failed", "stale", "starting"
WORKER_STATES = (RUNNING, FINISHED, FAILED)
MAX_INT = 2**53
MAX_SECONDS = 1e12  # any duration (s); a record's time, a timer total
MAX_UNIX_TIME = 1e11
MAX_FACTOR = 1e6  # slowdown, epsilon (s), test loss
MAX_RUN_ID = 100
MAX_NAME = 253  # host names; mode and device are shorter
MAX_ERROR = 1000
TIMERS = ("compute_s", "wait_s", "query_s", "comm_s", "eval_s")
RECORD_FIELDS = (
    "round",
    "time",
    "local_iterations",
    "samples",
    "compute_s",
    "slowdown",
    "test_acc",
    "test_loss",
    "eval_time",
    "overruns",
)
SHARES = (  # the time split of the dashboard's bar: label and the timers it sums
    ("computing", ("compute_s",)),
    ("communicating", ("comm_s", "query_s")),
    ("evaluating", ("eval_s",)),
    ("waiting", ("wait_s",)),
)


class ProgressError(ValueError):
    """A malformed or refused progress message; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundPoint:
    """One finished round of one worker (a subset of its rounds.jsonl record)."""

    round: int
    time: float
    local_iterations: int
    samples: int
    compute_s: float
    slowdown: float | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    eval_time: float | None = None  # device time of the evaluated round (with test_acc)
    overruns: int | None = None  # batches that missed their deadline (device emulation)


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over every round a worker reported since it started."""

    rounds: int = 0
    samples: int = 0
    compute_s: float = 0.0
    wait_s: float = 0.0
    query_s: float = 0.0
    comm_s: float = 0.0
    eval_s: float = 0.0

    @property
    def busy_s(self) -> float:
        """The rounds' wall time: every second of a round is in exactly one timer."""
        return self.compute_s + self.wait_s + self.query_s + self.comm_s + self.eval_s


@dataclass(frozen=True, slots=True)
class ProgressMsg:
    """A worker's report: who it is, its state, its totals and its newest rounds."""

    run: str
    mode: str
    num_workers: int
    rank: int
    host: str
    device: str
    started: float
    state: str = RUNNING
    error: str | None = None
    slowdown: float | None = None
    epsilon: float | None = None
    rounds: int | None = None
    max_time: float | None = None
    dropped: int = 0
    totals: Totals = Totals()
    records: tuple[RoundPoint, ...] = ()


@dataclass(frozen=True, slots=True)
class RunMsg:
    """The launcher's word on a run: announce it (mode, size, budget) and/or mark it failed."""

    run: str | None = None
    failed: str | None = None
    mode: str | None = None
    num_workers: int | None = None
    rounds: int | None = None
    max_time: float | None = None
    epsilon: float | None = None


# --- strict parsing ----------------------------------------------------------------------

Check = Callable[[str, object], Any]


def _show(value: object) -> str:
    """Short, safe rendering of a bad value for an error message."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "an array"
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else None
    text = text or type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def integer(lo: int, hi: int) -> Check:
    def check(name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProgressError(f"field '{name}' must be an integer, got {_show(value)}")
        if not lo <= value <= hi:
            raise ProgressError(f"field '{name}' must be in [{lo}, {hi}], got {value}")
        return value

    return check


def number(lo: float, hi: float) -> Check:
    def check(name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProgressError(f"field '{name}' must be a number, got {_show(value)}")
        value = float(value)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ProgressError(f"field '{name}' must be in [{lo:g}, {hi:g}], got {value:g}")
        return value

    return check


def text(max_len: int) -> Check:
    def check(name: str, value: object) -> str:
        if not isinstance(value, str):
            raise ProgressError(f"field '{name}' must be a string, got {_show(value)}")
        if not 1 <= len(value) <= max_len:
            raise ProgressError(f"field '{name}' must have 1 to {max_len} characters")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ProgressError(f"field '{name}' must not contain control characters")
        return value

    return check


def choice(options: tuple[str, ...]) -> Check:
    def check(name: str, value: object) -> str:
        if value not in options:
            raise ProgressError(
                f"field '{name}' must be one of {', '.join(options)}, got {_show(value)}"
            )
        return str(value)

    return check


def _fields(
    obj: object, where: str, required: Mapping[str, Check], optional: Mapping[str, Check]
) -> dict[str, Any]:
    """The checked fields of a JSON object: every required one, no unknown one."""
    if not isinstance(obj, dict):
        raise ProgressError(f"{where} must be a JSON object, got {_show(obj)}")
    missing = [name for name in required if name not in obj]
    if missing:
        raise ProgressError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise ProgressError(f"{where}: unexpected field(s) {', '.join(map(repr, unknown))}")
    prefix = "" if where == "progress message" or where == "run message" else f"{where}."
    checks = {**required, **optional}
    return {name: checks[name](prefix + name, value) for name, value in obj.items()}


_COUNT = integer(0, MAX_INT)
_SECONDS = number(0.0, MAX_SECONDS)
_RECORD_REQUIRED = {
    "round": _COUNT,
    "time": _SECONDS,
    "local_iterations": _COUNT,
    "samples": _COUNT,
    "compute_s": _SECONDS,
}
_RECORD_OPTIONAL = {
    "slowdown": number(0.0, MAX_FACTOR),
    "test_acc": number(0.0, 1.0),
    "test_loss": number(0.0, MAX_FACTOR),
    "eval_time": _SECONDS,
    "overruns": _COUNT,
}
_TOTALS = {"rounds": _COUNT, "samples": _COUNT, **{name: _SECONDS for name in TIMERS}}
_BUDGET = {
    "epsilon": number(0.0, MAX_FACTOR),
    "rounds": _COUNT,
    "max_time": _SECONDS,
}


def _records(value: object) -> tuple[RoundPoint, ...]:
    limit = config.PROGRESS_MAX_RECORDS
    if not isinstance(value, list):
        raise ProgressError(f"field 'records' must be an array, got {_show(value)}")
    if len(value) > limit:
        raise ProgressError(f"field 'records' has {len(value)} rounds; at most {limit} per message")
    return tuple(
        RoundPoint(**_fields(item, f"records[{i}]", _RECORD_REQUIRED, _RECORD_OPTIONAL))
        for i, item in enumerate(value)
    )


def _worker_count(name: str, value: object) -> int:
    limit = config.PROGRESS_MAX_WORKERS
    count = integer(1, MAX_INT)(name, value)
    if count > limit:
        raise ProgressError(
            f"field '{name}' is {count}; the dashboard tracks at most {limit} workers per run "
            "(config.PROGRESS_MAX_WORKERS)"
        )
    return count


_PROGRESS_REQUIRED: dict[str, Check] = {
    "run": text(MAX_RUN_ID),
    "mode": text(40),
    "num_workers": _worker_count,
    "rank": _COUNT,
    "host": text(MAX_NAME),
    "device": text(40),
    "started": number(0.0, MAX_UNIX_TIME),
    "totals": lambda name, value: Totals(**_fields(value, name, _TOTALS, {})),
    "records": lambda name, value: _records(value),
}
_PROGRESS_OPTIONAL: dict[str, Check] = {
    "state": choice(WORKER_STATES),
    "error": text(MAX_ERROR),
    "slowdown": number(0.0, MAX_FACTOR),
    "dropped": _COUNT,
    **_BUDGET,
}
_RUN_OPTIONAL: dict[str, Check] = {
    "run": text(MAX_RUN_ID),
    "failed": text(MAX_ERROR),
    "mode": text(40),
    "num_workers": _worker_count,
    **_BUDGET,
}


def parse_progress(obj: object) -> ProgressMsg | RunMsg:
    """A decoded JSON body as a worker's :class:`ProgressMsg` or the launcher's
    :class:`RunMsg` (``msg_type`` ``progress`` or ``run``)."""
    if not isinstance(obj, dict):
        raise ProgressError(f"the body must be a JSON object, got {_show(obj)}")
    body = dict(obj)
    kind = body.pop("msg_type", None)
    if kind == "run":
        run = RunMsg(**_fields(body, "run message", {}, _RUN_OPTIONAL))
        if run.run is None and run.failed is None:
            raise ProgressError("run message: name the run ('run') or give 'failed'")
        return run
    if kind != "progress":
        what = "missing" if kind is None else f"{_show(kind)}"
        raise ProgressError(f"field 'msg_type' must be progress or run, got {what}")
    msg = ProgressMsg(**_fields(body, "progress message", _PROGRESS_REQUIRED, _PROGRESS_OPTIONAL))
    if msg.rank >= msg.num_workers:
        raise ProgressError(f"rank {msg.rank} out of range: num_workers is {msg.num_workers}")
    if msg.error is not None and msg.state != FAILED:
        raise ProgressError("field 'error' goes only with state 'failed'")
    return msg


def _reject_constant(name: str) -> float:
    raise ProgressError(f"body is not valid JSON: {name} is not a number in JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ProgressError(f"body is not valid JSON: duplicate key {key!r}")
        out[key] = value
    return out


def decode_body(body: bytes) -> object:
    """A request body as strict JSON: at most PROGRESS_MAX_BODY_BYTES (else 413), UTF-8,
    no NaN / Infinity, no duplicate keys."""
    limit = config.PROGRESS_MAX_BODY_BYTES
    if len(body) > limit:
        raise ProgressError(f"body of {len(body)} bytes exceeds {limit} bytes", status=413)
    if not body.strip():
        raise ProgressError("body is empty; expected a JSON object")
    try:
        return json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates
        )
    except UnicodeDecodeError as exc:
        raise ProgressError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise ProgressError("body is not valid JSON: nested too deeply") from None
    except ProgressError:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer literal with too many digits
        raise ProgressError(f"body is not valid JSON: {exc}") from None


# --- bounded series ----------------------------------------------------------------------


class Series:
    """At most ``max_points`` (x, y) points of a growing series, evenly spread over all of it.

    Points are means of buckets of ``stride`` consecutive values; when the series is full,
    neighbouring buckets are averaged in pairs and ``stride`` doubles. The newest raw value
    is kept besides, so a curve always ends at the latest value.
    """

    __slots__ = ("max_points", "xs", "ys", "stride", "_sx", "_sy", "_n", "last")

    def __init__(self, max_points: int) -> None:
        if max_points < 3:
            raise ValueError("a series needs room for at least 3 points")
        self.max_points = max_points
        self.xs, self.ys = array("d"), array("d")
        self.stride = 1
        self._sx = self._sy = 0.0
        self._n = 0
        self.last: tuple[float, float] | None = None

    def add(self, x: float, y: float) -> None:
        self.last = (x, y)
        self._sx += x
        self._sy += y
        self._n += 1
        if self._n < self.stride:
            return
        self.xs.append(self._sx / self._n)
        self.ys.append(self._sy / self._n)
        self._sx = self._sy = 0.0
        self._n = 0
        if len(self.xs) >= self.max_points - 1:  # keep room for the newest raw point
            self._halve()

    def _halve(self) -> None:
        pairs = len(self.xs) // 2 * 2
        if pairs < len(self.xs):  # an odd bucket out: it becomes the pending half-bucket
            self._sx, self._sy = self.xs[-1] * self.stride, self.ys[-1] * self.stride
            self._n = self.stride
        self.xs = array("d", ((self.xs[i] + self.xs[i + 1]) / 2 for i in range(0, pairs, 2)))
        self.ys = array("d", ((self.ys[i] + self.ys[i + 1]) / 2 for i in range(0, pairs, 2)))
        self.stride *= 2

    def points(self) -> list[list[float]]:
        """The points, oldest first, ending with the newest raw value."""
        pts = [[_r(x), _r(y)] for x, y in zip(self.xs, self.ys, strict=True)]
        if self.last is not None:
            last = [_r(self.last[0]), _r(self.last[1])]
            if not pts or pts[-1] != last:
                pts.append(last)
        return pts

    def __len__(self) -> int:
        return len(self.points())


def _r(value: float) -> float:
    """Six significant digits: plenty for a dashboard, and a small JSON."""
    return float(f"{value:.6g}")


# --- the store ---------------------------------------------------------------------------


@dataclass
class WorkerProgress:
    """What the dashboard knows of one worker."""

    rank: int
    host: str
    device: str
    started: float
    steps: Series  # local iterations per round (x: round)
    sec_per_batch: Series  # seconds per batch (x: the worker's training time)
    state: str = RUNNING
    error: str | None = None
    slowdown: float | None = None
    round: int = 0
    time: float = 0.0
    local_steps: int | None = None
    last_sec_per_batch: float | None = None
    totals: Totals = Totals()
    dropped: int = 0
    last_seen: float = 0.0
    timed_batches: int = 0  # local iterations of the records that carry ``overruns``
    overruns: int = 0  # the sum of their ``overruns``


@dataclass
class RunProgress:
    """What the dashboard knows of one run."""

    run: str
    created: float
    updated: float
    accuracy: Series  # rank 0's test accuracy (x: the evaluated round's time)
    loss: Series
    mode: str | None = None
    num_workers: int | None = None
    rounds: int | None = None
    max_time: float | None = None
    epsilon: float | None = None
    failed: str | None = None
    workers: dict[int, WorkerProgress] = field(default_factory=dict)


class ProgressStore:
    """The runs' progress, updated by :meth:`submit`, read by :meth:`snapshot`.

    Thread-safe with its own lock; ``now`` (Unix s, the server's clock) is a parameter, so the
    states (running, stale, ...) are testable without waiting.
    """

    def __init__(
        self,
        max_points: int = config.PROGRESS_MAX_POINTS,
        max_runs: int = config.PROGRESS_MAX_RUNS,
        stale_s: float = config.PROGRESS_STALE_S,
    ) -> None:
        self.max_points = max_points
        self.max_runs = max_runs
        self.stale_s = stale_s
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, RunProgress] = OrderedDict()  # least recently updated first

    def submit(self, msg: ProgressMsg | RunMsg, now: float) -> dict[str, Any]:
        """Apply one message; the ack names the run and its state."""
        with self._lock:
            if isinstance(msg, RunMsg):
                run = self._apply_run(msg, now)
            else:
                run = self._apply_progress(msg, now)
            run.updated = now
            self._runs.move_to_end(run.run)
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
            of = "run" if isinstance(msg, RunMsg) else "progress"
            return {"msg_type": "ack", "of": of, "run": run.run, "state": self._state(run, now)}

    def _new_run(self, run_id: str, now: float) -> RunProgress:
        run = RunProgress(run_id, now, now, Series(self.max_points), Series(self.max_points))
        self._runs[run_id] = run
        return run

    def _apply_run(self, msg: RunMsg, now: float) -> RunProgress:
        run_id = msg.run
        if run_id is None:
            if not self._runs:
                raise ProgressError("no run has reported yet; name the run with 'run'", 409)
            run_id = next(reversed(self._runs))
        run = self._runs.get(run_id)
        announces = msg.failed is None
        if run is None or (announces and self._state(run, now) in (FINISHED, FAILED)):
            run = self._new_run(run_id, now)
        if msg.num_workers is not None and run.workers and msg.num_workers != run.num_workers:
            raise _size_conflict(run, msg.num_workers)
        for name in ("mode", "num_workers", "rounds", "max_time", "epsilon", "failed"):
            if getattr(msg, name) is not None:
                setattr(run, name, getattr(msg, name))
        return run

    def _apply_progress(self, msg: ProgressMsg, now: float) -> RunProgress:
        run = self._runs.get(msg.run)
        if run is not None and self._starts_anew(run, msg, now):
            run = None
        if run is None:
            run = self._new_run(msg.run, now)
        if run.workers and msg.num_workers != run.num_workers:
            raise _size_conflict(run, msg.num_workers)
        run.mode, run.num_workers = msg.mode, msg.num_workers
        for name in ("rounds", "max_time", "epsilon"):
            if getattr(msg, name) is not None:
                setattr(run, name, getattr(msg, name))
        worker = run.workers.get(msg.rank)
        if worker is None:
            series = Series(self.max_points), Series(self.max_points)
            worker = WorkerProgress(msg.rank, msg.host, msg.device, msg.started, *series)
            run.workers[msg.rank] = worker
        self._update_worker(run, worker, msg, now)
        return run

    def _starts_anew(self, run: RunProgress, msg: ProgressMsg, now: float) -> bool:
        """A worker that was not in ``run`` (or restarted) joins a FINISHED or FAILED run,
        or one of another size: a new run under the same name."""
        known = run.workers.get(msg.rank)
        if known is not None and known.started == msg.started:
            return False
        if run.workers and msg.num_workers != run.num_workers:
            return True
        return self._state(run, now) in (FINISHED, FAILED)

    @staticmethod
    def _update_worker(run: RunProgress, w: WorkerProgress, msg: ProgressMsg, now: float) -> None:
        w.host, w.device, w.started = msg.host, msg.device, msg.started
        w.state, w.error, w.totals, w.dropped = msg.state, msg.error, msg.totals, msg.dropped
        w.last_seen = now
        if msg.slowdown is not None:
            w.slowdown = msg.slowdown
        for rec in msg.records:
            w.round, w.time, w.local_steps = rec.round, rec.time, rec.local_iterations
            w.steps.add(rec.round, rec.local_iterations)
            if rec.local_iterations > 0:
                w.last_sec_per_batch = rec.compute_s / rec.local_iterations
                w.sec_per_batch.add(rec.time, w.last_sec_per_batch)
            if rec.slowdown is not None:
                w.slowdown = rec.slowdown
            if rec.overruns is not None:
                w.timed_batches += rec.local_iterations
                w.overruns += rec.overruns
            at = rec.time if rec.eval_time is None else rec.eval_time
            if msg.rank == 0 and rec.test_acc is not None:
                run.accuracy.add(at, rec.test_acc)
            if msg.rank == 0 and rec.test_loss is not None:
                run.loss.add(at, rec.test_loss)

    # --- reading ---------------------------------------------------------------------------

    def _stale(self, since: float, now: float) -> bool:
        return now - since > self.stale_s

    def _state(self, run: RunProgress, now: float) -> str:
        """failed > finished > starting / stale / running."""
        workers = run.workers.values()
        if run.failed is not None or any(w.state == FAILED for w in workers):
            return FAILED
        if (
            workers
            and len(run.workers) >= (run.num_workers or 0)
            and all(w.state == FINISHED for w in workers)
        ):
            return FINISHED
        if self._stale(run.updated, now):
            return STALE
        return RUNNING if workers else STARTING

    def run_ids(self) -> list[str]:
        """The runs kept, most recently updated first."""
        with self._lock:
            return list(reversed(self._runs))

    def snapshot(self, run_id: str | None, now: float) -> dict[str, Any]:
        """The dashboard's data of one run (default: the most recently updated one).

        ``run`` is None when nothing has reported yet; KeyError for an unknown ``run_id``.
        """
        with self._lock:
            runs = [
                {"run": r.run, "mode": r.mode, "state": self._state(r, now)}
                for r in reversed(self._runs.values())
            ]
            if run_id is None and not self._runs:
                return {"run": None, "server_time": now, "runs": runs}
            run = self._runs[run_id if run_id is not None else next(reversed(self._runs))]
            return {**self._run_view(run, now), "runs": runs}

    def _run_view(self, run: RunProgress, now: float) -> dict[str, Any]:
        state = self._state(run, now)
        workers = [self._worker_view(run.workers[r], now) for r in sorted(run.workers)]
        live = state in (RUNNING, STALE, STARTING)
        ends = [
            w["time"] + (max(0.0, now - w["last_seen"]) if live and w["state"] == RUNNING else 0.0)
            for w in workers
        ]
        elapsed = max(ends) if ends else (now - run.created if live else 0.0)
        rates = [w["rounds_per_s"] for w in workers if w["rounds_per_s"]]
        acc = run.accuracy.points()
        return {
            "run": run.run,
            "mode": run.mode,
            "state": state,
            "failed": run.failed,
            "num_workers": run.num_workers,
            "reporting": len(workers),
            "server_time": now,
            "silent_s": _r(max(0.0, now - run.updated)),
            "elapsed_s": _r(elapsed),
            "rounds": run.rounds,
            "max_time": run.max_time,
            "epsilon": run.epsilon,
            "rounds_per_s": _r(sum(rates) / len(rates)) if rates else None,
            "samples_per_s": _r(sum(w["samples_per_s"] or 0.0 for w in workers)),
            "eta_s": self._eta(run, workers, elapsed) if state == RUNNING else None,
            "straggler": _straggler(workers),
            "test_acc": acc[-1][1] if acc else None,
            "accuracy": acc,
            "loss": run.loss.points(),
            "dropped": sum(w["dropped"] for w in workers),
            "fidelity": _fidelity(list(run.workers.values())),
            "workers": workers,
        }

    def _worker_view(self, w: WorkerProgress, now: float) -> dict[str, Any]:
        busy = w.totals.busy_s
        shares = {
            label: _r(sum(getattr(w.totals, t) for t in timers) / busy) if busy > 0 else 0.0
            for label, timers in SHARES
        }
        return {
            "rank": w.rank,
            "host": w.host,
            "device": w.device,
            "slowdown": w.slowdown,
            "state": w.state,
            "stale": w.state == RUNNING and self._stale(w.last_seen, now),
            "error": w.error,
            "round": w.round,
            "time": w.time,
            "local_steps": w.local_steps,
            "sec_per_batch": None if w.last_sec_per_batch is None else _r(w.last_sec_per_batch),
            "rounds_per_s": _r(w.totals.rounds / busy) if busy > 0 else None,
            "samples_per_s": _r(w.totals.samples / busy) if busy > 0 else None,
            "shares": shares,
            "steps_series": w.steps.points(),
            "sec_per_batch_series": w.sec_per_batch.points(),
            "last_seen": w.last_seen,
            "seen_ago_s": _r(max(0.0, now - w.last_seen)),
            "dropped": w.dropped,
            "on_time": _fidelity([w]),
        }

    @staticmethod
    def _eta(run: RunProgress, workers: list[dict[str, Any]], elapsed: float) -> float | None:
        """Seconds left: by --max-time, by --rounds at each worker's own pace; the sooner."""
        guesses = []
        if run.max_time:
            guesses.append(max(0.0, run.max_time - elapsed))
        if run.rounds and workers:
            running = [w for w in workers if w["state"] == RUNNING]
            if running and all(w["rounds_per_s"] for w in running):
                guesses.append(
                    max(max(0, run.rounds - w["round"]) / w["rounds_per_s"] for w in running)
                )
        return _r(min(guesses)) if guesses else None


def _size_conflict(run: RunProgress, says: int) -> ProgressError:
    """409: a message about a run of another size while that run's workers still report."""
    return ProgressError(
        f"run {run.run!r} has {run.num_workers} workers, the message says {says}", 409
    )


def _fidelity(workers: list[WorkerProgress]) -> float | None:
    """The share of batches computed by their emulated-device deadline, over the records that
    carry ``overruns``; None when none did (no device emulation)."""
    batches = sum(w.timed_batches for w in workers)
    late = sum(w.overruns for w in workers)
    return _r(max(0.0, 1.0 - late / batches)) if batches > 0 else None


def _straggler(workers: list[dict[str, Any]]) -> int | None:
    """The rank with the most seconds per batch (the lowest rank of a tie); None when alone."""
    timed = [w for w in workers if w["sec_per_batch"] is not None]
    if len(timed) < 2:
        return None
    return max(timed, key=lambda w: (w["sec_per_batch"], -w["rank"]))["rank"]
