"""The dashboard's memory: every run's workers, states and curves, with bounded memory.

:class:`DashboardStore` applies the parsed messages of ``reports.py`` and gives the snapshot
the pages and ``/dashboard.json`` show: at most ``max_points`` points per series,
``config.PROGRESS_MAX_WORKERS`` workers per run, ``max_runs`` runs. The store has its own lock;
it never touches the Alg. 2 dispatcher or its state (the dashboard is not on the hot path).
Django-free.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

import config

from .reports import (
    FAILED,
    FINISHED,
    RUNNING,
    SHARES,
    STALE,
    STARTING,
    ReportError,
    RunFacts,
    RunMsg,
    Totals,
    WorkerReport,
)
from .series import Series, sig6


@dataclass
class TrackedWorker:
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
    server_bytes: tuple[int, ...] = ()  # pushed + pulled on each parameter server, in total


@dataclass
class TrackedRun:
    """What the dashboard knows of one run."""

    run: str
    created: float
    updated: float
    accuracy: Series  # rank 0's test accuracy (x: the evaluated round's time)
    loss: Series
    facts: RunFacts = RunFacts()  # mode, size, budget, failure: what its messages said
    workers: dict[int, TrackedWorker] = field(default_factory=dict)


class DashboardStore:
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
        self._runs: OrderedDict[str, TrackedRun] = OrderedDict()  # least recently updated first

    def submit(self, msg: WorkerReport | RunMsg, now: float) -> dict[str, Any]:
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

    def _new_run(self, run_id: str, now: float) -> TrackedRun:
        run = TrackedRun(run_id, now, now, Series(self.max_points), Series(self.max_points))
        self._runs[run_id] = run
        return run

    def _apply_run(self, msg: RunMsg, now: float) -> TrackedRun:
        run_id = msg.run
        if run_id is None:
            if not self._runs:
                raise ReportError("no run has reported yet; name the run with 'run'", 409)
            run_id = next(reversed(self._runs))
        run = self._runs.get(run_id)
        announces = msg.failed is None
        if run is None or (announces and self._state(run, now) in (FINISHED, FAILED)):
            run = self._new_run(run_id, now)
        if msg.num_workers is not None and run.workers and msg.num_workers != run.facts.num_workers:
            raise _size_conflict(run, msg.num_workers)
        run.facts = run.facts.updated(msg)
        return run

    def _apply_progress(self, msg: WorkerReport, now: float) -> TrackedRun:
        run = self._runs.get(msg.run)
        if run is not None and self._starts_anew(run, msg, now):
            run = None
        if run is None:
            run = self._new_run(msg.run, now)
        if run.workers and msg.num_workers != run.facts.num_workers:
            raise _size_conflict(run, msg.num_workers)
        said = RunFacts(msg.mode, msg.num_workers, msg.rounds, msg.max_time, msg.epsilon)
        run.facts = run.facts.updated(said)
        worker = run.workers.get(msg.rank)
        if worker is None:
            series = Series(self.max_points), Series(self.max_points)
            worker = TrackedWorker(msg.rank, msg.host, msg.device, msg.started, *series)
            run.workers[msg.rank] = worker
        self._update_worker(run, worker, msg, now)
        return run

    def _starts_anew(self, run: TrackedRun, msg: WorkerReport, now: float) -> bool:
        """A worker that was not in ``run`` (or restarted) joins a FINISHED or FAILED run,
        or one of another size: a new run under the same name."""
        known = run.workers.get(msg.rank)
        if known is not None and known.started == msg.started:
            return False
        if run.workers and msg.num_workers != run.facts.num_workers:
            return True
        return self._state(run, now) in (FINISHED, FAILED)

    @staticmethod
    def _update_worker(run: TrackedRun, w: TrackedWorker, msg: WorkerReport, now: float) -> None:
        w.host, w.device, w.started = msg.host, msg.device, msg.started
        w.state, w.error, w.totals, w.dropped = msg.state, msg.error, msg.totals, msg.dropped
        w.server_bytes = msg.server_bytes or w.server_bytes
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

    def _state(self, run: TrackedRun, now: float) -> str:
        """failed > finished > starting / stale / running."""
        workers = run.workers.values()
        if run.facts.failed is not None or any(w.state == FAILED for w in workers):
            return FAILED
        if (
            workers
            and len(run.workers) >= (run.facts.num_workers or 0)
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
                {"run": r.run, "mode": r.facts.mode, "state": self._state(r, now)}
                for r in reversed(self._runs.values())
            ]
            if run_id is None and not self._runs:
                return {"run": None, "server_time": now, "runs": runs}
            run = self._runs[run_id if run_id is not None else next(reversed(self._runs))]
            return {**self._run_view(run, now), "runs": runs}

    def _run_view(self, run: TrackedRun, now: float) -> dict[str, Any]:
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
            "mode": run.facts.mode,
            "state": state,
            "failed": run.facts.failed,
            "num_workers": run.facts.num_workers,
            "reporting": len(workers),
            "server_time": now,
            "silent_s": sig6(max(0.0, now - run.updated)),
            "elapsed_s": sig6(elapsed),
            "rounds": run.facts.rounds,
            "max_time": run.facts.max_time,
            "epsilon": run.facts.epsilon,
            "rounds_per_s": sig6(sum(rates) / len(rates)) if rates else None,
            "samples_per_s": sig6(sum(w["samples_per_s"] or 0.0 for w in workers)),
            "eta_s": self._eta(run, workers, elapsed) if state == RUNNING else None,
            "straggler": _straggler(workers),
            "test_acc": acc[-1][1] if acc else None,
            "accuracy": acc,
            "loss": run.loss.points(),
            "dropped": sum(w["dropped"] for w in workers),
            "fidelity": _fidelity(list(run.workers.values())),
            **_servers(list(run.workers.values())),
            "workers": workers,
        }

    def _worker_view(self, w: TrackedWorker, now: float) -> dict[str, Any]:
        busy = w.totals.busy_s
        shares = {
            label: sig6(sum(getattr(w.totals, t) for t in timers) / busy) if busy > 0 else 0.0
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
            "sec_per_batch": None if w.last_sec_per_batch is None else sig6(w.last_sec_per_batch),
            "rounds_per_s": sig6(w.totals.rounds / busy) if busy > 0 else None,
            "samples_per_s": sig6(w.totals.samples / busy) if busy > 0 else None,
            "shares": shares,
            "steps_series": w.steps.points(),
            "sec_per_batch_series": w.sec_per_batch.points(),
            "last_seen": w.last_seen,
            "seen_ago_s": sig6(max(0.0, now - w.last_seen)),
            "dropped": w.dropped,
            "on_time": _fidelity([w]),
        }

    @staticmethod
    def _eta(run: TrackedRun, workers: list[dict[str, Any]], elapsed: float) -> float | None:
        """Seconds left: by --max-time, by --rounds at each worker's own pace; the sooner."""
        guesses = []
        if run.facts.max_time:
            guesses.append(max(0.0, run.facts.max_time - elapsed))
        if run.facts.rounds and workers:
            running = [w for w in workers if w["state"] == RUNNING]
            if running and all(w["rounds_per_s"] for w in running):
                guesses.append(
                    max(max(0, run.facts.rounds - w["round"]) / w["rounds_per_s"] for w in running)
                )
        return sig6(min(guesses)) if guesses else None


def _servers(workers: list[TrackedWorker]) -> dict[str, Any]:
    """Every worker's bytes on each parameter server, summed, and the balance (smallest /
    largest; None before any worker said)."""
    total: list[int] = []
    for w in workers:
        total = [a + b for a, b in zip_longest(total, w.server_bytes, fillvalue=0)]
    balance = (min(total) / max(total) if max(total) else 1.0) if total else None
    return {"server_bytes": total, "server_balance": None if balance is None else sig6(balance)}


def _size_conflict(run: TrackedRun, says: int) -> ReportError:
    """409: a message about a run of another size while that run's workers still report."""
    return ReportError(
        f"run {run.run!r} has {run.facts.num_workers} workers, the message says {says}", 409
    )


def _fidelity(workers: list[TrackedWorker]) -> float | None:
    """The share of batches computed by their emulated-device deadline, over the records that
    carry ``overruns``; None when none did (no device emulation)."""
    batches = sum(w.timed_batches for w in workers)
    late = sum(w.overruns for w in workers)
    return sig6(max(0.0, 1.0 - late / batches)) if batches > 0 else None


def _straggler(workers: list[dict[str, Any]]) -> int | None:
    """The rank with the most seconds per batch (the lowest rank of a tie); None when alone."""
    timed = [w for w in workers if w["sec_per_batch"] is not None]
    if len(timed) < 2:
        return None
    return max(timed, key=lambda w: (w["sec_per_batch"], -w["rank"]))["rank"]
