"""FIFO message queue plus the single dispatcher thread that owns the state.

Request threads call :meth:`Dispatcher.submit`; it enqueues the message with a one-shot
completion and blocks until the dispatcher thread has handled it. Messages are handled
strictly in arrival (enqueue) order, one at a time, so the state needs no locks.

A ``hold`` (the non-blocking protocol's delayed ACK) may be left unanswered: the handler
returns :class:`~StateServer.router.Pending`, the job goes into a :class:`HoldBook`, and the
same thread answers it when its deadline comes (it sleeps in ``queue.get`` only until the
earliest deadline), when a message makes it due, or after ``max_hold_s``.

Reads never queue: after every message that may change the state, and before answering it,
the engine publishes an immutable copy of the state (:mod:`StateServer.snapshots`), which
:meth:`Dispatcher.snapshot` returns without a lock or a wait.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .holds import DEFAULT_MAX_HOLD_S, Held, HoldBook
from .router import Pending, Router, SnapshotMsg
from .snapshots import Publisher, StateSnapshot

DEFAULT_QUEUE_SIZE = 4096
DEFAULT_TIMEOUT_S = 10.0


class OverloadedError(RuntimeError):
    """The queue is full or the dispatcher did not answer in time (HTTP 503)."""

    status = 503


class Job:
    """One queued message and its completion (a pre-acquired lock, released when done)."""

    __slots__ = ("msg", "result", "error", "_done")

    def __init__(self, msg: object) -> None:
        self.msg = msg
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def finish(self) -> None:
        """Called by the dispatcher thread once ``result`` or ``error`` is set."""
        self._done.release()

    def done(self) -> bool:
        """Whether the handler has answered (``get`` would not wait)."""
        return not self._done.locked()

    def get(self, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        """Wait for the handler; return its reply or raise its error."""
        if not self._done.acquire(timeout=timeout):
            raise OverloadedError(f"the dispatcher did not answer within {timeout:g} s")
        self._done.release()  # later get() calls return at once
        if self.error is not None:
            raise self.error
        return self.result


_STOP = object()
_WAKE = object()  # a deadline earlier than the one the dispatcher thread sleeps until


class Engine:
    """The dispatcher's work without its thread: route messages, hold requests, answer them.

    ``handle(job, now)`` routes one job (anything with ``msg``, ``result``, ``error`` and
    ``finish()``), then answers every held request that became due; ``tick(now)`` answers
    the ones whose deadline or expiry passed; ``next_time()`` is when that is next needed.
    :class:`Dispatcher` runs it in its thread with the real clock; ``bench/simulate.py``
    drives it with a simulated one.
    """

    def __init__(self, router: Router, max_hold_s: float = DEFAULT_MAX_HOLD_S) -> None:
        self.router = router
        self.holds = HoldBook(max_hold_s)
        self.handled = 0
        self._context: tuple[object, ...] | None = None  # router.hold_context() last seen
        self.published = Publisher(router)  # .current: the state as the readers see it

    def next_time(self) -> float | None:
        """The earliest time a held request must be answered (None: nothing is held)."""
        return self.holds.next_time()

    def handle(self, job: Any, now: float) -> None:
        """Route one message; a Pending result holds the job instead of answering it."""
        try:
            result = self.router.route(job.msg, now)
        except Exception as exc:  # handed to the waiting request thread
            job.error = exc
            result = None
        self.handled += 1
        self._publish(job.msg, now)  # before the answer: its sender reads its own write
        if isinstance(result, Pending):
            old = self.holds.add(result.rank, job, result.deadline, now)
            if old is not None:
                self._answer(old, now, due=False)  # superseded: the newer one is held
        else:
            job.result = result
            job.finish()
        self._update(job.msg, now)

    def tick(self, now: float) -> None:
        """Answer the held requests whose deadline or expiry is ``<= now``."""
        if self.holds:
            self._update(None, now)

    def release_all(self, now: float) -> None:
        """Answer every held request with compute (the server stops)."""
        for held in self.holds.pop_all():
            self._answer(held, now, due=False)

    def _publish(self, msg: object, now: float) -> None:
        """A new snapshot after ``msg``: the row of its rank, or all rows (no rank)."""
        if type(msg) is SnapshotMsg:
            return  # a read: nothing changed
        rank = getattr(msg, "rank", None)
        self.published.publish((rank,) if type(rank) is int else None, now)

    def _update(self, msg: object, now: float) -> None:
        """After a message: recompute the deadlines it may have changed, answer the due."""
        holds, router = self.holds, self.router
        if not holds:
            self._context = None
            return
        context = router.hold_context()
        before, self._context = self._context, context
        if before is not None and before[0] != context[0]:  # a new run: release them all
            self.release_all(now)
            return
        if context != before:
            for rank in holds.ranks():
                holds.set_deadline(rank, router.hold_deadline(rank), now)
        else:
            rank = getattr(msg, "rank", None)
            if rank in holds:
                holds.set_deadline(rank, router.hold_deadline(rank), now)
        for held in holds.pop_due(now):
            self._answer(held, now, due=held.deadline <= now)

    def _answer(self, held: Held, now: float, due: bool) -> None:
        """Answer a held request: sync when due, else compute (expired, superseded, new run)."""
        job = held.job
        late = 0.0
        if due and math.isfinite(held.deadline):
            late = max(0.0, now - max(held.deadline, held.changed))
        try:
            job.result = self.router.release(held.rank, now, now - held.since, late, due)
        except Exception as exc:
            job.error = exc
        self.published.publish((held.rank,), now)
        job.finish()


class Dispatcher:
    """A bounded FIFO queue drained by one thread that runs the :class:`Engine`."""

    def __init__(
        self,
        router: Router,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
        max_hold_s: float = DEFAULT_MAX_HOLD_S,
    ) -> None:
        self.router = router
        self.engine = Engine(router, max_hold_s)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # held by whichever thread runs the engine

    @property
    def handled(self) -> int:
        """Messages handled (written by the dispatcher thread only)."""
        return self.engine.handled

    @property
    def hold_timeout(self) -> float:
        """How long a request thread waits for the answer to a hold."""
        return self.engine.holds.max_hold_s + DEFAULT_TIMEOUT_S

    @property
    def thread_id(self) -> int | None:
        """Ident of the dispatcher thread (None before start)."""
        return self._thread.ident if self._thread else None

    def start(self) -> Dispatcher:
        """Start the dispatcher thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="esync-dispatcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish the queued messages, release the held ones, and stop."""
        if self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(timeout)

    def snapshot(self) -> StateSnapshot:
        """The state as last published (after the last message handled): no lock, no queue,
        no wait, whatever the dispatcher is doing. See :mod:`StateServer.snapshots`."""
        return self.engine.published.current

    def now(self) -> float:
        """The dispatcher's clock (the time a reader computes time-dependent fields for)."""
        return self._clock()

    def depth(self) -> int:
        """Messages waiting in the queue."""
        return self._queue.qsize()

    def held(self) -> int:
        """Requests held open (a snapshot; exact only in the dispatcher thread)."""
        return len(self.engine.holds)

    def enqueue(self, msg: object, put_timeout: float = 1.0) -> Job:
        """Queue ``msg`` without waiting for it to be handled; ``Job.get`` waits.

        Raises :class:`OverloadedError` when the queue stays full for ``put_timeout`` s.
        """
        job = Job(msg)
        try:
            self._queue.put(job, timeout=put_timeout)
        except queue.Full:
            raise OverloadedError(
                f"message queue full ({self._queue.maxsize} waiting); retry later"
            ) from None
        return job

    def submit(
        self, msg: object, timeout: float = DEFAULT_TIMEOUT_S, put_timeout: float = 1.0
    ) -> Any:
        """Queue ``msg``, wait for the dispatcher, return the handler's reply or raise its error.

        Raises :class:`OverloadedError` when the queue stays full for ``put_timeout`` seconds
        or the reply does not come within ``timeout`` seconds.
        """
        return self.enqueue(msg, put_timeout).get(timeout)

    def run_here(self, msg: object, timeout: float = DEFAULT_TIMEOUT_S) -> Job:
        """As :meth:`enqueue`, but the calling thread runs the engine itself (under the lock
        the dispatcher thread takes for each message), saving the two thread hand-overs of
        a queued message: the returned job is answered already, unless it is a held request
        (then the dispatcher thread answers it at its deadline). runserver's hot path uses
        it (fastserver.py): its admission keeps the callers competing for the lock few."""
        job = Job(msg)
        if not self._lock.acquire(timeout=timeout):
            raise OverloadedError(f"the dispatcher did not answer within {timeout:g} s")
        try:
            before = self.engine.next_time()
            self.engine.handle(job, self._clock())
            after = self.engine.next_time()
        finally:
            self._lock.release()
        if after is not None and (before is None or after < before):
            try:
                self._queue.put_nowait(_WAKE)  # it sleeps until `before`: an earlier deadline
            except queue.Full:
                pass  # it is busy with the queue, and looks at the deadlines after each message
        return job

    def _run(self) -> None:
        get, clock, engine, lock = self._queue.get, self._clock, self.engine, self._lock
        while True:
            with lock:
                wake = engine.next_time()
            try:
                job = get() if wake is None else get(timeout=max(0.0, wake - clock()))
            except queue.Empty:
                job = None
            with lock:
                now = clock()
                if job is _STOP:
                    engine.release_all(now)
                    return
                if job is None or job is _WAKE:
                    engine.tick(now)
                else:
                    engine.handle(job, now)
