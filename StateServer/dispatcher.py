"""FIFO message queue plus the single dispatcher thread that owns the state.

Request threads call :meth:`Dispatcher.submit`; it enqueues the message with a one-shot
completion and blocks until the dispatcher thread has handled it. Messages are handled
strictly in arrival (enqueue) order, one at a time, so the state needs no locks.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .router import Router

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

    def get(self, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        """Wait for the handler; return its reply or raise its error."""
        if not self._done.acquire(timeout=timeout):
            raise OverloadedError(f"the dispatcher did not answer within {timeout:g} s")
        self._done.release()  # later get() calls return at once
        if self.error is not None:
            raise self.error
        return self.result


_STOP = object()


class Dispatcher:
    """A bounded FIFO queue drained by one thread that runs the router."""

    def __init__(
        self,
        router: Router,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.router = router
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._clock = clock
        self._thread: threading.Thread | None = None
        self.handled = 0  # messages handled (written by the dispatcher thread only)

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
        """Ask the thread to finish the queued messages and stop; wait for it."""
        if self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(timeout)

    def depth(self) -> int:
        """Messages waiting in the queue."""
        return self._queue.qsize()

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

    def _run(self) -> None:
        get, route, clock = self._queue.get, self.router.route, self._clock
        while True:
            job = get()
            if job is _STOP:
                return
            try:
                job.result = route(job.msg, clock())
            except Exception as exc:  # handed to the waiting request thread
                job.error = exc
            self.handled += 1
            job.finish()
