"""Driving the State Server's engine without a dispatcher thread: a queued message's stand-in
and one step of the engine on it."""

from __future__ import annotations

from StateServer.dispatcher import Engine


class Job:
    """What the engine needs of a queued message."""

    def __init__(self, msg: object) -> None:
        self.msg, self.result, self.error, self.done = msg, None, None, False

    def finish(self) -> None:
        self.done = True


def send(engine: Engine, msg: object, now: float) -> Job:
    """``msg`` handled by ``engine`` at time ``now``: its job, with the result or the error."""
    job = Job(msg)
    engine.handle(job, now)
    return job
