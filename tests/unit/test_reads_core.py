"""Reads cannot starve workers, without a process or a socket: the reads (``GET /``,
``/status.json``, ``/status/``) are served from the snapshot the engine publishes after every
change (``StateServer/snapshots.py``), never through the dispatcher's queue or lock; that
snapshot shows exactly what the scheduler's own views show; and runserver's admission serves
the waiting messages before the reads."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "StateServer.stateserver.settings")
import django  # noqa: E402 (after the settings module is chosen)

django.setup()

from django.test import RequestFactory  # noqa: E402

from StateServer.dispatcher import Dispatcher, Engine  # noqa: E402
from StateServer.messages import (  # noqa: E402
    HoldMsg,
    InitMsg,
    QueryMsg,
    ReportMsg,
    ResetMsg,
)
from StateServer.router import DEFAULT_HANDLERS, Router  # noqa: E402
from StateServer.stateserver import views  # noqa: E402
from StateServer.stateserver.fastserver import Admission  # noqa: E402


class _Job:
    """What the engine needs of a job (the dispatcher's Job without its lock)."""

    def __init__(self, msg: object) -> None:
        self.msg, self.result, self.error, self.finished = msg, None, None, False

    def finish(self) -> None:
        self.finished = True


def _same_as_scheduler(engine: Engine, now: float) -> None:
    sched, snap = engine.router.scheduler, engine.published.current
    assert snap.status(now) == sched.snapshot(now)
    assert snap.upstream() == sched.upstream_view()


# --- the snapshot shows what the scheduler shows ----------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_published_snapshot_is_the_schedulers_view_after_every_message(seed: int) -> None:
    """Random runs of every message kind, held requests released by deadlines and by
    expiry, new rounds and new runs: after each step the published snapshot equals the
    scheduler's ``snapshot(now)`` and ``upstream_view()``."""
    rnd = random.Random(seed)
    engine = Engine(Router(), max_hold_s=0.5)
    now = 1000.0
    _same_as_scheduler(engine, now)  # before init: the empty state
    n = rnd.choice([1, 3, 5])
    engine.handle(_Job(InitMsg(num_workers=n, epsilon=0.01)), now)
    rounds = {rank: 1 for rank in range(n)}
    for _ in range(400):
        now += rnd.uniform(0.0, 0.05)
        rank = rnd.randrange(n)
        kind = rnd.random()
        c = rnd.choice([0.0, 0.02, 0.05, 0.1])
        if kind < 0.1:
            rounds[rank] += rnd.choice([0, 1])
            msg: object = ResetMsg(rank=rank, t=rounds[rank], te=now)
        elif kind < 0.35:
            msg = ReportMsg(rank=rank, k=rnd.randrange(4), c=c, te=now)
        elif kind < 0.6:
            msg = QueryMsg(rank=rank, k=rnd.randrange(1, 4), c=c, te=now)
        elif kind < 0.98:
            msg = HoldMsg(rank=rank, t=rounds[rank], k=rnd.randrange(3), c=c, te=now)
        else:
            n = rnd.choice([1, 3, 5])
            rounds = {r: 1 for r in range(n)}
            msg = InitMsg(num_workers=n, epsilon=0.01)
        job = _Job(msg)
        engine.handle(job, now)
        _same_as_scheduler(engine, now)
        if rnd.random() < 0.3:
            now += rnd.uniform(0.0, 0.6)
            engine.tick(now)  # answers what became due or expired
            _same_as_scheduler(engine, now)
    engine.release_all(now)
    _same_as_scheduler(engine, now)


def test_a_sender_reads_its_own_write_and_readers_see_held_answers() -> None:
    """The snapshot is published before the answer leaves, and again when a held request
    is answered (its worker is then ready)."""
    engine = Engine(Router())
    engine.handle(_Job(InitMsg(num_workers=2, epsilon=0.0)), 10.0)
    seen: list[int] = []

    class Watching(_Job):
        def finish(self) -> None:  # the sender's answer: what would a read show now?
            seen.append(engine.published.current.status(10.0)["workers"][0]["k"])
            super().finish()

    engine.handle(Watching(QueryMsg(rank=0, k=3, c=0.1, te=10.0)), 10.0)
    assert seen == [3]
    engine.handle(_Job(ResetMsg(rank=1, t=1, te=10.0)), 10.0)
    engine.handle(_Job(ReportMsg(rank=1, k=1, c=0.5, te=10.0)), 10.0)  # the slowest
    held = _Job(HoldMsg(rank=0, t=1, k=1, c=0.1, te=10.0))
    engine.handle(held, 10.0)
    assert not held.finished and engine.published.current.status(10.0)["workers"][0]["k"] == 1
    engine.tick(10.5)  # its deadline (10.0 + 0.5 - 0.1) passed
    assert held.finished and held.result.action == "sync"
    assert engine.published.current.status(10.5)["workers"][0]["ready"] is True
    _same_as_scheduler(engine, 10.5)


def test_time_dependent_fields_are_the_readers() -> None:
    engine = Engine(Router())
    engine.handle(_Job(InitMsg(num_workers=1, epsilon=0.0)), 5.0)
    snap = engine.published.current
    assert snap.taken == 5.0
    assert snap.status(9.0)["server_time"] == 9.0  # "last seen ... ago" is computed from it


def test_publication_is_cheap() -> None:
    """O(1) per message (only the message's row): a 1,000-worker run costs little more per
    message than a 4-worker one (the scheduler's O(1) per message stays true)."""

    def cost(n: int) -> float:
        engine = Engine(Router())
        engine.handle(_Job(InitMsg(num_workers=n, epsilon=0.0)), 0.0)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for i in range(2000):
                engine.published.publish((i % n,), 1.0)
            best = min(best, (time.perf_counter() - start) / 2000)
        return best

    small, large = cost(4), cost(1000)
    assert large < max(8 * small, 50e-6), (small, large)


# --- reads without the dispatcher -----------------------------------------------------


@pytest.fixture
def stuck() -> Iterator[tuple[Dispatcher, threading.Event]]:
    """A dispatcher with a run of 2 workers whose thread is stuck in a handler and whose
    queue is full: no message can be handled or queued."""
    gate = threading.Event()

    def blocking(sched: Any, msg: Any, now: float) -> Any:
        gate.wait(30)
        return DEFAULT_HANDLERS[ReportMsg](sched, msg, now)

    handlers = dict(DEFAULT_HANDLERS)
    handlers[ReportMsg] = blocking
    disp = Dispatcher(Router(handlers=handlers), maxsize=2).start()
    disp.submit(InitMsg(num_workers=2, epsilon=0.25))
    disp.submit(QueryMsg(rank=0, k=2, c=0.125, te=time.time()))
    stuck_jobs = [disp.enqueue(ReportMsg(rank=1, k=1, c=0.5, te=time.time()))]
    deadline = time.monotonic() + 5
    while disp.depth() and time.monotonic() < deadline:  # the thread took it: it is stuck
        time.sleep(0.005)
    stuck_jobs += [disp.enqueue(ReportMsg(rank=1, k=k, c=0.5, te=time.time())) for k in (2, 3)]
    assert disp.depth() == 2
    try:
        yield disp, gate
    finally:
        gate.set()
        for job in stuck_jobs:
            job.get(10)
        disp.stop()


def _get(view: Any, path: str) -> tuple[int, bytes, float]:
    request = RequestFactory().get(path, HTTP_HOST="localhost")
    start = time.perf_counter()
    resp = view(request)
    return resp.status_code, resp.content, time.perf_counter() - start


def test_reads_answer_while_the_dispatcher_is_stuck_and_its_queue_full(
    stuck: tuple[Dispatcher, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    disp, _ = stuck
    monkeypatch.setattr(views, "get_dispatcher", lambda: disp)
    handled = disp.handled
    for _ in range(50):
        status, body, took = _get(views.status_json_view, "/status.json")
        assert status == 200 and took < 0.5, (status, took)
    snap = json.loads(body)
    assert snap["initialized"] and snap["num_workers"] == 2 and snap["epsilon"] == 0.25
    assert snap["workers"][0]["k"] == 2 and snap["workers"][1]["reported"] is False
    assert snap["queue_depth"] == 2  # the queue is full, and the reads did not add to it
    status, body, _ = _get(views.index_view, "/")
    assert status == 200
    upstream = json.loads(body)
    row = snap["workers"][0]
    assert upstream["records"][0] == [0, 2, 0.125, row["te"], False, row["round"]]
    status, page, _ = _get(views.status_view, "/status/")
    assert status == 200 and b", 2 workers, epsilon 0.25 s" in page and b"queue depth 2" in page
    assert disp.depth() == 2 and disp.handled == handled  # nothing went through the queue


def test_reads_need_no_lock(stuck: tuple[Dispatcher, threading.Event]) -> None:
    """A reader never takes the dispatcher's lock (the one ``run_here`` and the dispatcher
    thread take for every message): held by someone else, a read answers at once."""
    disp, _ = stuck
    assert not disp._lock.acquire(blocking=False), "the stuck thread holds the engine's lock"
    start = time.perf_counter()
    snap = disp.snapshot()
    assert time.perf_counter() - start < 0.05 and snap.num_workers == 2


def test_the_stuck_messages_show_once_handled(stuck: tuple[Dispatcher, threading.Event]) -> None:
    disp, gate = stuck
    before = disp.snapshot()
    gate.set()
    deadline = time.monotonic() + 10
    while disp.snapshot().version < before.version + 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    after = disp.snapshot()
    assert after.version == before.version + 3
    assert after.status(disp.now())["workers"][1]["k"] == 3


def test_readers_see_whole_snapshots_while_messages_flow() -> None:
    """Threads reading while others send: every snapshot is whole (one row per worker),
    versions never go back, and the last one is the scheduler's state."""
    disp = Dispatcher(Router()).start()
    n, stop, errors = 8, threading.Event(), []
    try:
        disp.submit(InitMsg(num_workers=n, epsilon=0.0))

        def read() -> None:
            last = -1
            while not stop.is_set():
                snap = disp.snapshot()
                status = snap.status(disp.now())
                if snap.version < last or len(status["workers"]) != n:
                    errors.append((snap.version, last, len(status["workers"])))
                last = snap.version
                time.sleep(0.0005)  # a reader waits for its network; a spinning one would
                # only keep the GIL from the dispatcher thread

        def send(rank: int) -> None:
            for k in range(1, 200):
                disp.submit(ReportMsg(rank=rank, k=k, c=0.01, te=time.time()))

        readers = [threading.Thread(target=read) for _ in range(4)]
        senders = [threading.Thread(target=send, args=(r,)) for r in range(n)]
        for th in readers + senders:
            th.start()
        for th in senders:
            th.join(60)
        stop.set()
        for th in readers:
            th.join(10)
        assert not errors, errors[:3]
        final = disp.snapshot().status(0.0)
        assert [w["k"] for w in final["workers"]] == [199] * n
    finally:
        stop.set()
        disp.stop()


# --- runserver's admission: the messages first ------------------------------------------


def test_a_read_lets_the_waiting_messages_go_first() -> None:
    """One place; a read holds it while another read and a message wait: the read hands its
    place over (``yield_place``): the message is served before both reads, which are then
    served in the order they queued as reads."""
    adm = Admission(1)
    order: list[str] = []
    lock = threading.Lock()
    adm.enter()  # the read's place (as after enter_when_readable)

    def request(name: str, low: bool) -> None:
        adm.enter(low)
        with lock:
            order.append(name)
        adm.leave()

    waiting = [
        threading.Thread(target=request, args=("read 2", True)),
        threading.Thread(target=request, args=("message", False)),
    ]
    for th in waiting:
        th.start()
        time.sleep(0.05)  # queued in this order
    adm.yield_place()  # the first read finds it is a read: the message goes first
    with lock:
        order.append("read 1")
    adm.leave()
    for th in waiting:
        th.join(5)
    assert order == ["message", "read 2", "read 1"]


def test_a_read_keeps_its_place_when_nobody_waits() -> None:
    adm = Admission(1)
    adm.enter()
    start = time.perf_counter()
    adm.yield_place()  # nobody waits: no hand-over
    assert time.perf_counter() - start < 0.05
    adm.leave()
    assert adm._inside == 0
