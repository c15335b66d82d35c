"""Read-only copies of the scheduler's state, for the reads (status page, ``/status.json``,
upstream's ``GET /``), published by whichever thread runs the dispatcher's engine.

Why: a read that went through the dispatcher's queue competed with the workers' messages for
its places and for the dispatcher thread, so a flood of reads made workers see 503s. Now the
engine publishes an immutable :class:`StateSnapshot` after every message that may change the
state, before it answers that message (a client that reads after its answer sees its own
write), and a reader only reads that attribute: it takes no lock, queues nothing and never
waits. The time-dependent field (``server_time``, and so the page's "last seen ... ago") is
computed by the reader from its own clock; the snapshot keeps the server time of the state it
shows (``taken``).

A publication costs O(1) per message: only the rows of the ranks the message is about are
rebuilt (a worker message touches its own record, a released hold the held rank's). A change
of round, of run (a new ``StateDB``) or of ``num_workers``, and any message without a rank,
rebuild every row: once per round, as the scheduler's own rescan of the slowest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from .state import StateDB, WorkerRecord, unreported_row

# A worker's row: t, k, c, te, ready, told, last_seen; None while it has no record.
Row = tuple[int, int, float, float, bool, bool, float]


def _row(rec: WorkerRecord | None) -> Row | None:
    if rec is None:
        return None
    return (rec.t, rec.k, rec.c, rec.te, rec.ready, rec.told, rec.last_seen)


class StateSnapshot(NamedTuple):
    """The state at server time ``taken``, after ``version`` publications (a tuple:
    immutable, and cheap to build on every message)."""

    version: int
    taken: float
    initialized: bool
    recovering: bool
    cluster_size: int | None  # the served scheduler's bound (ESYNC_CLUSTER_SIZE), or None
    num_workers: int
    epsilon: float
    round: int
    slowest: int | None
    rows: tuple[Row | None, ...]  # one per rank in range(num_workers)

    def status(self, now: float) -> dict[str, Any]:
        """The status page's data at time ``now``: exactly ``Scheduler.snapshot(now)``."""
        workers = []
        for rank, row in enumerate(self.rows):
            if row is None:
                workers.append(unreported_row(rank))
                continue
            t, k, c, te, ready, told, last_seen = row
            workers.append(
                {
                    "rank": rank,
                    "round": t,
                    "k": k,
                    "c": c,
                    "te": te,
                    "ready": ready,
                    "told": told,
                    "last_seen": last_seen,
                    "reported": True,
                }
            )
        return {
            "initialized": self.initialized,
            "recovering": self.recovering,
            "cluster_size": self.cluster_size,
            "num_workers": self.num_workers,
            "epsilon": self.epsilon,
            "round": self.round,
            "server_time": now,
            "slowest": self.slowest,
            "workers": workers,
        }

    def upstream(self) -> dict[str, Any]:
        """``GET /`` as the original ESync server: exactly ``Scheduler.upstream_view()``."""
        records: list[list[Any]] = []
        for rank, row in enumerate(self.rows):
            if row is None:
                records.append([rank, 0, 0.0, 0.0, False, self.round])
            else:
                t, k, c, te, ready, _, _ = row
                records.append([rank, k, c, te, ready, t])
        return {
            "num_workers": self.num_workers,
            "t": self.round,
            "epsilon": self.epsilon,
            "records": records,
        }


class Publisher:
    """Keeps :attr:`current`, the snapshot of ``router.scheduler`` (a
    :class:`~StateServer.router.Router`), up to date. Only the thread that runs the engine
    calls :meth:`publish` (under the dispatcher's lock); readers read :attr:`current`: one
    attribute read, atomic, of an object nobody changes."""

    def __init__(self, router: Any, now: float = 0.0) -> None:
        self._router = router  # its scheduler is read at each publication
        self._db: StateDB | None = None
        self._round = -1
        self.current = self._build(None, now, 0)

    def publish(self, ranks: Iterable[int] | None, now: float) -> StateSnapshot:
        """A new snapshot after a change of the records of ``ranks`` (None: of any record)."""
        snap = self._build(ranks, now, self.current.version + 1)
        self.current = snap  # the swap: readers see the old or the new one, never a mix
        return snap

    def _build(self, ranks: Iterable[int] | None, now: float, version: int) -> StateSnapshot:
        sched = self._router.scheduler
        db = sched.db
        n = db.num_workers
        old = self.current.rows if version else ()
        if ranks is None or db is not self._db or db.round != self._round or len(old) != n:
            rows = tuple(_row(db.records.get(rank)) for rank in range(n))
        else:
            changed = list(old)
            for rank in ranks:
                if 0 <= rank < n:
                    changed[rank] = _row(db.records.get(rank))
            rows = tuple(changed)
        self._db, self._round = db, db.round
        slowest = sched.slowest() if db.initialized else None
        bounds = getattr(sched, "bounds", None)
        return StateSnapshot(
            version=version,
            taken=now,
            initialized=db.initialized,
            recovering=db.recovering,
            cluster_size=bounds.cluster_size if bounds is not None else None,
            num_workers=n,
            epsilon=db.epsilon,
            round=db.round,
            slowest=slowest.rank if slowest else None,
            rows=rows,
        )
