"""Router and handlers: one handler per message type, run by the dispatcher thread only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .messages import AckMsg, InitMsg, QueryMsg, ReportMsg, ResetMsg, ResponseMsg
from .scheduler import Scheduler


@dataclass(frozen=True, slots=True)
class SnapshotMsg:
    """Internal request for a read-only view of the state (status page, ``GET /``)."""

    view: str = "status"  # "status" or "upstream"
    msg_type: str = "snapshot"


Handler = Callable[[Scheduler, Any, float], Any]


def handle_init(sched: Scheduler, msg: InitMsg, now: float) -> AckMsg:
    """Start a new run."""
    sched.init(msg.num_workers, msg.epsilon)
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
    return ResponseMsg(rank=msg.rank, round=sched.db.round, action=action)


def handle_snapshot(sched: Scheduler, msg: SnapshotMsg, now: float) -> dict[str, Any]:
    """Read-only view of the state."""
    return sched.upstream_view() if msg.view == "upstream" else sched.snapshot(now)


DEFAULT_HANDLERS: dict[type, Handler] = {
    InitMsg: handle_init,
    ResetMsg: handle_reset,
    ReportMsg: handle_report,
    QueryMsg: handle_query,
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
