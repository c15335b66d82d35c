"""Algorithm 2 of the ESync paper (the State Server's decision), as a pure class.

Nothing here reads the clock or touches the network: every call takes ``now`` (Unix time),
so tests are deterministic. See ``docs/state-server.md`` for the cases the paper leaves open
and how they are decided here.

Two protocols use it. *Blocking* (the paper's Alg. 2 as written): a worker asks ``query``
after every local iteration and is answered at once. *Non-blocking* (the paper's delayed
ACK): a worker ``hold``s, and the server answers when Alg. 2's condition becomes true;
:meth:`Scheduler.deadline` is the server time from which a query would be answered sync,
computed from the same state with :func:`sync_deadline`, so both protocols decide alike.

A served scheduler also enforces the run's *semantic bounds* (:class:`Bounds`): messages that
are well formed but would wreck the run (an init of another cluster size, a round far ahead)
are refused with :class:`BoundsError` (HTTP 409) before anything changes. ``Scheduler()``
without bounds is Alg. 2 alone, as the simulations and property tests drive it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .messages import MAX_NUM_WORKERS
from .state import INITIAL_ROUND, StateDB, WorkerRecord, unreported_row

COMPUTE = "compute"
SYNC = "sync"
DUE = float("-inf")  # deadline: a query with k >= 1 would be answered sync already
UNKNOWN = float("inf")  # deadline: it depends on messages the server has not had yet


def sync_deadline(c: float, slowest_c: float, slowest_te: float, epsilon: float) -> float:
    """Alg. 2's step 7 solved for the time: the server time after which a worker of
    capability ``c`` is told sync while the slowest (``slowest_c`` s per batch, last
    iteration finished at ``slowest_te``) is still computing.

    ``c + epsilon > rest`` with ``rest = slowest_c - (now - slowest_te)`` holds exactly when
    ``now > slowest_te + slowest_c - c - epsilon``.
    """
    return slowest_te + slowest_c - c - epsilon


def _key(rec: WorkerRecord, current_round: int) -> tuple[float, bool, bool, float, int]:
    """Order of "slower" for :meth:`Scheduler.slowest` (the largest key is the slowest)."""
    return (rec.c, rec.t < current_round, not rec.ready, rec.te, -rec.rank)


class SchedulerError(ValueError):
    """A request that is well formed but not valid against the current state."""

    status = 400


class NotInitializedError(SchedulerError):
    """A worker message arrived before ``init``."""

    status = 409


class BoundsError(SchedulerError):
    """A well-formed message outside the run's semantic bounds (:class:`Bounds`): an init of
    another size than the cluster's, or a round too far ahead. HTTP 409; nothing changes."""

    status = 409


CLUSTER_SIZE_VAR = "ESYNC_CLUSTER_SIZE"  # the environment variable of Bounds.cluster_size
ROUND_STEP = 1  # a reset or hold may name at most this many rounds past the current one
RUN_IDLE_S = 120.0  # no cluster size: a run silent this long is over (another size may init)


@dataclass(frozen=True, slots=True)
class Bounds:
    """What a served scheduler refuses with :class:`BoundsError` (docs/state-server.md,
    "Semantic bounds").

    ``cluster_size`` (``ESYNC_CLUSTER_SIZE``; launch.py sets it to its number of workers): an
    init or rejoin of any other ``num_workers`` is refused. None (a hand-started server): any
    size may start a run, but while a run is *in progress* (:meth:`Scheduler.in_progress`: a
    round of it has ended on this server and a worker of it spoke less than ``run_idle_s``
    ago) a plain init of another size is refused; one of the same size starts a new run.

    ``round_step``: once a run's round is anchored (by its first reset or hold), a reset or
    hold may name at most ``round + round_step``. The anchoring message itself may name any
    round: a run resumed from a checkpoint starts there, and a restarted server learns the
    round from the first worker that re-registers.
    """

    cluster_size: int | None = None
    round_step: int = ROUND_STEP
    run_idle_s: float = RUN_IDLE_S


def parse_cluster_size(raw: str | None) -> int | None:
    """The value of ``ESYNC_CLUSTER_SIZE``: None when unset or empty, else an integer in
    [1, MAX_NUM_WORKERS]; ValueError naming the variable for anything else."""
    text = (raw or "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_NUM_WORKERS:
        raise ValueError(
            f"{CLUSTER_SIZE_VAR} must be an integer in [1, {MAX_NUM_WORKERS}] "
            f"(the run's number of workers), got {raw!r}"
        )
    return int(text)


class Scheduler:
    """The State Server's records table plus Alg. 2 on top of it."""

    def __init__(self, bounds: Bounds | None = None) -> None:
        self.bounds = bounds  # None: no semantic bounds (Alg. 2 alone)
        self.db = StateDB()
        self.generation = 0  # +1 on every init: held requests of an older run are released
        self._forget_slowest()

    def _forget_slowest(self) -> None:
        """Drop the cached argmax (after an init or a new round); the next call rescans."""
        self._best: WorkerRecord | None = None
        self._best_valid = False
        self._known = sum(1 for rec in self.db.records.values() if rec.c > 0.0)

    # --- messages ---------------------------------------------------------------------

    def init(self, num_workers: int, epsilon: float, now: float | None = None) -> None:
        """Start a new run: forget every record, round back to the first one.

        With bounds: BoundsError (nothing changes) for another size than the cluster's, or,
        without a cluster size, for another size than a run in progress at ``now`` (None:
        counted as in progress when a round of it has ended)."""
        self._check_init(num_workers, now)
        self.db = StateDB(
            num_workers=num_workers, epsilon=epsilon, round=INITIAL_ROUND, initialized=True
        )
        self.generation += 1
        self._forget_slowest()

    def rejoin(self, num_workers: int, epsilon: float, now: float | None = None) -> bool:
        """A worker re-registers after a State Server restart; never forgets a record.

        Not initialised: initialise as :meth:`init` does (and remember that it was a rejoin:
        see :meth:`decide`); returns True. Already initialised with the same ``num_workers``
        and ``epsilon`` (another worker re-registered first, or the server never restarted):
        nothing changes; returns False. Initialised with other parameters: SchedulerError
        (HTTP 400), nothing changes: the server serves another run, or the workers disagree.
        With bounds, another size than the cluster's is a BoundsError (409) first.
        """
        self._check_size(num_workers, "rejoin")
        db = self.db
        if not db.initialized:
            self.init(num_workers, epsilon, now)
            self.db.rejoined = True
            return True
        if (db.num_workers, db.epsilon) != (num_workers, epsilon):
            raise SchedulerError(
                f"rejoin refused: the State Server serves a run with num_workers "
                f"{db.num_workers} and epsilon {db.epsilon!r}, the rejoin asks for "
                f"num_workers {num_workers} and epsilon {epsilon!r}"
            )
        return False

    def reset(self, rank: int, t: int, te: float, now: float) -> int:
        """Worker ``rank`` starts round ``t`` at ``te``; a newer round clears every k/ready.

        The first reset of a run anchors its round (any ``t``); with bounds, a later one may
        name at most ``round + round_step`` (else BoundsError, nothing changes)."""
        self._check_rank(rank)
        self._check_round(t)
        db = self.db
        if t > db.round:
            db.advanced = db.advanced or db.anchored  # a round ended (not the anchoring)
            db.start_round(t)
            self._best_valid = False  # every key changed (round, ready)
        db.anchored = True
        rec, old = self._record(rank)
        rec.t, rec.te, rec.k, rec.ready, rec.told, rec.last_seen = t, te, 0, False, False, now
        self._changed(rec, old)
        return db.round

    def report(self, rank: int, k: int, c: float, te: float, now: float) -> WorkerRecord:
        """Record a worker's progress (k local iterations, c s/batch, te last finish)."""
        self._check_rank(rank)
        rec, old = self._record(rank)
        if rec.t < self.db.round:
            # Queries carry no round. A worker that computes has passed the barrier that
            # ended the previous round, so it is in the current one (a lost reset, or a
            # re-init in the middle of a run, would otherwise stall the run).
            rec.t = self.db.round
        rec.k, rec.te, rec.last_seen = k, te, now
        if c > 0.0:  # 0 means "not measured": keep what we know
            self._set_c(rec, c)
        self._changed(rec, old)
        return rec

    def query(self, rank: int, k: int, c: float, te: float, now: float) -> str:
        """Record progress, then answer ``compute`` or ``sync`` (Alg. 2)."""
        rec = self.report(rank, k, c, te, now)
        action = self.decide(rec, now)
        if action == SYNC:
            self.mark_synced(rec)
        return action

    def hold(
        self, rank: int, t: int, k: int, c: float, te: float, now: float
    ) -> WorkerRecord | None:
        """Progress of a non-blocking worker in round ``t`` (it waits to be told sync).

        A worker's first hold of a round (its record is in an older round) is its reset:
        ``te`` is then the time it started the round. Returns the record, or None when ``t``
        is older than the current round: the worker was told sync in round ``t`` already
        and the others have moved on (only its capability is kept). With bounds, ``t`` is
        checked as a reset's.
        """
        self._check_rank(rank)
        self._check_round(t)
        if t < self.db.round:
            rec = self.db.records.get(rank)
            if rec is not None and c > 0.0:
                old = _key(rec, self.db.round)
                self._set_c(rec, c)
                self._changed(rec, old)
            return None
        rec = self.db.records.get(rank)
        if rec is None or rec.t < t:
            self.reset(rank, t, te, now)
        return self.report(rank, k, c, te, now)

    def mark_synced(self, rec: WorkerRecord) -> None:
        """``rec`` was answered sync: ready (at the barrier) once it has done an iteration,
        told (sync after the batch it is computing) before that."""
        if rec.k == 0:
            rec.told = True
            return
        old = _key(rec, self.db.round)
        rec.ready = True
        self._changed(rec, old)

    # --- Alg. 2 -----------------------------------------------------------------------

    def slowest(self) -> WorkerRecord | None:
        """The straggler every worker will wait for, or None while any capability is unknown.

        The slowest is the record with the largest c. Among equal c it is the one that will
        reach the barrier last: not yet in the current round, then not yet ready, then the
        latest ``te``; lowest rank last, so the choice is deterministic.

        Kept up to date incrementally (O(1) per message; one rescan per round), so a query
        costs the same with 4 workers as with 1,000.
        """
        db = self.db
        if self._known < db.num_workers or len(db.records) < db.num_workers:
            return None
        if not self._best_valid:
            self._best = max(db.records.values(), key=lambda rec: _key(rec, db.round))
            self._best_valid = True
        return self._best

    def decide(self, asker: WorkerRecord, now: float) -> str:
        """Alg. 2 for a worker whose record is already updated; does not mark it ready."""
        if asker.k == 0:
            return COMPUTE  # every worker computes at least one iteration per round
        if asker.ready or asker.told:
            return SYNC  # told before in this round: the answer does not flip back
        slowest = self.slowest()
        if slowest is None:
            if self.db.recovering:
                # After a restart a worker with no record may be waiting at the barrier
                # already (told sync by the lost server); it will not ask again this round,
                # so computing on would wait for it forever.
                return SYNC
            return COMPUTE  # someone's capability is unknown: it might be the slowest
        if asker.c >= slowest.c:
            return SYNC  # the asker is (one of) the slowest: one iteration per round
        if slowest.t != self.db.round:
            return COMPUTE  # the slowest has not started this round yet
        rest = slowest.c - now + slowest.te
        if slowest.ready or asker.c + self.db.epsilon > rest:
            return SYNC
        return COMPUTE

    def deadline(self, asker: WorkerRecord) -> float:
        """The server time after which :meth:`decide` answers ``asker`` sync (for k >= 1).

        :data:`DUE` when it already would, :data:`UNKNOWN` when that depends on messages not
        received yet (a capability, the slowest's reset); otherwise :func:`sync_deadline`.
        For every state and every ``now``: ``decide(asker, now) == SYNC`` exactly when
        ``now > deadline(asker)`` (tests/unit/test_nonblocking_scheduler.py).
        """
        if asker.ready or asker.told:
            return DUE
        slowest = self.slowest()
        if slowest is None:
            return DUE if self.db.recovering else UNKNOWN
        if asker.c >= slowest.c:
            return DUE
        if slowest.t != self.db.round:
            return UNKNOWN
        if slowest.ready:
            return DUE
        return sync_deadline(asker.c, slowest.c, slowest.te, self.db.epsilon)

    def is_slowest(self, rec: WorkerRecord) -> bool:
        """Whether ``rec`` is (one of) the slowest, or might be (some capability unknown):
        the others' answers depend on when it reaches the barrier."""
        slowest = self.slowest()
        return slowest is None or rec.c >= slowest.c

    def left(self, asker: WorkerRecord, now: float) -> float | None:
        """Seconds until the slowest is expected to finish its batch, when the asker is not
        the slowest and that is known and still ahead (the fill-last-batch budget)."""
        slowest = self.slowest()
        if slowest is None or slowest is asker or asker.c >= slowest.c or slowest.ready:
            return None
        if slowest.t != self.db.round:
            return None
        rest = slowest.c - now + slowest.te
        return rest if rest > 0.0 else None

    def deadline_context(self) -> tuple[object, ...]:
        """Everything besides a worker's own record that its :meth:`deadline` depends on;
        when it changes, every held request's deadline is computed again."""
        db = self.db
        s = self.slowest()
        slow = None if s is None else (s.rank, s.c, s.te, s.t == db.round, s.ready)
        return (self.generation, db.round, db.epsilon, db.recovering, slow)

    # --- the incrementally kept slowest -----------------------------------------------

    def _record(self, rank: int) -> tuple[WorkerRecord, tuple[float, bool, bool, float, int]]:
        """The record of ``rank`` (created when new) and its key before a change."""
        db = self.db
        rec = db.records.get(rank)
        if rec is None:
            rec = db.get_or_create(rank)
            return rec, (-1.0, False, False, 0.0, 0)  # below every real key
        return rec, _key(rec, db.round)

    def _set_c(self, rec: WorkerRecord, c: float) -> None:
        if rec.c <= 0.0:
            self._known += 1
        rec.c = c

    def _changed(self, rec: WorkerRecord, old: tuple[float, bool, bool, float, int]) -> None:
        """Keep the cached argmax right after ``rec``'s key changed from ``old``."""
        if not self._best_valid:
            return
        new = _key(rec, self.db.round)
        best = self._best
        if best is rec:
            if new < old:
                self._best_valid = False  # it may have lost its place: rescan when asked
        elif best is None or new > _key(best, self.db.round):
            self._best = rec

    # --- bounds -----------------------------------------------------------------------

    def last_activity(self) -> float | None:
        """Server time of the run's latest worker message (None: none yet)."""
        return max((rec.last_seen for rec in self.db.records.values()), default=None)

    def in_progress(self, now: float | None) -> bool:
        """Whether a run is in progress at ``now``: initialised, a round of it has ended on
        this server (a reset or hold moved its anchored round on), and a worker of it sent a
        message less than ``run_idle_s`` ago (``now`` None: counted as recent)."""
        db = self.db
        if not (db.initialized and db.advanced):
            return False
        idle = self.bounds.run_idle_s if self.bounds is not None else RUN_IDLE_S
        last = self.last_activity()
        return now is None or (last is not None and now - last < idle)

    def _check_size(self, num_workers: int, what: str) -> None:
        size = self.bounds.cluster_size if self.bounds is not None else None
        if size is not None and num_workers != size:
            raise BoundsError(
                f"{what} refused: this State Server serves a cluster of {size} workers "
                f"({CLUSTER_SIZE_VAR}={size}), the {what} asks for num_workers {num_workers}"
            )

    def _check_init(self, num_workers: int, now: float | None) -> None:
        bounds = self.bounds
        if bounds is None:
            return
        self._check_size(num_workers, "init")
        db = self.db
        if bounds.cluster_size is not None or num_workers == db.num_workers:
            return
        if self.in_progress(now):
            last = self.last_activity()
            ago = "" if now is None or last is None else f", a worker spoke {now - last:.1f} s ago"
            raise BoundsError(
                f"init refused: a run of {db.num_workers} workers is in progress (round "
                f"{db.round}{ago}), the init asks for num_workers {num_workers}; another size "
                f"may start a run once no worker has spoken for {bounds.run_idle_s:g} s "
                f"(or restart the State Server, or start it with {CLUSTER_SIZE_VAR})"
            )

    def _check_round(self, t: int) -> None:
        db = self.db
        if self.bounds is None or not db.anchored:
            return
        top = db.round + self.bounds.round_step
        if t > top:
            raise BoundsError(
                f"round {t} refused: the State Server's current round is {db.round}; a reset "
                f"or hold may name at most round {top}"
            )

    # --- views ------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-ready view of the whole state, one row per expected worker."""
        db = self.db
        slowest = self.slowest() if db.initialized else None
        workers = []
        for rank in range(db.num_workers):
            rec = db.records.get(rank)
            workers.append({**rec.to_dict(), "reported": True} if rec else unreported_row(rank))
        return {
            "initialized": db.initialized,
            "recovering": db.recovering,
            "cluster_size": self.bounds.cluster_size if self.bounds is not None else None,
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
