"""The state database: the paper's table of worker records, in memory.

Only the dispatcher thread touches it (see :mod:`StateServer.dispatcher`), so it has no locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INITIAL_ROUND = 0  # any reset with t >= 1 starts a new round (see docs/state-server.md)


@dataclass(slots=True)
class WorkerRecord:
    """What the server knows about one worker."""

    rank: int
    t: int  # the round the worker is in
    k: int = 0  # local iterations done in this round
    c: float = 0.0  # capability: seconds per batch; 0.0 means not measured yet
    te: float = 0.0  # Unix time the worker last finished an iteration (or started the round)
    ready: bool = False  # told to synchronise in this round
    told: bool = False  # a hold with k = 0 was answered sync: sync after the current batch
    last_seen: float = 0.0  # server time of the last message from this worker

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the record."""
        return {
            "rank": self.rank,
            "round": self.t,
            "k": self.k,
            "c": self.c,
            "te": self.te,
            "ready": self.ready,
            "told": self.told,
            "last_seen": self.last_seen,
        }


def unreported_row(rank: int) -> dict[str, Any]:
    """A status row of a rank the server has no record of (yet)."""
    return {
        "rank": rank,
        "round": None,
        "k": 0,
        "c": 0.0,
        "te": 0.0,
        "ready": False,
        "told": False,
        "last_seen": None,
        "reported": False,
    }


@dataclass(slots=True)
class StateDB:
    """All state of one run: parameters, the current round and the records table."""

    num_workers: int = 0
    epsilon: float = 0.0
    round: int = INITIAL_ROUND
    initialized: bool = False
    rejoined: bool = False  # initialised by a worker's rejoin (the server had restarted)
    anchored: bool = False  # a reset or hold has named the run's round (see Scheduler.reset)
    advanced: bool = False  # ... and a later one moved it on: a round ended on this server
    records: dict[int, WorkerRecord] = field(default_factory=dict)

    @property
    def recovering(self) -> bool:
        """Initialised by a rejoin and some worker has not re-registered yet: that worker may
        be waiting at the barrier already, told sync by the server that was lost."""
        return self.rejoined and len(self.records) < self.num_workers

    def get_or_create(self, rank: int) -> WorkerRecord:
        """The record of ``rank``; a new worker is placed in the current round."""
        rec = self.records.get(rank)
        if rec is None:
            rec = WorkerRecord(rank=rank, t=self.round)
            self.records[rank] = rec
        return rec

    def start_round(self, t: int) -> None:
        """Enter round ``t``: every worker's k and ready (and told) flags are cleared."""
        self.round = t
        for rec in self.records.values():
            rec.k = 0
            rec.ready = False
            rec.told = False
