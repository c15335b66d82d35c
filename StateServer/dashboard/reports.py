"""What the dashboard is told: the workers' reports and the launcher's run messages. Django-free.

Every worker, in every mode, posts its finished rounds to ``POST /progress/`` (the client is
``trainer/progress.py``); the launcher may post a run message (announce a run, or mark it
failed). This module parses both strictly (:func:`decode_body`, :func:`parse_report`: every
malformed input is a :class:`ReportError` naming the field, with the HTTP status to answer)
into a :class:`WorkerReport` or a :class:`RunMsg`; ``store.py`` keeps what the dashboard shows
(``DashboardStore``). (A :class:`WorkerReport` is the dashboard's; the scheduler's
``ReportMsg`` in ``StateServer/messages.py`` is Alg. 2's, on ``/msg/``.)

A worker's message (``records``: the rounds finished since its previous message, at most
``config.PROGRESS_MAX_RECORDS``; ``totals``: sums over every round this worker reported, so
that rates and time shares survive dropped messages and a State Server restart)::

    {"msg_type": "progress", "run": "lenet/esync", "mode": "esync", "num_workers": 4,
     "rank": 1, "host": "node-a", "device": "cpu", "started": 1764496000.0,
     "state": "running", "slowdown": 4.0, "epsilon": 0.0, "rounds": 200, "max_time": 60.0,
     "dropped": 0,
     "totals": {"rounds": 12, "samples": 2304, "compute_s": 2.1, "wait_s": 0.1,
                "query_s": 0.05, "comm_s": 0.6, "eval_s": 0.0},
     "server_bytes": [6210624, 6207392],
     "records": [{"round": 12, "time": 3.5, "local_iterations": 3, "samples": 192,
                  "compute_s": 0.09, "slowdown": 4.0, "overruns": 0,
                  "test_acc": 0.91, "test_loss": 0.3, "eval_time": 3.1}]}

``server_bytes`` (optional; at most ``config.MAX_SERVERS`` entries) are the bytes this worker
pushed and pulled on each parameter server since it started (trainer/sharding.py).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, make_dataclass, replace
from typing import Any

import config

from ..messages import MessageError, decode_json

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
SHARES = (  # the time split of the dashboard's bar: label and the timers it sums
    ("computing", ("compute_s",)),
    ("communicating", ("comm_s", "query_s")),
    ("evaluating", ("eval_s",)),
    ("waiting", ("wait_s",)),
)


class ReportError(MessageError):
    """A malformed or refused report or run message; ``status`` is the HTTP status to answer
    (a :class:`MessageError`, so the State Server's API views answer it as a JSON 4xx)."""


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


RECORD_FIELDS = tuple(f.name for f in fields(RoundPoint))  # what a worker sends of a record


def _busy_s(totals: Any) -> float:
    """The rounds' wall time: every second of a round is in exactly one timer."""
    return sum(getattr(totals, name) for name in TIMERS)


# Sums over every round a worker reported since it started: ``rounds``, ``samples`` and one
# field per timer of TIMERS (seconds), so that a new timer is named in TIMERS only.
Totals = make_dataclass(
    "Totals",
    [("rounds", int, 0), ("samples", int, 0), *((name, float, 0.0) for name in TIMERS)],
    frozen=True,
    slots=True,
    namespace={"busy_s": property(_busy_s), "__module__": __name__},
)


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What is known of a run as a whole (None: not said yet): its mode and size, its budget
    (rounds, max_time) and slack, and why it failed."""

    mode: str | None = None
    num_workers: int | None = None
    rounds: int | None = None
    max_time: float | None = None
    epsilon: float | None = None
    failed: str | None = None

    def updated(self, news: RunFacts) -> RunFacts:
        """These facts with every one that ``news`` states (not None) replaced."""
        said = {f.name: getattr(news, f.name) for f in fields(RunFacts)}
        return replace(self, **{name: value for name, value in said.items() if value is not None})


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """A worker's report to the dashboard: who it is, its state, totals and newest rounds."""

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
    server_bytes: tuple[int, ...] = ()  # pushed + pulled on each parameter server, in total


@dataclass(frozen=True, slots=True)
class RunMsg(RunFacts):
    """The launcher's word on run ``run`` (None: the most recently updated one): announce it
    (mode, size, budget) and/or mark it failed."""

    run: str | None = None


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
            raise ReportError(f"field '{name}' must be an integer, got {_show(value)}")
        if not lo <= value <= hi:
            raise ReportError(f"field '{name}' must be in [{lo}, {hi}], got {value}")
        return value

    return check


def number(lo: float, hi: float) -> Check:
    def check(name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReportError(f"field '{name}' must be a number, got {_show(value)}")
        value = float(value)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ReportError(f"field '{name}' must be in [{lo:g}, {hi:g}], got {value:g}")
        return value

    return check


def text(max_len: int) -> Check:
    def check(name: str, value: object) -> str:
        if not isinstance(value, str):
            raise ReportError(f"field '{name}' must be a string, got {_show(value)}")
        if not 1 <= len(value) <= max_len:
            raise ReportError(f"field '{name}' must have 1 to {max_len} characters")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ReportError(f"field '{name}' must not contain control characters")
        return value

    return check


def choice(options: tuple[str, ...]) -> Check:
    def check(name: str, value: object) -> str:
        if value not in options:
            raise ReportError(
                f"field '{name}' must be one of {', '.join(options)}, got {_show(value)}"
            )
        return str(value)

    return check


def _fields(
    obj: object, where: str, required: Mapping[str, Check], optional: Mapping[str, Check]
) -> dict[str, Any]:
    """The checked fields of a JSON object: every required one, no unknown one."""
    if not isinstance(obj, dict):
        raise ReportError(f"{where} must be a JSON object, got {_show(obj)}")
    missing = [name for name in required if name not in obj]
    if missing:
        raise ReportError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise ReportError(f"{where}: unexpected field(s) {', '.join(map(repr, unknown))}")
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
        raise ReportError(f"field 'records' must be an array, got {_show(value)}")
    if len(value) > limit:
        raise ReportError(f"field 'records' has {len(value)} rounds; at most {limit} per message")
    return tuple(
        RoundPoint(**_fields(item, f"records[{i}]", _RECORD_REQUIRED, _RECORD_OPTIONAL))
        for i, item in enumerate(value)
    )


def _server_bytes(name: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ReportError(f"field '{name}' must be an array, got {_show(value)}")
    if not 1 <= len(value) <= config.MAX_SERVERS:
        raise ReportError(
            f"field '{name}' has {len(value)} servers; 1 to {config.MAX_SERVERS} allowed"
        )
    return tuple(_COUNT(f"{name}[{i}]", v) for i, v in enumerate(value))


def _worker_count(name: str, value: object) -> int:
    limit = config.PROGRESS_MAX_WORKERS
    count = integer(1, MAX_INT)(name, value)
    if count > limit:
        raise ReportError(
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
    "server_bytes": _server_bytes,
    **_BUDGET,
}
_RUN_OPTIONAL: dict[str, Check] = {
    "run": text(MAX_RUN_ID),
    "failed": text(MAX_ERROR),
    "mode": text(40),
    "num_workers": _worker_count,
    **_BUDGET,
}


def parse_report(obj: object) -> WorkerReport | RunMsg:
    """A decoded JSON body as a worker's :class:`WorkerReport` or the launcher's
    :class:`RunMsg` (``msg_type`` ``progress`` or ``run``)."""
    if not isinstance(obj, dict):
        raise ReportError(f"the body must be a JSON object, got {_show(obj)}")
    body = dict(obj)
    kind = body.pop("msg_type", None)
    if kind == "run":
        run = RunMsg(**_fields(body, "run message", {}, _RUN_OPTIONAL))
        if run.run is None and run.failed is None:
            raise ReportError("run message: name the run ('run') or give 'failed'")
        return run
    if kind != "progress":
        what = "missing" if kind is None else f"{_show(kind)}"
        raise ReportError(f"field 'msg_type' must be progress or run, got {what}")
    msg = WorkerReport(**_fields(body, "progress message", _PROGRESS_REQUIRED, _PROGRESS_OPTIONAL))
    if msg.rank >= msg.num_workers:
        raise ReportError(f"rank {msg.rank} out of range: num_workers is {msg.num_workers}")
    if msg.error is not None and msg.state != FAILED:
        raise ReportError("field 'error' goes only with state 'failed'")
    return msg


def decode_body(body: bytes) -> object:
    """A request body as strict JSON (``messages.decode_json``: UTF-8, no NaN / Infinity, no
    duplicate keys), at most PROGRESS_MAX_BODY_BYTES (else 413)."""
    try:
        return decode_json(body, config.PROGRESS_MAX_BODY_BYTES)
    except MessageError as exc:
        raise ReportError(str(exc), exc.status) from None
