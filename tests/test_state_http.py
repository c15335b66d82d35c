"""The State Server over real HTTP: runserver and gunicorn processes on free ports."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from stub_http import JSONStubHandler

from launcher.supervision import (
    CLUSTER_VARS,
    Cluster,
    LaunchError,
    Proc,
    child_env,
    free_port,
    state_server_cmd,
    wait_http,
)
from trainer.state_client import (
    StateClient,
    StateServerError,
    StateServerNotInitialised,
    StateServerUnreachable,
)

TOKEN = "s3cret-token"
START_TIMEOUT_S = 30


@dataclass
class Server:
    """A running server process and what it answered before anyone initialised it."""

    kind: str
    port: int
    proc: Proc
    cluster: Cluster
    before_init: dict[str, tuple[int, dict]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(
        self,
        method: str,
        path: str,
        obj: object = None,
        form: dict | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict]:
        hdrs = dict(headers or {})
        body: bytes | None = None
        if form is not None:
            from urllib.parse import urlencode

            body = urlencode(form).encode()
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif obj is not None:
            body = json.dumps(obj).encode()
            hdrs.setdefault("Content-Type", "application/json")
        status, resp_headers, data = self.request(method, path, body, hdrs)
        assert resp_headers.get("content-type", "").startswith("application/json"), (
            status,
            resp_headers,
            data[:200],
        )
        return status, json.loads(data)

    def msg(self, **fields: object) -> dict:
        status, obj = self.json("POST", "/msg/", fields, headers=self.auth())
        assert status == 200, (status, obj)
        return obj

    def auth(self) -> dict[str, str]:
        return {"X-ESync-Token": TOKEN} if self.kind.endswith("+token") else {}

    def state(self) -> dict:
        """The status JSON without the fields that change by themselves."""
        status, obj = self.json("GET", "/status.json")
        assert status == 200
        obj.pop("server_time")
        obj.pop("queue_depth")
        return obj


def start_server(kind: str, proc_dir: Path) -> Server:
    """Start a ``runserver`` or ``gunicorn`` server (``+token``: with a token and a host list)
    in its own process group, its output in ``proc_dir``; record its answers before init."""
    port = free_port()
    extra = {}
    if kind.endswith("+token"):
        extra = {"ESYNC_TOKEN": TOKEN, "ESYNC_ALLOWED_HOSTS": "127.0.0.1,localhost"}
    env = child_env(extra=extra, drop=CLUSTER_VARS)
    cluster = Cluster(proc_dir)
    cmd = state_server_cmd(kind.removesuffix("+token"), "127.0.0.1", port)
    proc = cluster.start(kind.replace("+", "-"), "state-server", cmd, env)
    server = Server(kind, port, proc, cluster)
    try:
        wait_http(f"{server.url}/status.json", proc, START_TIMEOUT_S)
        assert server.request("GET", "/status.json")[0] == 200
    except (LaunchError, AssertionError, OSError):
        cluster.stop()
        raise
    query = {"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": 1.0}
    server.before_init = {
        "query": server.json("POST", "/msg/", query, headers=server.auth()),
        "apply": server.json(
            "POST", "/apply/", form={"r": 0, "k": 1, "c": 0.1, "te": 1}, headers=server.auth()
        ),
        "reset": server.json(
            "POST", "/reset/", form={"r": 0, "t": 2, "te": 1}, headers=server.auth()
        ),
        "index": server.json("GET", "/"),
    }
    return server


def _serve(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of ``kind`` for a module's tests; stopped (and checked gone) afterwards."""
    srv = start_server(kind, tmp_path_factory.mktemp("state-server"))
    try:
        yield srv
    finally:
        srv.cluster.stop()
    assert srv.proc.poll() is not None


@pytest.fixture(scope="module", params=["runserver", "gunicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _serve(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=["runserver+token", "gunicorn+token"])
def token_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _serve(request.param, tmp_path_factory)


# --- before init ----------------------------------------------------------------------


def test_everything_before_init_is_a_409_or_empty(server: Server) -> None:
    b = server.before_init
    for name in ("query", "apply", "reset"):
        status, obj = b[name]
        assert status == 409 and "not initialised" in obj["error"], (name, b[name])
    assert b["index"] == (200, {"num_workers": 0, "t": 0, "epsilon": 0.0, "records": []})


# --- typed endpoint and upstream routes -------------------------------------------------


def test_typed_endpoint(server: Server) -> None:
    assert server.msg(msg_type="reset", num_workers=2, epsilon=0.5) == {
        "msg_type": "ack",
        "of": "init",
        "round": 0,
    }
    assert server.msg(msg_type="reset", rank=1, t=3, te=10.0) == {
        "msg_type": "ack",
        "of": "reset",
        "round": 3,
        "rank": 1,
    }
    assert server.msg(msg_type="report", rank=0, k=2, c=0.01, te=11.0) == {
        "msg_type": "ack",
        "of": "report",
        "round": 3,
        "rank": 0,
    }
    assert server.msg(msg_type="query", rank=0, k=0, c=0.01, te=11.0) == {
        "msg_type": "response",
        "rank": 0,
        "round": 3,
        "action": "compute",
    }
    assert server.msg(msg_type="init", num_workers=1, epsilon=0)["of"] == "init"


def test_upstream_routes_form_and_json(server: Server) -> None:
    auth = server.auth()
    assert (
        server.json("POST", "/init/", form={"num_workers": 2, "epsilon": 0.5}, headers=auth)[0]
        == 200
    )
    assert server.json("POST", "/reset", form={"r": 0, "t": 2, "te": 100.0}, headers=auth)[0] == 200
    assert server.json("POST", "/reset/", {"r": 1, "t": 2, "te": 100.0}, headers=auth)[0] == 200
    assert server.json(
        "POST", "/apply/", form={"r": 0, "k": 0, "c": 0.1, "te": 100.0}, headers=auth
    ) == (200, {"ready": 0})
    assert server.json("POST", "/apply", {"r": 1, "k": 1, "c": 2.0, "te": 101.0}, headers=auth) == (
        200,
        {"ready": 1},
    )  # the slowest
    status, index = server.json("GET", "/")
    assert status == 200
    assert index == {
        "num_workers": 2,
        "t": 2,
        "epsilon": 0.5,
        "records": [[0, 0, 0.1, 100.0, False, 2], [1, 1, 2.0, 101.0, True, 2]],
    }


def test_rejoin_keeps_records_and_a_plain_init_forgets(server: Server) -> None:
    auth = server.auth()
    server.msg(msg_type="reset", num_workers=3, epsilon=0.5)
    server.msg(msg_type="reset", rank=1, t=4, te=10.0)
    server.msg(msg_type="report", rank=0, k=2, c=0.01, te=11.0)
    before = server.state()
    rejoin = {"msg_type": "init", "num_workers": 3, "epsilon": 0.5, "rejoin": True}
    assert server.msg(**rejoin) == {"msg_type": "ack", "of": "init", "round": 4}
    form = {"num_workers": 3, "epsilon": "0.5", "rejoin": "true"}
    assert server.json("POST", "/init/", form=form, headers=auth) == (
        200,
        {"msg_type": "ack", "of": "init", "round": 4},
    )
    assert server.state() == before and before["recovering"] is False
    status, obj = server.json("POST", "/msg/", {**rejoin, "num_workers": 4}, headers=auth)
    assert status == 400 and "rejoin refused" in obj["error"], obj
    assert server.state() == before
    server.msg(msg_type="init", num_workers=3, epsilon=0.5)  # a plain init: a new run
    state = server.state()
    assert state["round"] == 0 and not any(w["reported"] for w in state["workers"])


def test_three_worker_walkthrough(server: Server) -> None:
    """Alg. 2 end to end; time margins are seconds, so request latency cannot matter."""
    server.msg(msg_type="reset", num_workers=3, epsilon=0.5)
    now = time.time()
    for r in range(3):
        server.msg(msg_type="reset", rank=r, t=2, te=now)

    def q(rank: int, k: int, c: float, te: float) -> str:
        return server.msg(msg_type="query", rank=rank, k=k, c=c, te=te)["action"]

    assert q(0, 0, 0.0, now) == "compute"  # k == 0
    assert q(0, 1, 1.0, time.time()) == "compute"  # ranks 1, 2 unknown
    assert q(1, 1, 2.0, time.time()) == "compute"  # rank 2 unknown
    server.msg(msg_type="report", rank=2, k=0, c=100.0, te=time.time() - 10)  # rest ~ 90 s
    assert q(0, 2, 1.0, time.time()) == "compute"  # 1 + 0.5 < 90
    server.msg(msg_type="report", rank=2, k=0, c=100.0, te=time.time() - 99.8)  # rest ~ 0.2
    assert q(0, 3, 1.0, time.time()) == "sync"  # 1 + 0.5 > 0.2
    assert q(1, 2, 2.0, time.time()) == "sync"
    assert q(2, 1, 100.0, time.time()) == "sync"  # the slowest itself
    state = server.state()
    assert [w["ready"] for w in state["workers"]] == [True, True, True]
    assert [w["k"] for w in state["workers"]] == [3, 2, 1]
    assert state["slowest"] == 2 and state["round"] == 2
    # rank 0 is through the barrier first: a new round clears k and ready everywhere
    server.msg(msg_type="reset", rank=0, t=3, te=time.time())
    state = server.state()
    assert state["round"] == 3
    assert [(w["k"], w["ready"], w["round"]) for w in state["workers"]] == [
        (0, False, 3),
        (0, False, 2),
        (0, False, 2),
    ]
    assert q(0, 1, 1.0, time.time()) == "compute"  # the slowest has not reset yet
    server.msg(msg_type="reset", rank=2, t=3, te=time.time())
    assert q(2, 1, 100.0, time.time()) == "sync"
    assert q(0, 2, 1.0, time.time()) == "sync"  # the slowest is ready
    server.msg(msg_type="reset", rank=1, t=3, te=time.time())
    assert q(1, 1, 2.0, time.time()) == "sync"
    assert server.json("GET", "/")[1]["records"][2][4] is True


# --- malformed requests -----------------------------------------------------------------

Q = {"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": 1.0}
BAD_MSG_BODIES: list[tuple[str, bytes, int]] = [
    ("not JSON", b"hello", 400),
    ("empty", b"", 400),
    ("array", b"[1, 2]", 400),
    ("invalid UTF-8", b'{"msg_type": "\xff"}', 400),
    ("NaN literal", json.dumps({**Q, "c": float("nan")}).encode(), 400),
    ("Infinity literal", b'{"msg_type":"query","rank":0,"k":1,"c":Infinity,"te":1}', 400),
    ("negative c", json.dumps({**Q, "c": -0.5}).encode(), 400),
    ("negative te", json.dumps({**Q, "te": -1}).encode(), 400),
    ("string rank", json.dumps({**Q, "rank": "0"}).encode(), 400),
    ("bool rank", json.dumps({**Q, "rank": True}).encode(), 400),
    ("float k", json.dumps({**Q, "k": 1.5}).encode(), 400),
    ("missing te", json.dumps({k: v for k, v in Q.items() if k != "te"}).encode(), 400),
    ("extra field", json.dumps({**Q, "extra": 1}).encode(), 400),
    ("unknown msg_type", json.dumps({**Q, "msg_type": "fetch"}).encode(), 400),
    ("response msg_type", b'{"msg_type":"response","rank":0,"round":1,"action":"sync"}', 400),
    ("rank out of range", json.dumps({**Q, "rank": 3}).encode(), 400),
    ("rank absurd", json.dumps({**Q, "rank": 10**6}).encode(), 400),
    ("num_workers absurd", b'{"msg_type":"reset","num_workers":100000,"epsilon":0}', 400),
    ("num_workers zero", b'{"msg_type":"reset","num_workers":0,"epsilon":0}', 400),
    ("epsilon NaN", b'{"msg_type":"reset","num_workers":2,"epsilon":NaN}', 400),
    ("deep nesting", b"[" * 50_000, 400),
    ("huge integer", b'{"msg_type":"query","rank":' + b"7" * 5000 + b"}", 400),
    ("duplicate key", b'{"msg_type":"query","msg_type":"reset"}', 400),
    ("oversized body", b'{"pad": "' + b"x" * 70_000 + b'"}', 413),
    ("rejoin string", b'{"msg_type":"init","num_workers":3,"epsilon":0.5,"rejoin":"true"}', 400),
    ("rejoin integer", b'{"msg_type":"init","num_workers":3,"epsilon":0.5,"rejoin":1}', 400),
    ("rejoin null", b'{"msg_type":"init","num_workers":3,"epsilon":0.5,"rejoin":null}', 400),
    ("rejoin on a reset", b'{"msg_type":"reset","rank":0,"t":1,"te":1,"rejoin":true}', 400),
    ("rejoin, no epsilon", b'{"msg_type":"init","num_workers":3,"rejoin":true}', 400),
    ("rejoin other run", b'{"msg_type":"init","num_workers":2,"epsilon":0.5,"rejoin":true}', 400),
    ("rejoin other eps", b'{"msg_type":"init","num_workers":3,"epsilon":0.4,"rejoin":true}', 400),
]


def _assert_json_error(
    status: int, headers: dict[str, str], data: bytes, expected: int, label: str
) -> None:
    assert status == expected, (label, status, data[:300])
    assert headers.get("content-type", "").startswith("application/json"), (label, headers)
    obj = json.loads(data)
    assert isinstance(obj.get("error"), str) and obj["error"], (label, obj)


def test_malformed_messages_are_4xx_and_change_nothing(server: Server) -> None:
    server.msg(msg_type="reset", num_workers=3, epsilon=0.5)
    server.msg(msg_type="report", rank=1, k=2, c=0.2, te=5.0)
    before = server.state()
    for label, body, expected in BAD_MSG_BODIES:
        status, headers, data = server.request(
            "POST", "/msg/", body, {"Content-Type": "application/json", **server.auth()}
        )
        _assert_json_error(status, headers, data, expected, label)
    assert server.state() == before


BAD_UPSTREAM: list[tuple[str, str, dict | bytes, int]] = [
    ("apply missing te", "/apply/", {"r": 0, "k": 1, "c": 0.1}, 400),
    ("apply nan", "/apply/", {"r": 0, "k": 1, "c": "nan", "te": 1}, 400),
    ("apply inf", "/apply/", {"r": 0, "k": 1, "c": "0.1", "te": "inf"}, 400),
    ("apply negative", "/apply/", {"r": 0, "k": -1, "c": "0.1", "te": 1}, 400),
    ("apply word", "/apply/", {"r": "zero", "k": 1, "c": "0.1", "te": 1}, 400),
    ("apply rank range", "/apply/", {"r": 3, "k": 1, "c": "0.1", "te": 1}, 400),
    ("apply extra", "/apply/", {"r": 0, "k": 1, "c": "0.1", "te": 1, "x": 2}, 400),
    ("reset float t", "/reset/", {"r": 0, "t": "2.5", "te": 1}, 400),
    ("init absurd", "/init/", {"num_workers": 10**9, "epsilon": 0.5}, 400),
    ("init negative eps", "/init/", {"num_workers": 2, "epsilon": -0.5}, 400),
    ("init missing", "/init/", {"num_workers": 2}, 400),
    ("init repeated", "/init/", b"num_workers=2&num_workers=3&epsilon=0", 400),
    ("apply JSON array", "/apply/", b"[]", 400),
    ("init rejoin word", "/init/", {"num_workers": 3, "epsilon": 0.5, "rejoin": "maybe"}, 400),
    ("init rejoin other run", "/init/", {"num_workers": 2, "epsilon": 0.5, "rejoin": 1}, 400),
]


def test_malformed_upstream_requests_are_4xx_and_change_nothing(server: Server) -> None:
    from urllib.parse import urlencode

    server.msg(msg_type="reset", num_workers=3, epsilon=0.5)
    before = server.state()
    for label, path, fields, expected in BAD_UPSTREAM:
        if isinstance(fields, dict):
            body, ctype = urlencode(fields).encode(), "application/x-www-form-urlencoded"
        else:
            body = fields
            ctype = (
                "application/json" if body.startswith(b"[") else "application/x-www-form-urlencoded"
            )
        status, headers, data = server.request(
            "POST", path, body, {"Content-Type": ctype, **server.auth()}
        )
        _assert_json_error(status, headers, data, expected, label)
    assert server.state() == before


@pytest.mark.parametrize(
    "method,path,expected",
    [
        ("GET", "/msg/", 405),
        ("PUT", "/apply/", 405),
        ("DELETE", "/", 405),
        ("GET", "/init/", 405),
        ("PATCH", "/reset/", 405),
        ("POST", "/status.json", 405),
        ("GET", "/nowhere/", 404),
        ("POST", "/nowhere/", 404),
        ("POST", "/status/", 403),  # not an API route: the CSRF check refuses it
    ],
)
def test_wrong_method_or_route(server: Server, method: str, path: str, expected: int) -> None:
    before = server.state()
    status, headers, data = server.request(
        method, path, b"{}" if method != "GET" else None, server.auth()
    )
    _assert_json_error(status, headers, data, expected, f"{method} {path}")
    if expected == 405:
        assert headers.get("allow")
    assert server.state() == before


def test_lying_content_length_is_refused_without_reading(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /msg/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nContent-Length: 1000000000\r\n\r\n{}"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert server.request("GET", "/status.json")[0] == 200  # still serving


def test_protocol_garbage(server: Server) -> None:
    """runserver answers unparsable HTTP in JSON; gunicorn answers it itself (plain 400)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE /x HTTP/1.1 extra\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4") or head.startswith(b"HTTP/1.0 4"), data[:200]
    if server.kind == "runserver":
        assert b"application/json" in head and "error" in json.loads(body)
    assert server.request("GET", "/status.json")[0] == 200


# --- token --------------------------------------------------------------------------------


def test_token_required_on_writes(token_server: Server) -> None:
    srv = token_server
    init = {"msg_type": "reset", "num_workers": 2, "epsilon": 0.0}
    for headers in (
        {},
        {"X-ESync-Token": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
    ):
        status, obj = srv.json("POST", "/msg/", init, headers=headers)
        assert status == 403 and "token" in obj["error"], headers
        status, obj = srv.json(
            "POST", "/init/", form={"num_workers": 2, "epsilon": 0}, headers=headers
        )
        assert status == 403, headers
    assert srv.state()["initialized"] is False
    assert srv.json("POST", "/msg/", init, headers={"X-ESync-Token": TOKEN})[0] == 200
    assert srv.json(
        "POST",
        "/apply/",
        form={"r": 0, "k": 0, "c": 1, "te": 1},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) == (200, {"ready": 0})
    assert srv.json("GET", "/")[0] == 200  # reads need no token
    assert srv.request("GET", "/status/")[0] == 200


def test_allowed_hosts(token_server: Server) -> None:
    """The token servers run with ESYNC_ALLOWED_HOSTS=127.0.0.1,localhost."""
    for path in ("/status.json", "/status/", "/"):
        status, headers, data = token_server.request("GET", path, headers={"Host": "evil.example"})
        _assert_json_error(status, headers, data, 400, path)
        assert b"evil.example" in data
    status, headers, data = token_server.request(
        "POST", "/msg/", b"{}", {"Host": "evil.example", "X-ESync-Token": TOKEN}
    )
    _assert_json_error(status, headers, data, 400, "POST /msg/")
    assert token_server.request("GET", "/status.json", headers={"Host": "localhost"})[0] == 200


def test_client_with_and_without_token(token_server: Server) -> None:
    with StateClient(token_server.url, token=TOKEN, retry_for=5) as client:
        client.init(2, 0.0)
        assert client.query(0, 0, 0.1, time.time()) == "compute"
    start = time.monotonic()
    with (
        StateClient(token_server.url, token="nope", retry_for=30) as client,
        pytest.raises(StateServerError) as err,
    ):
        client.reset(0, 2, time.time())
    assert time.monotonic() - start < 5  # a 4xx is not retried
    assert "403" in str(err.value) and "token" in str(err.value)
    assert not isinstance(err.value, StateServerUnreachable)


# --- status -----------------------------------------------------------------------------


def test_status_page_html_and_json(server: Server) -> None:
    server.msg(msg_type="reset", num_workers=2, epsilon=0.25)
    server.msg(msg_type="query", rank=1, k=3, c=0.02, te=time.time())
    status, headers, data = server.request("GET", "/status/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = data.decode()
    assert '<meta http-equiv="refresh"' in page and "<table>" in page
    assert page.count("<tr class=") == 2 and "20.00" in page and "never" in page
    for path in ("/status.json", "/status/?format=json"):
        code, obj = server.json("GET", path)
        assert code == 200
        assert obj["num_workers"] == 2 and obj["epsilon"] == 0.25
        assert [w["reported"] for w in obj["workers"]] == [False, True]
        assert obj["workers"][1]["k"] == 3 and obj["workers"][1]["last_seen"] > 0


# --- the client module ----------------------------------------------------------------------


def test_client_api(server: Server) -> None:
    with StateClient(server.url, retry_for=5) as client:
        client.wait_ready(5)
        client.init(2, 0.0)
        client.reset(0, 2, time.time())
        client.report(1, 1, 0.5, time.time())
        assert client.query(0, 0, 0.1, time.time()) == "compute"
        assert client.query(0, 1, 0.1, time.time()) in ("compute", "sync")
        assert client.query(1, 2, 0.5, time.time()) == "sync"  # the slowest
        status = client.status()
        assert status["round"] == 2 and status["workers"][1]["ready"] is True
        with pytest.raises(StateServerError) as err:
            client.query(7, 1, 0.1, time.time())
        assert "400" in str(err.value) and "rank 7 out of range" in str(err.value)
        assert err.value.status == 400 and not isinstance(err.value, StateServerNotInitialised)
        with pytest.raises(StateServerError, match="NaN is not a number"):
            client.report(0, 1, float("nan"), time.time())


def test_client_rejoins_a_server_that_restarted(tmp_path: Path) -> None:
    """409 is StateServerNotInitialised; rejoin initialises a fresh server once and then
    keeps what the others re-registered; a server restarted in place (same port) has lost
    its state again."""
    srv = start_server("runserver", tmp_path)
    try:
        with StateClient(srv.url, retry_for=10) as a, StateClient(srv.url, retry_for=10) as b:
            with pytest.raises(StateServerNotInitialised) as err:
                a.query(0, 1, 0.1, time.time())
            assert err.value.status == 409 and "not initialised" in str(err.value)
            a.rejoin(2, 0.0)
            a.reset(0, 3, time.time())
            b.rejoin(2, 0.0)
            status = b.status()
            assert status["workers"][0]["round"] == 3 and status["recovering"] is True
            with pytest.raises(StateServerError) as err:
                b.rejoin(3, 0.0)
            assert err.value.status == 400 and "rejoin refused" in str(err.value)
            b.reset(1, 3, time.time())
            assert b.status()["recovering"] is False
            old_pid = srv.proc.pid
            os.kill(old_pid, signal.SIGKILL)
            srv.proc.popen.wait(10)
            srv.cluster.restart(srv.proc)  # the same command: the same port
            assert srv.proc.pid != old_pid and srv.proc.restarts == 1
            with pytest.raises(StateServerNotInitialised):  # retried until it is back
                a.reset(0, 4, time.time())
            assert a.status()["initialized"] is False
    finally:
        srv.cluster.stop()
    log = Path(srv.proc.log_path).read_text()
    assert f"(pid {old_pid}) exited with code -9; restarted" in log


def test_client_unreachable_names_url_and_duration() -> None:
    port = free_port()  # nothing listens there
    client = StateClient(f"http://127.0.0.1:{port}", retry_for=0.6, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(StateServerUnreachable) as err:
        client.query(0, 1, 0.1, 1.0)
    elapsed = time.monotonic() - start
    assert 0.6 <= elapsed < 3
    text = str(err.value)
    assert f"http://127.0.0.1:{port}" in text and "retried for up to 0.6 s" in text
    assert "failed" in text and "time(s)" in text
    with pytest.raises(StateServerUnreachable):
        client.wait_ready(0.3)
    client.close()


class _FlakyHandler(JSONStubHandler):
    """Answers like the State Server; closes every connection after one answer even though
    it says keep-alive (a stale keep-alive connection for the client)."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        msg = self.read_json()
        self.seen.append(msg["msg_type"])
        self.reply({"msg_type": "response", "rank": msg["rank"], "round": 1, "action": "sync"})
        self.wfile.flush()
        self.close_connection = True


def test_client_retries_until_the_server_comes_up() -> None:
    port = free_port()
    httpd: list[http.server.ThreadingHTTPServer] = []

    def start_later() -> None:
        time.sleep(0.4)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), _FlakyHandler)
        httpd.append(srv)
        srv.serve_forever(poll_interval=0.05)

    starter = threading.Thread(target=start_later, daemon=True)
    starter.start()
    try:
        client = StateClient(f"http://127.0.0.1:{port}", retry_for=10, timeout=2)
        start = time.monotonic()
        assert client.query(3, 1, 0.1, 1.0) == "sync"
        assert 0.3 < time.monotonic() - start < 5
        # the server dropped the connection: the client reconnects at once, no backoff
        start = time.monotonic()
        for _ in range(3):
            assert client.query(3, 2, 0.1, 1.0) == "sync"
        assert time.monotonic() - start < 1
        client.close()
    finally:
        deadline = time.monotonic() + 5
        while not httpd and starter.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        for srv in httpd:
            srv.shutdown()
            srv.server_close()
        starter.join(5)
        assert not starter.is_alive()


class _WrongAnswerHandler(JSONStubHandler):
    """Answers every POST with 200 and the next body of ``answers`` (not the protocol's)."""

    answers: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self.read_body()
        self.reply(self.answers.pop(0))


WRONG_ANSWERS: list[tuple[str, tuple, dict | list | str, str]] = [
    ("query", (0, 1, 0.1, 1.0), {"msg_type": "ack", "of": "report", "round": 1, "rank": 0}, "ack"),
    ("query", (0, 1, 0.1, 1.0), {"msg_type": "response", "rank": 0, "round": 1}, "action"),
    ("query", (0, 1, 0.1, 1.0), {"msg_type": "response", "rank": 0, "action": "go"}, "action"),
    (
        "query",
        (0, 1, 0.1, 1.0),
        {"msg_type": "response", "rank": 1, "round": 1, "action": "sync"},
        "rank 1",
    ),
    ("query", (0, 1, 0.1, 1.0), [1, 2], "not a JSON object"),
    ("query", (0, 1, 0.1, 1.0), "<html>", "not JSON"),
    ("report", (0, 1, 0.1, 1.0), {"ok": True}, "no msg_type"),
    (
        "report",
        (0, 1, 0.1, 1.0),
        {"msg_type": "ack", "of": "reset", "round": 1, "rank": 0},
        "ack of report",
    ),
    ("reset", (2, 3, 1.0), {"msg_type": "ack", "of": "reset", "round": 3, "rank": 1}, "rank 1"),
    ("reset", (2, 3, 1.0), {"msg_type": "ack", "of": "reset", "round": "3", "rank": 2}, "round"),
    (
        "init",
        (2, 0.5),
        {"msg_type": "response", "rank": 0, "round": 0, "action": "sync"},
        "expected an ack",
    ),
]


def test_client_rejects_answers_that_are_not_the_protocol() -> None:
    _WrongAnswerHandler.answers = [
        (a if isinstance(a, str) else json.dumps(a)).encode() for _, _, a, _ in WRONG_ANSWERS
    ]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WrongAnswerHandler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with StateClient(f"http://127.0.0.1:{srv.server_address[1]}", retry_for=2) as client:
            for method, args, answer, needle in WRONG_ANSWERS:
                with pytest.raises(StateServerError) as err:
                    getattr(client, method)(*args)
                text = str(err.value)
                assert "/msg/" in text and needle in text, (method, answer, text)
                assert not isinstance(err.value, StateServerUnreachable)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
    assert _WrongAnswerHandler.answers == []  # one request per call: nothing was retried


def test_runserver_caps_open_connections() -> None:
    from StateServer.stateserver.fastserver import FastWSGIServer

    srv = FastWSGIServer(("127.0.0.1", 0), None)
    try:
        srv.max_connections = 2
        a, b, c = object(), object(), object()
        assert srv.verify_request(a, None) and srv.verify_request(b, None)
        assert not srv.verify_request(c, None)
        srv._open.discard(id(a))  # as close_request does once a connection ends
        assert srv.verify_request(c, None)
    finally:
        srv.server_close()
