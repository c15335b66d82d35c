"""Reads cannot starve workers, with real processes: a 4-worker ESync run (``launch.py -m
esync``) against the State Server launch.py starts by default (runserver, the same command,
started here with ``launcher.supervision.start_state_server`` so that the test knows its
address), while (1) 64 connections hammer ``GET /status.json`` and ``GET /`` for 20 s, or
(2) 1,000 connections are opened and left idle or half-sent. The run must finish cleanly:
no 503 to a worker, no fall-back of the non-blocking protocol, the launcher's exit code 0;
the idle connections must be closed by the server within ~10 s (its read deadline,
``config.STATE_SERVER_REQUEST_TIMEOUT_S``). Then, without a cluster, the same limits on
gunicorn's worker class, and the per-address connection cap on both server flavours.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import resource
import select
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import config
from launcher.supervision import Cluster, Proc, start_state_server
from tests.support.processes import assert_all_gone, clean_env, kill_session, start_launcher
from tests.support.run_logs import launched_pids, read_rounds, worker_folders

WORKERS = 4
FLOOD_CONNECTIONS = 64
FLOOD_S = 20.0
IDLE_CONNECTIONS = 1000
READ_TIMEOUT_S = config.STATE_SERVER_REQUEST_TIMEOUT_S
CLOSE_SLACK_S = 3.0  # the server's deadline plus this: scheduling on a busy 2-core machine


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted:
        pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")


# --- a cluster against a State Server the test started --------------------------------


@contextmanager
def _esync_run(log_dir: str, tmp_path: Path, max_time: float) -> Iterator[tuple[Proc, int]]:
    """A 4-worker non-blocking ESync run of ``max_time`` s (lenet, digits) whose workers use
    a runserver State Server started as launch.py starts its own; yields (server, port)
    once every worker has written 2 rounds, then waits for the launcher (exit code 0)."""
    with Cluster(tmp_path / "server") as cluster:
        env = clean_env(ESYNC_ACCESS_LOG="0")
        proc, url = start_state_server(cluster, "runserver", env=env, workers=WORKERS)
        port = int(url.rsplit(":", 1)[1])
        launcher = start_launcher(
            log_dir,
            *("-w", str(WORKERS), "-m", "esync", "-n", "lenet", "--state-protocol"),
            *("nonblocking", "--rounds", "100000", "--max-time", str(max_time), "-e", "0"),
            *("--eval-interval", "5", "--timeout", str(max_time + 120)),
            *("--state-server-at", f"127.0.0.1:{port}"),
        )
        out = err = ""
        try:
            _wait_for_rounds(log_dir, launcher, 2)
            yield proc, port
            assert launcher.poll() is None, "the run ended before the test was done with it"
            out, err = launcher.communicate(timeout=max_time + 150)
        finally:
            kill_session(launcher.pid)
        assert launcher.returncode == 0, (out[-3000:], err[-3000:], proc.tail(30))
        assert proc.poll() is None, proc.describe_exit()  # the server is still serving
        log = Path(proc.log_path).read_text(errors="replace")
    assert not re.search(r'"(POST|GET) [^"]*" 503 ', log), "a request was answered 503"
    assert "Traceback" not in log, log[-3000:]
    assert_all_gone(launched_pids(log_dir, "lenet", "esync"))


def _rounds(log_dir: str) -> dict[int, list[dict]]:
    if not os.path.isdir(os.path.join(log_dir, "lenet", "esync")):
        return {}
    folders = worker_folders(log_dir, "lenet", "esync")
    return {rank: read_rounds(folder) for rank, folder in folders.items()}


def _wait_for_rounds(log_dir: str, launcher: subprocess.Popen, rounds: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert launcher.poll() is None, launcher.communicate()
        done = _rounds(log_dir)
        if len(done) == WORKERS and min(len(r) for r in done.values()) >= rounds:
            return
        time.sleep(0.2)
    raise AssertionError(f"the run did not get to {rounds} rounds: {_rounds(log_dir)}")


def _check_records(log_dir: str) -> tuple[int, dict[str, int]]:
    """Every worker wrote rounds 1..N with the same checksums; returns N and the summed
    State Server counters of the records (state_fallbacks, state_rejoins, ...)."""
    records = _rounds(log_dir)
    assert sorted(records) == list(range(WORKERS))
    n = len(records[0])
    counters: Counter[str] = Counter()
    for rank, recs in records.items():
        assert [r["round"] for r in recs] == list(range(1, n + 1)), rank
        for r in recs:
            counters.update({k: v for k, v in r.items() if k.startswith("state_")})
    for i in range(n):
        assert len({records[r][i]["checksum"] for r in records}) == 1, f"round {i + 1}"
    return n, dict(counters)


# --- (1) a read flood -----------------------------------------------------------------


def _flood(port: int, seconds: float, connections: int) -> tuple[Counter[object], int]:
    """``connections`` keep-alive connections, each sending GET /status.json and GET /
    alternately, as fast as the server answers, for ``seconds``. Returns the answers by
    status (an exception's class name for a failure) and the reads answered 200."""
    stop_at = time.monotonic() + seconds
    results: list[Counter[object]] = [Counter() for _ in range(connections)]

    def hammer(counts: Counter[object]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        i = 0
        try:
            while time.monotonic() < stop_at:
                path = "/status.json" if i % 2 == 0 else "/"
                i += 1
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    body = resp.read()
                    counts[resp.status] += 1
                    if resp.status == 200:
                        json.loads(body)
                except (OSError, http.client.HTTPException) as exc:
                    counts[type(exc).__name__] += 1
                    conn.close()
        finally:
            conn.close()

    threads = [threading.Thread(target=hammer, args=(c,)) for c in results]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + 60)
    total: Counter[object] = Counter()
    for c in results:
        total.update(c)
    return total, total[200]


@pytest.mark.slow
def test_a_read_flood_does_not_disturb_a_4_worker_run(log_dir: str, tmp_path: Path) -> None:
    with _esync_run(log_dir, tmp_path, max_time=FLOOD_S + 25) as (_, port):
        before = min(len(r) for r in _rounds(log_dir).values())
        counts, served = _flood(port, FLOOD_S, FLOOD_CONNECTIONS)
        during = min(len(r) for r in _rounds(log_dir).values()) - before
    rounds, counters = _check_records(log_dir)
    print(
        f"read flood: {served} reads answered in {FLOOD_S:g} s ({dict(counts)}); "
        f"the workers did {during} rounds meanwhile, {rounds} in all; {counters}"
    )
    assert set(counts) == {200}, counts  # every read answered, none refused
    assert served >= 1000, counts
    assert during >= 3, "the workers hardly progressed during the flood"
    assert counters.get("state_fallbacks", 0) == 0, counters
    assert counters.get("state_rejoins", 0) == 0, counters


# --- (2) 1,000 idle and half-sent connections -----------------------------------------


def _open_idle(
    port: int, idle: int, partial: int, source: str = "127.0.0.1"
) -> list[tuple[socket.socket, float]]:
    """``idle`` connections that send nothing and ``partial`` that send half a request line,
    interleaved, from address ``source``. Returns each socket with the time it was opened."""
    opened = []
    kinds = [False] * idle + [True] * partial
    random.Random(0).shuffle(kinds)
    for half_sent in kinds:
        sock = socket.create_connection(("127.0.0.1", port), 10, (source, 0))
        if half_sent:
            try:
                sock.sendall(b"GET /status.json HT")
            except OSError:  # refused at accept (the per-address cap) already
                pass
        opened.append((sock, time.monotonic()))
    return opened


def _wait_closed(opened: list[tuple[socket.socket, float]], limit: float) -> list[float]:
    """Until the server has closed every connection (EOF or reset), at most ``limit`` s
    after the last was opened; returns how long after its opening each one was closed."""
    closed_after: dict[int, float] = {}
    poller = select.epoll()
    by_fd = {sock.fileno(): (sock, at) for sock, at in opened}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP)
    deadline = max(at for _, at in opened) + limit
    try:
        while len(closed_after) < len(by_fd) and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.2):
                sock, at = by_fd[fd]
                try:
                    data = sock.recv(4096, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue  # an answer (none is expected): wait for the close
                closed_after[fd] = time.monotonic() - at
                poller.unregister(fd)
    finally:
        poller.close()
    return [closed_after.get(fd, float("inf")) for fd in by_fd]


@pytest.mark.slow
def test_1000_idle_connections_are_closed_and_the_run_goes_on(log_dir: str, tmp_path: Path) -> None:
    _raise_fd_limit(IDLE_CONNECTIONS + 512)
    opened: list[tuple[socket.socket, float]] = []
    try:
        with _esync_run(log_dir, tmp_path, max_time=30) as (server, port):
            before = min(len(r) for r in _rounds(log_dir).values())
            opened = _open_idle(port, IDLE_CONNECTIONS // 2, IDLE_CONNECTIONS // 2)
            closed = _wait_closed(opened, READ_TIMEOUT_S + CLOSE_SLACK_S)
            during = min(len(r) for r in _rounds(log_dir).values()) - before
    finally:
        for sock, _ in opened:
            sock.close()
    rounds, counters = _check_records(log_dir)
    # closed before the deadline: refused at accept (seen once all were open, ~1 s later)
    at_once = sum(1 for t in closed if t < READ_TIMEOUT_S / 2)
    late = sorted(t for t in closed if t >= READ_TIMEOUT_S / 2)
    print(
        f"idle connections: {len(closed)} opened, {at_once} closed at accept (the cap of "
        f"{config.STATE_SERVER_MAX_CONNECTIONS_PER_CLIENT} per address), {len(late)} after "
        f"{late[0] if late else 0:.1f}-{late[-1] if late else 0:.1f} s; the workers did "
        f"{during} rounds meanwhile, {rounds} in all; {counters}"
    )
    assert max(closed) <= READ_TIMEOUT_S + CLOSE_SLACK_S, sorted(closed)[-5:]
    assert late and min(late) >= READ_TIMEOUT_S - 1.0, late[:5]  # not before the deadline
    cap = config.STATE_SERVER_MAX_CONNECTIONS_PER_CLIENT
    assert cap - 3 * WORKERS - 8 <= len(late) <= cap, (len(late), at_once)  # the rest refused
    assert during >= 3, "the workers hardly progressed meanwhile"
    assert counters.get("state_rejoins", 0) == 0, counters


# --- gunicorn's worker class, and the cap per address, without a cluster -----------------


def _server(cluster: Cluster, kind: str, **env: str) -> int:
    _, url = start_state_server(cluster, kind, env=clean_env(ESYNC_MAX_HOLD_S="3", **env))
    return int(url.rsplit(":", 1)[1])


def _post(conn: http.client.HTTPConnection, obj: dict) -> tuple[int, dict]:
    conn.request("POST", "/msg/", json.dumps(obj), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "partial"), [("runserver", 120), ("gunicorn", 40)])
def test_slow_clients_hold_up_no_message_and_a_held_request_is_not_cut(
    kind: str, partial: int, tmp_path: Path
) -> None:
    """120 idle and some half-sent connections from 127.0.0.2 (under its cap of 256
    connections): a worker's message is answered at once, a
    held request is held its full time (3 s here), and the slow connections are closed at
    the read deadline. gunicorn: idle connections wait in its poller (plain gthread gives
    each a thread for 5 s, and keeps them 75 s), but a half-sent request keeps a thread
    until the deadline: fewer of them than its 64 threads here (docs/state-server.md)."""
    _raise_fd_limit(1024)
    opened: list[tuple[socket.socket, float]] = []
    with Cluster(tmp_path / kind) as cluster:
        port = _server(cluster, kind)
        try:
            opened = _open_idle(port, 120, partial, "127.0.0.2")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            start = time.monotonic()
            assert _post(conn, {"msg_type": "init", "num_workers": 2, "epsilon": 0.0})[0] == 200
            hold = {"msg_type": "hold", "rank": 0, "t": 1, "k": 1, "c": 0.1, "te": time.time()}
            status, answer = _post(conn, hold)  # rank 1 unknown: held until its maximum
            took = time.monotonic() - start
            assert status == 200 and answer["action"] == "compute", answer
            assert 2.9 <= answer["held"] and took < 4.5, (answer, took)
            closed = _wait_closed(opened, READ_TIMEOUT_S + CLOSE_SLACK_S)
            assert max(closed) <= READ_TIMEOUT_S + CLOSE_SLACK_S, sorted(closed)[-5:]
            assert min(closed) >= READ_TIMEOUT_S - 1.0, sorted(closed)[:5]
            # the worker's own connection, idle since, is closed too; the client reconnects
            conn.close()
        finally:
            for sock, _ in opened:
                sock.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["runserver", "gunicorn"])
def test_the_cap_per_address_refuses_only_that_address(kind: str, tmp_path: Path) -> None:
    """8 connections from 127.0.0.2 (the cap here): the 9th from it is closed at once, a
    client from 127.0.0.1 is served meanwhile, and 127.0.0.2 is admitted again after a
    close."""
    with Cluster(tmp_path / kind) as cluster:
        port = _server(cluster, kind, ESYNC_MAX_CONNECTIONS_PER_CLIENT="8")
        held: list[socket.socket] = []
        try:
            for _ in range(8):
                sock = socket.create_connection(("127.0.0.1", port), 5, ("127.0.0.2", 0))
                held.append(sock)
            time.sleep(0.5)  # accepted and counted
            extra = socket.create_connection(("127.0.0.1", port), 5, ("127.0.0.2", 0))
            extra.settimeout(5)
            try:
                extra.sendall(b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n")
                refused = extra.recv(4096) == b""
            except OSError:  # reset
                refused = True
            finally:
                extra.close()
            assert refused, "the 9th connection from 127.0.0.2 was served"
            other = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            other.request("GET", "/status.json")
            assert other.getresponse().status == 200  # another address: served
            other.close()
            held.pop().close()
            deadline = time.monotonic() + 5
            while True:  # the slot comes free once the server has seen the close
                again = http.client.HTTPConnection(
                    "127.0.0.1", port, timeout=5, source_address=("127.0.0.2", 0)
                )
                try:
                    again.request("GET", "/status.json")
                    assert again.getresponse().status == 200
                    break
                except (OSError, http.client.HTTPException):
                    assert time.monotonic() < deadline, "127.0.0.2 was not admitted again"
                    time.sleep(0.1)
                finally:
                    again.close()
        finally:
            for sock in held:
                sock.close()
