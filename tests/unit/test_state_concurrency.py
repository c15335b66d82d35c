"""The FIFO queue and the single dispatcher under many concurrent submitters."""

from __future__ import annotations

import threading
import time

import pytest

from StateServer.dispatcher import Dispatcher, OverloadedError
from StateServer.messages import InitMsg, QueryMsg, ReportMsg, ResetMsg
from StateServer.router import DEFAULT_HANDLERS, Router, SnapshotMsg
from StateServer.scheduler import SchedulerError

THREADS = 24
PER_THREAD = 150
BURST = 5


class RecordingRouter(Router):
    """The real router, plus a log of (rank, k, thread) in the order messages are handled."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[int, int, int]] = []

    def route(self, msg: object, now: float) -> object:
        if isinstance(msg, ReportMsg | QueryMsg):
            self.log.append((msg.rank, msg.k, threading.get_ident()))
        return super().route(msg, now)


def _worker(disp: Dispatcher, rank: int, errors: list[BaseException], answers: list[str]) -> None:
    """Reset, then PER_THREAD messages with k = 0, 1, ...; every other burst is not awaited
    message by message (queued back to back, then collected), so FIFO order is tested too."""
    try:
        disp.submit(ResetMsg(rank=rank, t=1, te=time.time()))
        k = 0
        while k < PER_THREAD:
            burst = []
            for _ in range(BURST if (k // BURST) % 2 else 1):
                msg_cls = QueryMsg if k % 2 else ReportMsg
                msg = msg_cls(rank=rank, k=k, c=0.001 * (rank + 1), te=time.time())
                burst.append((msg_cls, disp.enqueue(msg, put_timeout=10)))
                k += 1
            for msg_cls, job in burst:
                reply = job.get(10)
                if msg_cls is QueryMsg:
                    answers.append(reply.action)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_no_lost_or_reordered_updates() -> None:
    router = RecordingRouter()
    disp = Dispatcher(router, maxsize=8).start()
    try:
        disp.submit(InitMsg(num_workers=THREADS, epsilon=0.0))
        errors: list[BaseException] = []
        answers: list[str] = []
        threads = [
            threading.Thread(target=_worker, args=(disp, r, errors, answers))
            for r in range(THREADS)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors[:3]
        assert all(not th.is_alive() for th in threads)
        # nothing lost: every message was handled exactly once
        assert len(router.log) == THREADS * PER_THREAD
        assert disp.handled == 1 + THREADS * (1 + PER_THREAD)
        # handled in order: per rank, k is 0, 1, 2, ... exactly as each thread sent them
        for rank in range(THREADS):
            ks = [k for r, k, _ in router.log if r == rank]
            assert ks == list(range(PER_THREAD)), rank
        # only the dispatcher thread touched the state
        assert {tid for _, _, tid in router.log} == {disp.thread_id}
        # the last update of every rank is the one in the table
        db = router.scheduler.db
        assert {r: rec.k for r, rec in db.records.items()} == {
            r: PER_THREAD - 1 for r in range(THREADS)
        }
        assert set(answers) <= {"compute", "sync"} and len(answers) == THREADS * PER_THREAD // 2
    finally:
        disp.stop()
    assert not disp._thread.is_alive()


def test_interleaving_is_really_concurrent() -> None:
    """Guard against a vacuous test: submissions of different ranks do interleave."""
    router = RecordingRouter()
    disp = Dispatcher(router).start()
    try:
        disp.submit(InitMsg(num_workers=THREADS, epsilon=0.0))
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_worker, args=(disp, r, errors, [])) for r in range(THREADS)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        switches = sum(1 for a, b in zip(router.log, router.log[1:], strict=False) if a[0] != b[0])
        assert not errors and switches > THREADS
    finally:
        disp.stop()


def test_errors_reach_the_submitter_and_leave_state_unchanged() -> None:
    disp = Dispatcher(Router()).start()
    try:
        disp.submit(InitMsg(num_workers=2, epsilon=0.0))
        before = disp.submit(SnapshotMsg())
        with pytest.raises(SchedulerError, match="out of range"):
            disp.submit(QueryMsg(rank=5, k=1, c=0.1, te=1.0))
        after = disp.submit(SnapshotMsg())
        assert {**before, "server_time": 0} == {**after, "server_time": 0}
    finally:
        disp.stop()


def test_bounded_queue_refuses_when_full() -> None:
    gate = threading.Event()

    def blocking(sched: object, msg: object, now: float) -> str:
        gate.wait(10)
        return "done"

    handlers = dict(DEFAULT_HANDLERS)
    handlers[SnapshotMsg] = blocking
    disp = Dispatcher(Router(handlers=handlers), maxsize=2).start()
    results: list[object] = []
    try:
        # one message blocks the dispatcher, two fill the queue
        pending = [
            threading.Thread(target=lambda: results.append(disp.submit(SnapshotMsg())))
            for _ in range(3)
        ]
        for th in pending:
            th.start()
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while disp.depth() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert disp.depth() == 2
        with pytest.raises(OverloadedError, match="queue full"):
            disp.submit(SnapshotMsg(), put_timeout=0.05)
        gate.set()
        for th in pending:
            th.join(10)
        assert results == ["done"] * 3
    finally:
        gate.set()
        disp.stop()


def test_submit_times_out_when_the_dispatcher_is_stuck() -> None:
    gate = threading.Event()

    def blocking(sched: object, msg: object, now: float) -> str:
        gate.wait(10)
        return "late"

    handlers = dict(DEFAULT_HANDLERS)
    handlers[SnapshotMsg] = blocking
    disp = Dispatcher(Router(handlers=handlers)).start()
    try:
        with pytest.raises(OverloadedError, match="did not answer"):
            disp.submit(SnapshotMsg(), timeout=0.1)
    finally:
        gate.set()
        disp.stop()
