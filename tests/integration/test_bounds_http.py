"""The State Server's semantic bounds over real HTTP: server processes started as launch.py
starts them (``launcher.supervision.start_state_server`` with the run's number of workers,
which becomes ``ESYNC_CLUSTER_SIZE``).

Every probe of issue #23 item 3 (an init of 10,000 workers, a reset or hold of round 2**53, a
rank out of range, a round two ahead) is answered with a 4xx JSON error on every path a
request can take, and ``/status.json`` is the same before and after:

* runserver, ``POST /msg/ HTTP/1.1`` with plain headers: its raw-socket fast path
  (``fastserver._serve_lean``);
* runserver, ``POST /msg/ HTTP/1.0``: the WSGI application, whose fast path middleware
  (``fastpath.MessageFastPath``) answers a well-formed message;
* ``/init/`` and ``/reset/`` (upstream's routes, JSON), and every request to the gunicorn server
  started with ``ESYNC_FASTPATH=0``: Django's view.

A normal 4-worker sequence through the client (init, resets, queries, holds, rounds, a server
killed and restarted in place, the workers' rejoin) stays within the bounds; a server started
without a cluster size keeps a run in progress from being replaced by another size; an
invalid ``ESYNC_CLUSTER_SIZE`` stops the server at start.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.supervision import (
    CLUSTER_VARS,
    Cluster,
    LaunchError,
    Proc,
    child_env,
    start_state_server,
    wait_http,
)
from StateServer.messages import MAX_INT
from StateServer.scheduler import CLUSTER_SIZE_VAR
from trainer.state_client import StateClient, StateServerError, StateServerNotInitialised

N = 4
EPS = 0.05
START_TIMEOUT_S = 30.0


@dataclass
class Server:
    """A State Server process and plain HTTP to it."""

    kind: str
    url: str
    proc: Proc
    cluster: Cluster

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def request(
        self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
    ) -> tuple[int, dict[str, str], bytes]:
        """An HTTP/1.1 request (http.client: the headers runserver's raw-socket path takes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            headers = {"Content-Type": ctype} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def request_10(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """``POST`` as HTTP/1.0 over a raw socket: not runserver's raw-socket path, so the
        WSGI application (and its fast path middleware) answers it."""
        head = (
            f"POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock:
            sock.sendall(head + body)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head_bytes, _, payload = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, payload

    def msg(self, **fields: object) -> dict:
        status, _, data = self.request("POST", "/msg/", json.dumps(fields).encode())
        assert status == 200, (status, data)
        return json.loads(data)

    def state(self) -> dict:
        """``/status.json`` without what changes by itself."""
        status, _, data = self.request("GET", "/status.json")
        assert status == 200, data
        obj = json.loads(data)
        obj.pop("server_time")
        obj.pop("queue_depth")
        return obj


def serve(kind: str, proc_dir: Path, workers: int = N, **extra: str) -> Server:
    """Start a State Server as launch.py does (``workers``: its cluster size; 0: none)."""
    cluster = Cluster(proc_dir)
    env = child_env(1, extra, drop=CLUSTER_VARS)
    try:
        proc, url = start_state_server(
            cluster, kind, env=env, timeout=START_TIMEOUT_S, workers=workers
        )
    except BaseException:
        cluster.stop()
        raise
    return Server(kind, url, proc, cluster)


def _stop(server: Server) -> None:
    server.cluster.stop()
    assert server.proc.poll() is not None


SERVERS = {
    "runserver": ("runserver", {}),  # raw-socket fast path, WSGI middleware, Django's view
    "gunicorn-django": ("gunicorn", {"ESYNC_FASTPATH": "0"}),  # Django's view only
}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    kind, extra = SERVERS[request.param]
    srv = serve(kind, tmp_path_factory.mktemp(request.param), **extra)
    srv.kind = request.param
    try:
        yield srv
    finally:
        _stop(srv)


def in_round_2(srv: Server, size: int | None = N) -> dict:
    """A new 4-worker run that has ended round 1 and is in round 2; its state (the server's
    cluster size is ``size``)."""
    srv.msg(msg_type="init", num_workers=N, epsilon=EPS)
    now = time.time()
    for rank in range(N):
        srv.msg(msg_type="reset", rank=rank, t=1, te=now)
        srv.msg(msg_type="report", rank=rank, k=1, c=0.1 * (rank + 1), te=now)
    for rank in range(N):
        srv.msg(msg_type="reset", rank=rank, t=2, te=now)
    state = srv.state()
    assert state["round"] == 2 and state["cluster_size"] == size and state["slowest"] == 3
    assert all(w["reported"] for w in state["workers"])
    return state


def assert_json_error(
    answer: tuple[int, dict[str, str], bytes], status: int, says: list[str], label: str
) -> None:
    got, headers, data = answer
    assert got == status, (label, got, data[:300])
    assert headers.get("content-type", "").startswith("application/json"), (label, headers)
    error = json.loads(data)["error"]
    for word in says:
        assert word in error, (label, word, error)


TE = 1_764_496_000.0
PROBES: list[tuple[str, dict[str, object], int, list[str]]] = [
    ("init 10000", {"msg_type": "init", "num_workers": 10_000, "epsilon": 0.0}, 409,
     ["init refused", "4 workers", "10000"]),
    ("rejoin 10000", {"msg_type": "init", "num_workers": 10_000, "epsilon": EPS, "rejoin": True},
     409, ["rejoin refused", "4 workers", "10000"]),
    ("reset 2**53", {"msg_type": "reset", "rank": 1, "t": MAX_INT, "te": TE}, 409,
     [f"round {MAX_INT} refused", "current round is 2"]),
    ("hold 2**53", {"msg_type": "hold", "rank": 1, "t": MAX_INT, "k": 0, "c": 0.2, "te": TE}, 409,
     [f"round {MAX_INT} refused", "at most round 3"]),
    ("reset two ahead", {"msg_type": "reset", "rank": 0, "t": 4, "te": TE}, 409,
     ["round 4 refused", "at most round 3"]),
    ("hold two ahead", {"msg_type": "hold", "rank": 0, "t": 4, "k": 0, "c": 0.1, "te": TE}, 409,
     ["round 4 refused"]),
    ("query rank 4", {"msg_type": "query", "rank": 4, "k": 1, "c": 0.1, "te": TE}, 400,
     ["rank 4 out of range", "num_workers is 4"]),
    ("hold rank 9999", {"msg_type": "hold", "rank": 9999, "t": 2, "k": 1, "c": 0.1, "te": TE}, 400,
     ["rank 9999 out of range"]),
    ("reset rank -1", {"msg_type": "reset", "rank": -1, "t": 2, "te": TE}, 400, ["'rank'"]),
    ("query rank -1", {"msg_type": "query", "rank": -1, "k": 1, "c": 0.1, "te": TE}, 400,
     ["'rank'"]),
    ("c NaN", {"msg_type": "query", "rank": 0, "k": 1, "c": float("nan"), "te": TE}, 400,
     ["NaN"]),
    ("te inf", {"msg_type": "report", "rank": 0, "k": 1, "c": 0.1, "te": float("inf")}, 400,
     ["Infinity"]),
]  # fmt: skip


@pytest.mark.parametrize("transport", ["http/1.1", "http/1.0"])
def test_every_probe_is_a_json_4xx_and_changes_nothing(server: Server, transport: str) -> None:
    before = in_round_2(server)
    for label, obj, status, says in PROBES:
        body = json.dumps(obj).encode()
        if transport == "http/1.1":
            answer = server.request("POST", "/msg/", body)
        else:
            answer = server.request_10("/msg/", body)
        assert_json_error(answer, status, says, f"{server.kind} {transport} {label}")
        assert server.state() == before, f"{label} changed the state"
    # and the run goes on: round 3 is the next round
    assert server.msg(msg_type="reset", rank=0, t=3, te=time.time())["round"] == 3


UPSTREAM: list[tuple[str, dict[str, object], int, list[str]]] = [
    ("/init/", {"num_workers": 10_000, "epsilon": 0}, 409, ["init refused", "10000"]),
    ("/init/", {"num_workers": 3, "epsilon": EPS, "rejoin": "true"}, 409, ["rejoin refused"]),
    ("/reset/", {"r": 1, "t": MAX_INT, "te": TE}, 409, [f"round {MAX_INT} refused"]),
    ("/reset/", {"r": 1, "t": 4, "te": TE}, 409, ["at most round 3"]),
    ("/reset/", {"r": 4, "t": 2, "te": TE}, 400, ["rank 4 out of range"]),
    ("/reset/", {"r": -1, "t": 2, "te": TE}, 400, ["'rank'"]),
    ("/apply/", {"r": 4, "k": 1, "c": 0.1, "te": TE}, 400, ["rank 4 out of range"]),
    ("/apply/", {"r": 0, "k": 1, "c": "nan", "te": TE}, 400, ["'c'", "finite"]),
]


def test_the_upstream_routes_refuse_the_probes_too(server: Server) -> None:
    """Upstream's routes take a JSON object whose values may be numeric strings."""
    before = in_round_2(server)
    for route, fields, status, says in UPSTREAM:
        as_strings = {name: str(value) for name, value in fields.items()}
        for obj in (fields, as_strings):
            answer = server.request("POST", route, json.dumps(obj).encode())
            assert_json_error(answer, status, says, f"{server.kind} {route} {obj}")
            assert server.state() == before, f"{route} {obj} changed the state"


def test_a_server_started_for_4_workers_refuses_another_size_even_first(
    tmp_path: Path,
) -> None:
    srv = serve("runserver", tmp_path)
    try:
        before = srv.state()
        assert before["cluster_size"] == N and before["initialized"] is False
        body = json.dumps({"msg_type": "init", "num_workers": 3, "epsilon": 0.0}).encode()
        assert_json_error(srv.request("POST", "/msg/", body), 409, ["4 workers", "3"], "init 3")
        assert srv.state() == before
        assert srv.proc.env[CLUSTER_SIZE_VAR] == "4"  # what Cluster.restart starts it with
    finally:
        _stop(srv)


def test_a_normal_run_and_a_restart_with_rejoin_stay_within_the_bounds(tmp_path: Path) -> None:
    """Four workers through the client: init, resets, queries and holds over three rounds;
    the server killed with SIGKILL and restarted in place (``Cluster.restart``, the same
    environment); the workers re-register in their round (the anchor) and go on."""
    srv = serve("runserver", tmp_path)
    caps = [0.01, 0.02, 0.02, 0.04]  # rank 3 is the slowest
    try:
        with StateClient(srv.url, retry_for=10) as client:
            client.init(N, EPS)
            for t in (1, 2):  # blocking: every worker resets, the slowest syncs after one
                now = time.time()
                for rank in range(N):
                    client.reset(rank, t, now)
                for rank in range(N):
                    assert client.query(rank, 1, caps[rank], time.time()) in ("compute", "sync")
                assert client.query(3, 1, caps[3], time.time()) == "sync"
                for rank in range(3):  # the slowest is ready: the others sync
                    assert client.query(rank, 2, caps[rank], time.time()) == "sync"
                assert all(w["ready"] for w in client.status()["workers"])
            # round 3, non-blocking: the slowest's holds first, then the others' at once
            now = time.time()
            first = client.hold(3, 3, 0, caps[3], now, wait=10)
            assert first.action == "sync" and first.final and first.round == 3
            assert client.hold(3, 3, 1, caps[3], now + caps[3], wait=10).action == "sync"
            for rank in range(3):
                resp = client.hold(rank, 3, 0, caps[rank], now, wait=10)
                assert resp.action == "sync" and resp.round == 3
            status = client.status()
            assert status["round"] == 3 and status["cluster_size"] == N
            # the server dies mid-run and is restarted with the same command and environment
            os.kill(srv.proc.pid, signal.SIGKILL)
            srv.cluster.restart(srv.proc)
            wait_http(f"{srv.url}/", srv.proc, START_TIMEOUT_S)
            with pytest.raises(StateServerNotInitialised):
                client.query(0, 1, caps[0], time.time())
            now = time.time()
            client.rejoin(N, EPS)
            client.reset(0, 4, now)  # rank 0 is in round 4 already: the anchor
            for rank in (1, 2, 3):
                client.rejoin(N, EPS)
                client.reset(rank, 4, now)
            status = client.status()
            assert status["round"] == 4 and status["cluster_size"] == N
            with pytest.raises(StateServerError) as err:
                client.reset(0, 6, time.time())
            assert err.value.status == 409 and "at most round 5" in str(err.value)
            with pytest.raises(StateServerError) as err:
                client.rejoin(N + 1, EPS)
            assert err.value.status == 409 and "4 workers" in str(err.value)
            for rank in range(N):  # the new server learns the capabilities again
                action = client.query(rank, 1, caps[rank], time.time())
            assert action == "sync"  # the slowest, once every capability is known
            for rank in range(N):
                client.reset(rank, 5, time.time())
            assert client.status()["round"] == 5
    finally:
        _stop(srv)


def test_without_a_cluster_size_a_run_in_progress_keeps_its_size(tmp_path: Path) -> None:
    """A hand-started server (no ESYNC_CLUSTER_SIZE): the first init may be of any size, and
    so may the next while no round has ended; once one has, an init of another size is a
    409 naming both, one of the same size starts a new run; the round bound holds too."""
    srv = serve("runserver", tmp_path, workers=0)
    try:
        assert srv.state()["cluster_size"] is None
        srv.msg(msg_type="init", num_workers=7, epsilon=0.0)
        srv.msg(msg_type="reset", rank=6, t=12, te=TE)  # anchors; no round ended
        srv.msg(msg_type="init", num_workers=N, epsilon=EPS)
        before = in_round_2(srv, size=None)
        for obj, says in (
            ({"msg_type": "init", "num_workers": 10_000, "epsilon": 0.0}, ["in progress", "10000"]),
            ({"msg_type": "init", "num_workers": 2, "epsilon": EPS}, ["run of 4 workers", "2"]),
            ({"msg_type": "reset", "rank": 0, "t": MAX_INT, "te": TE}, ["at most round 3"]),
        ):
            body = json.dumps(obj).encode()
            assert_json_error(srv.request("POST", "/msg/", body), 409, says, str(obj))
            assert srv.state() == before
        assert srv.msg(msg_type="init", num_workers=N, epsilon=0.5)["of"] == "init"
        assert srv.state()["round"] == 0 and srv.state()["epsilon"] == 0.5
    finally:
        _stop(srv)


def test_an_invalid_cluster_size_stops_the_server_at_start(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=f"{CLUSTER_SIZE_VAR} must be an integer"):
        serve("runserver", tmp_path, workers=0, **{CLUSTER_SIZE_VAR: "four"})
