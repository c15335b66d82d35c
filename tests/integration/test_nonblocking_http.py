"""The non-blocking protocol over real HTTP: the held request (the delayed ACK) on runserver
and gunicorn, and the worker's side (ESync with a ProgressChannel) against real and fake
servers: no waiting between iterations, fallback to the blocking query, restarts."""

from __future__ import annotations

import http.server
import os
import signal
import statistics
import threading
import time

import pytest

from launcher.supervision import (
    free_port,
)
from tests.support.http import JSONStubHandler
from tests.support.state_server import RunningServer, ServerSpec, serves
from trainer.pacing import StateServerPacing
from trainer.state_client import (
    ProgressChannel,
    StateClient,
    StateServerError,
    StateServerUnreachable,
)
from trainer.types import LocalProgress, RoundStats

MAX_HOLD_S = 1.5  # the servers here answer compute after holding a request this long


# the servers of this module: runserver and gunicorn, holding a request at most MAX_HOLD_S
HOLDING = tuple(
    ServerSpec(kind, env=(("ESYNC_MAX_HOLD_S", str(MAX_HOLD_S)),))
    for kind in ("runserver", "gunicorn")
)
RUNSERVER_HOLDING = HOLDING[0]


def _two_workers(url: str, epsilon: float = 0.0) -> StateClient:
    """A run of 2 workers whose capabilities (0.2 s and 1.0 s) the server knows."""
    admin = StateClient(url, retry_for=5)
    admin.init(2, epsilon)
    admin.report(0, 1, 0.2, time.time())
    admin.report(1, 1, 1.0, time.time())
    return admin


@serves(*HOLDING)
def test_a_held_request_is_answered_at_its_deadline(state_server: RunningServer) -> None:
    admin = _two_workers(state_server.url)
    with StateClient(state_server.url) as slow, StateClient(state_server.url) as fast:
        te = time.time()
        s = slow.hold(1, 2, 0, 1.0, te)  # the slowest: told at once (after this batch)
        assert s.action == "sync" and s.final and s.held == 0.0
        started = time.monotonic()
        f = fast.hold(0, 2, 0, 0.2, te)  # sync once 0.2 > 1.0 - (now - te): at te + 0.8
        waited = time.monotonic() - started
        assert f.action == "sync" and not f.final
        assert 0.7 < waited < 1.0, waited
        assert f.left == pytest.approx(0.2, abs=0.1) and f.held == pytest.approx(waited, abs=0.1)
        assert f.late is not None and f.late < 0.05
        # already due: answered at once
        started = time.monotonic()
        assert fast.hold(0, 2, 5, 0.2, time.time()).action == "sync"
        assert time.monotonic() - started < 0.2
        assert admin.status()["held"] == 0
    admin.close()


@serves(*HOLDING)
def test_the_slowest_reaching_the_barrier_releases_the_others(state_server: RunningServer) -> None:
    admin = _two_workers(state_server.url)
    with StateClient(state_server.url) as slow, StateClient(state_server.url) as fast:
        te = time.time()
        assert slow.hold(1, 2, 0, 1.0, te).final
        answer: list = []
        waiter = threading.Thread(target=lambda: answer.append(fast.hold(0, 2, 0, 0.2, te)))
        waiter.start()
        time.sleep(0.2)
        assert admin.status()["held"] == 1 and not answer
        assert slow.hold(1, 2, 1, 1.0, time.time()).action == "sync"  # at the barrier
        waiter.join(2)
        assert answer and answer[0].action == "sync" and answer[0].held < 0.5
    admin.close()


@serves(*HOLDING)
def test_held_requests_expire_and_are_released_by_a_new_run(state_server: RunningServer) -> None:
    admin = _two_workers(state_server.url)
    with StateClient(state_server.url) as fast:
        # the slowest has not started round 2: no deadline yet; held for MAX_HOLD_S
        started = time.monotonic()
        r = fast.hold(0, 2, 0, 0.2, time.time())
        assert r.action == "compute" and MAX_HOLD_S - 0.1 < time.monotonic() - started < 3
        answer: list = []
        waiter = threading.Thread(target=lambda: answer.append(fast.hold(0, 2, 1, 0.2, 1.0)))
        waiter.start()
        time.sleep(0.2)
        admin.init(2, 0.0)  # a plain init: a new run; the held request is let go
        waiter.join(2)
        assert answer and answer[0].action == "compute" and answer[0].held < 0.5
    admin.close()


@serves(RUNSERVER_HOLDING, private=True)
def test_a_held_request_fails_at_once_when_the_server_dies(state_server: RunningServer) -> None:
    srv = state_server
    try:
        _two_workers(srv.url).close()
        errors: list[BaseException] = []

        def hold() -> None:
            try:
                StateClient(srv.url).hold(0, 2, 0, 0.2, time.time(), wait=30)
            except StateServerError as exc:
                errors.append(exc)

        waiter = threading.Thread(target=hold)
        waiter.start()
        time.sleep(0.3)
        killed = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGKILL)
        waiter.join(5)
        assert errors and isinstance(errors[0], StateServerUnreachable)
        assert time.monotonic() - killed < 2
    finally:
        srv.stop()


# --- the worker's side ----------------------------------------------------------------------


def _esync(url: str, rank: int, late_s: float = 12.0, fill: bool = False) -> StateServerPacing:
    """ESync's State Server protocol (its pacing) as worker ``rank`` of 2 uses it."""
    client = StateClient(url, retry_for=10)
    strategy = StateServerPacing(client, 64, 0.0, "nonblocking", fill_last_batch=fill)
    strategy.rank, strategy.num_workers = rank, 2
    strategy.channel = ProgressChannel(StateClient(url), rank, late_s=late_s)
    return strategy


@serves(RUNSERVER_HOLDING, private=True)
def test_should_sync_never_waits_for_a_slow_or_stopped_server(state_server: RunningServer) -> None:
    srv = state_server
    strategy = _esync(srv.url, 0)
    try:
        _two_workers(srv.url).close()
        stats = RoundStats()
        strategy.begin_round(2, stats)
        os.kill(srv.proc.pid, signal.SIGSTOP)  # a server that answers nothing at all
        times = []
        progress = LocalProgress(c=0.2)
        for k in range(1, 200):
            progress.k, progress.te = k, time.time()
            started = time.perf_counter()
            assert strategy.should_sync(progress, stats) is False
            times.append(time.perf_counter() - started)
            time.sleep(0.002)
        started = time.perf_counter()
        strategy.begin_round(3, stats)  # the next round's hand-over does not wait either
        times.append(time.perf_counter() - started)
        assert statistics.median(times) < 0.0002, statistics.median(times)
        assert max(times) < 0.005, max(times)  # ~1 ms, with room for a loaded machine
        assert stats.query_s < 0.05 and strategy.channel.trouble() is None
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        strategy.close()
        srv.stop()


class _HoldsNeverAnswered(JSONStubHandler):
    """Answers queries (sync) and resets, but keeps every hold open: a lost delayed ACK."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        msg = self.read_json()
        self.seen.append(msg["msg_type"])
        if msg["msg_type"] == "hold":
            time.sleep(30)
            return
        reply = {"msg_type": "response", "rank": msg["rank"], "round": 2, "action": "sync"}
        if msg["msg_type"] != "query":
            reply = {"msg_type": "ack", "of": msg["msg_type"], "round": 2, "rank": msg["rank"]}
        self.reply(reply)


def test_a_late_answer_falls_back_to_the_blocking_query() -> None:
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _HoldsNeverAnswered)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    strategy = _esync(f"http://127.0.0.1:{port}", 1, late_s=0.4)
    try:
        stats = RoundStats()
        strategy.begin_round(2, stats)
        progress, started, decisions = LocalProgress(c=0.05), time.monotonic(), []
        while time.monotonic() - started < 2 and not (decisions and decisions[-1]):
            progress.k += 1
            decisions.append(strategy.should_sync(progress, stats))
            time.sleep(0.05)
        assert decisions[-1] is True and not any(decisions[:-1])  # no stall, no early sync
        assert 0.4 <= time.monotonic() - started < 1.5
        assert stats.extra["state_fallbacks"] == 1 and "query" in _HoldsNeverAnswered.seen
        trouble = strategy.channel.trouble() or ""
        assert "no answer to a hold" in trouble or "timed out" in trouble
    finally:
        strategy.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@serves(RUNSERVER_HOLDING, private=True)
def test_a_worker_survives_a_server_restart_by_falling_back_and_rejoining(
    state_server: RunningServer,
) -> None:
    srv = state_server
    slow, fast = _esync(srv.url, 1), _esync(srv.url, 0)
    try:
        _two_workers(srv.url).close()
        stats = {0: RoundStats(), 1: RoundStats()}
        for s in (slow, fast):
            s.begin_round(2, stats[s.rank])
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.popen.wait(10)
        srv.cluster.restart(srv.proc)  # same port, no state
        # the fast worker's held request failed: it asks the blocking way, gets 409,
        # re-registers and is answered (recovering: rank 1 has no record yet -> sync)
        progress = LocalProgress(k=0, c=0.2)
        deadline = time.monotonic() + 20
        sync = False
        while not sync and time.monotonic() < deadline:
            progress.k += 1
            progress.te = time.time()
            sync = fast.should_sync(progress, stats[0])
            time.sleep(0.05)
        assert sync and stats[0].extra["state_rejoins"] == 1
        assert stats[0].extra["state_fallbacks"] >= 1
        status = StateClient(srv.url).status()
        assert status["initialized"] and status["round"] == 2
        # the channel recovers: the next round goes through holds again
        fast.begin_round(3, RoundStats())
        time.sleep(0.3)
        assert fast.channel.trouble() is None
    finally:
        slow.close()
        fast.close()
        srv.stop()
