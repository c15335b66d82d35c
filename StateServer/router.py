"""Router and handlers: one handler per message type, run by the dispatcher thread only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .messages import AckMsg, HoldMsg, InitMsg, QueryMsg, ReportMsg, ResetMsg, ResponseMsg
from .scheduler import COMPUTE, SYNC, Scheduler


@dataclass(frozen=True, slots=True)
class SnapshotMsg:
    """Internal request for a read-only view of the state (status page, ``GET /``)."""

    view: str = "status"  # "status" or "upstream"
    msg_type: str = "snapshot"


@dataclass(frozen=True, slots=True)
class Pending:
    """A handler's "no answer yet": the dispatcher holds the request of ``rank`` until
    ``deadline`` (server time; ``inf``: until the state changes) -- the delayed ACK."""

    rank: int
    deadline: float


Handler = Callable[[Scheduler, Any, float], Any]


def handle_init(sched: Scheduler, msg: InitMsg, now: float) -> AckMsg:
    """Start a new run; or, with ``rejoin``, re-register after a restart (keeps records)."""
    if msg.rejoin:
        sched.rejoin(msg.num_workers, msg.epsilon, now)
    else:
        sched.init(msg.num_workers, msg.epsilon, now)
    return AckMsg(of="init", round=sched.db.round)


def handle_reset(sched: Scheduler, msg: ResetMsg, now: float) -> AckMsg:
    """A worker enters a round."""
    rnd = sched.reset(msg.rank, msg.t, msg.te, now)
    return AckMsg(of="reset", round=rnd, rank=msg.rank)


def handle_report(sched: Scheduler, msg: ReportMsg, now: float) -> AckMsg:
    """A worker's progress, no decision."""
    sched.report(msg.rank, msg.k, msg.c, msg.te, now)
    return AckMsg(of="report", round=sched.db.round, rank=msg.rank)


def handle_query(sched: Scheduler, msg: QueryMsg, now: float) -> ResponseMsg:
    """A worker's progress plus Alg. 2's answer."""
    action = sched.query(msg.rank, msg.k, msg.c, msg.te, now)
    left = sched.left(sched.db.records[msg.rank], now) if action == SYNC else None
    return ResponseMsg(rank=msg.rank, round=sched.db.round, action=action, left=left)


def handle_hold(sched: Scheduler, msg: HoldMsg, now: float) -> ResponseMsg | Pending:
    """A non-blocking worker's progress: answer sync at once when due, compute at once when
    the server still needs the worker's own capability (it sends it after its next batch),
    else hold the request until its deadline."""
    rec = sched.hold(msg.rank, msg.t, msg.k, msg.c, msg.te, now)
    if rec is None:  # an older round: it synchronised already, the others moved on
        return ResponseMsg(rank=msg.rank, round=sched.db.round, action=SYNC, held=0.0, late=0.0)
    deadline = sched.deadline(rec)
    if deadline <= now:
        return answer_hold(sched, msg.rank, now, 0.0, 0.0)
    if rec.c <= 0.0:
        return ResponseMsg(rank=msg.rank, round=sched.db.round, action=COMPUTE, held=0.0)
    return Pending(msg.rank, deadline)


def answer_hold(sched: Scheduler, rank: int, now: float, held: float, late: float) -> ResponseMsg:
    """The sync answer to a hold of ``rank`` that is due (marks it told or ready)."""
    rec = sched.db.records[rank]
    left = sched.left(rec, now)
    final = rec.k == 0 and sched.is_slowest(rec)  # its arrival at the barrier matters
    sched.mark_synced(rec)
    return ResponseMsg(
        rank=rank, round=sched.db.round, action=SYNC, left=left, held=held, late=late, final=final
    )


def handle_snapshot(sched: Scheduler, msg: SnapshotMsg, now: float) -> dict[str, Any]:
    """Read-only view of the state."""
    return sched.upstream_view() if msg.view == "upstream" else sched.snapshot(now)


DEFAULT_HANDLERS: dict[type, Handler] = {
    InitMsg: handle_init,
    ResetMsg: handle_reset,
    ReportMsg: handle_report,
    QueryMsg: handle_query,
    HoldMsg: handle_hold,
    SnapshotMsg: handle_snapshot,
}


class Router:
    """Dispatch a parsed message to the handler of its type."""

    def __init__(
        self, scheduler: Scheduler | None = None, handlers: dict[type, Handler] | None = None
    ) -> None:
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.handlers = dict(DEFAULT_HANDLERS if handlers is None else handlers)

    def route(self, msg: object, now: float) -> Any:
        """Run the handler of ``msg``'s type and return its reply."""
        handler = self.handlers.get(type(msg))
        if handler is None:
            raise TypeError(f"no handler for {type(msg).__name__}")
        return handler(self.scheduler, msg, now)

    # --- held requests (called by the dispatcher thread) ---------------------------------

    def hold_context(self) -> tuple[object, ...]:
        """What every held request's deadline depends on (see Scheduler.deadline_context)."""
        return self.scheduler.deadline_context()

    def hold_deadline(self, rank: int) -> float:
        """The deadline of a held request of ``rank`` in the current state."""
        rec = self.scheduler.db.records.get(rank)
        return self.scheduler.deadline(rec) if rec is not None else float("inf")

    def release(self, rank: int, now: float, held: float, late: float, due: bool) -> ResponseMsg:
        """The answer to a held request: sync when ``due``, else compute (it expired, was
        superseded, or its run was re-initialised: the worker sends its progress again)."""
        sched = self.scheduler
        if due and rank in sched.db.records:
            return answer_hold(sched, rank, now, held, late)
        return ResponseMsg(rank=rank, round=sched.db.round, action=COMPUTE, held=held)
