"""Algorithm 2 of the ESync paper (the State Server's decision), as a pure class.

Nothing here reads the clock or touches the network: every call takes ``now`` (Unix time),
so tests are deterministic. See ``docs/state-server.md`` for the cases the paper leaves open
and how they are decided here.
"""

from __future__ import annotations

from typing import Any

from .state import INITIAL_ROUND, StateDB, WorkerRecord

COMPUTE = "compute"
SYNC = "sync"


class SchedulerError(ValueError):
    """A request that is well formed but not valid against the current state."""

    status = 400


class NotInitializedError(SchedulerError):
    """A worker message arrived before ``init``."""

    status = 409


class Scheduler:
    """The State Server's records table plus Alg. 2 on top of it."""

    def __init__(self) -> None:
        self.db = StateDB()

    # --- messages ---------------------------------------------------------------------

    def init(self, num_workers: int, epsilon: float) -> None:
        """Start a new run: forget every record, round back to the first one."""
        self.db = StateDB(
            num_workers=num_workers, epsilon=epsilon, round=INITIAL_ROUND, initialized=True
        )

    def reset(self, rank: int, t: int, te: float, now: float) -> int:
        """Worker ``rank`` starts round ``t`` at ``te``; a newer round clears every k/ready."""
        self._check_rank(rank)
        db = self.db
        if t > db.round:
            db.start_round(t)
        rec = db.get_or_create(rank)
        rec.t, rec.te, rec.k, rec.ready, rec.last_seen = t, te, 0, False, now
        return db.round

    def report(self, rank: int, k: int, c: float, te: float, now: float) -> WorkerRecord:
        """Record a worker's progress (k local iterations, c s/batch, te last finish)."""
        self._check_rank(rank)
        rec = self.db.get_or_create(rank)
        if rec.t < self.db.round:
            # Queries carry no round. A worker that computes has passed the barrier that
            # ended the previous round, so it is in the current one (a lost reset, or a
            # re-init in the middle of a run, would otherwise stall the run).
            rec.t = self.db.round
        rec.k, rec.te, rec.last_seen = k, te, now
        if c > 0.0:  # 0 means "not measured": keep what we know
            rec.c = c
        return rec

    def query(self, rank: int, k: int, c: float, te: float, now: float) -> str:
        """Record progress, then answer ``compute`` or ``sync`` (Alg. 2)."""
        rec = self.report(rank, k, c, te, now)
        action = self.decide(rec, now)
        if action == SYNC:
            rec.ready = True
        return action

    # --- Alg. 2 -----------------------------------------------------------------------

    def slowest(self) -> WorkerRecord | None:
        """The straggler every worker will wait for, or None while any capability is unknown.

        The slowest is the record with the largest c. Among equal c it is the one that will
        reach the barrier last: not yet in the current round, then not yet ready, then the
        latest ``te``; lowest rank last, so the choice is deterministic.
        """
        db = self.db
        if len(db.records) < db.num_workers:
            return None
        best: WorkerRecord | None = None
        best_key: tuple[float, bool, bool, float, int] | None = None
        for rec in db.records.values():
            if rec.c <= 0.0:
                return None
            key = (rec.c, rec.t < db.round, not rec.ready, rec.te, -rec.rank)
            if best_key is None or key > best_key:
                best, best_key = rec, key
        return best

    def decide(self, asker: WorkerRecord, now: float) -> str:
        """Alg. 2 for a worker whose record is already updated; does not mark it ready."""
        if asker.k == 0:
            return COMPUTE  # every worker computes at least one iteration per round
        if asker.ready:
            return SYNC  # told before in this round: the answer does not flip back
        slowest = self.slowest()
        if slowest is None:
            return COMPUTE  # someone's capability is unknown: it might be the slowest
        if asker.c >= slowest.c:
            return SYNC  # the asker is (one of) the slowest: one iteration per round
        if slowest.t != self.db.round:
            return COMPUTE  # the slowest has not started this round yet
        rest = slowest.c - now + slowest.te
        if slowest.ready or asker.c + self.db.epsilon > rest:
            return SYNC
        return COMPUTE

    # --- views ------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready view of the whole state, one row per expected worker."""
        db = self.db
        slowest = self.slowest() if db.initialized else None
        workers = []
        for rank in range(db.num_workers):
            rec = db.records.get(rank)
            row = (
                rec.to_dict()
                if rec
                else {
                    "rank": rank,
                    "round": None,
                    "k": 0,
                    "c": 0.0,
                    "te": 0.0,
                    "ready": False,
                    "last_seen": None,
                }
            )
            row["reported"] = rec is not None
            workers.append(row)
        return {
            "initialized": db.initialized,
            "num_workers": db.num_workers,
            "epsilon": db.epsilon,
            "round": db.round,
            "server_time": now,
            "slowest": slowest.rank if slowest else None,
            "workers": workers,
        }

    def upstream_view(self) -> dict[str, Any]:
        """``GET /`` as the original ESync server: records are [r, k, c, te, ready, t]."""
        db = self.db
        records = []
        for rank in range(db.num_workers):
            rec = db.records.get(rank)
            if rec is None:
                records.append([rank, 0, 0.0, 0.0, False, db.round])
            else:
                records.append([rank, rec.k, rec.c, rec.te, rec.ready, rec.t])
        return {
            "num_workers": db.num_workers,
            "t": db.round,
            "epsilon": db.epsilon,
            "records": records,
        }

    # --- checks -----------------------------------------------------------------------

    def _check_rank(self, rank: int) -> None:
        if not self.db.initialized:
            raise NotInitializedError(
                "the State Server is not initialised: send init (num_workers, epsilon) first"
            )
        if not 0 <= rank < self.db.num_workers:
            raise SchedulerError(f"rank {rank} out of range: num_workers is {self.db.num_workers}")
