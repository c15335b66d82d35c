"""The State Server over real HTTP: runserver and gunicorn processes on free ports (the
``state_server`` fixture), with and without a token."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.state_server import (
    GUNICORN,
    RUNSERVER,
    TOKEN,
    RunningServer,
    serves,
)
from trainer.state_client import (
    StateClient,
    StateServerError,
    StateServerNotInitialised,
    StateServerUnreachable,
)

SERVERS = (RUNSERVER, GUNICORN)
# with a token and a host list
WITH_TOKEN = tuple(replace(s, token=TOKEN, allowed_hosts="127.0.0.1,localhost") for s in SERVERS)


# --- before init ----------------------------------------------------------------------


@serves(*SERVERS, private=True)
def test_everything_before_init_is_a_409_or_empty(state_server: RunningServer) -> None:
    """What a fresh server answers before anyone initialised it."""
    srv = state_server
    query = {"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": 1.0}
    answers = {
        "query": srv.json("POST", "/msg/", query),
        "apply": srv.json("POST", "/apply/", {"r": 0, "k": 1, "c": 0.1, "te": 1}),
        "reset": srv.json("POST", "/reset/", {"r": 0, "t": 2, "te": 1}),
    }
    for name, (status, obj) in answers.items():
        assert status == 409 and "not initialised" in obj["error"], (name, answers[name])
    assert srv.json("GET", "/") == (200, {"num_workers": 0, "t": 0, "epsilon": 0.0, "records": []})


# --- typed endpoint and upstream routes -------------------------------------------------


@serves(*SERVERS)
def test_typed_endpoint(state_server: RunningServer) -> None:
    assert state_server.msg(msg_type="reset", num_workers=2, epsilon=0.5) == {
        "msg_type": "ack",
        "of": "init",
        "round": 0,
    }
    assert state_server.msg(msg_type="reset", rank=1, t=3, te=10.0) == {
        "msg_type": "ack",
        "of": "reset",
        "round": 3,
        "rank": 1,
    }
    assert state_server.msg(msg_type="report", rank=0, k=2, c=0.01, te=11.0) == {
        "msg_type": "ack",
        "of": "report",
        "round": 3,
        "rank": 0,
    }
    assert state_server.msg(msg_type="query", rank=0, k=0, c=0.01, te=11.0) == {
        "msg_type": "response",
        "rank": 0,
        "round": 3,
        "action": "compute",
    }
    assert state_server.msg(msg_type="init", num_workers=1, epsilon=0)["of"] == "init"


@serves(*SERVERS)
def test_upstream_routes_take_json_not_forms(state_server: RunningServer) -> None:
    """Upstream's routes with their field names, as JSON (numbers or numeric strings); the
    form posts upstream's workers sent are refused (415, docs/security.md) and change nothing."""
    auth = state_server.auth()
    before = state_server.state()
    status, obj = state_server.json(
        "POST", "/init/", form={"num_workers": 2, "epsilon": 0.5}, headers=auth
    )
    assert status == 415 and "application/json" in obj["error"], obj
    assert state_server.state() == before
    init = {"num_workers": 2, "epsilon": "0.5"}
    assert state_server.json("POST", "/init/", init, headers=auth)[0] == 200
    assert (
        state_server.json("POST", "/reset", {"r": 0, "t": "2", "te": 100.0}, headers=auth)[0] == 200
    )
    assert (
        state_server.json("POST", "/reset/", {"r": 1, "t": 2, "te": 100.0}, headers=auth)[0] == 200
    )
    status, _ = state_server.json(
        "POST", "/apply/", form={"r": 0, "k": 0, "c": 0.1, "te": 100.0}, headers=auth
    )
    assert status == 415
    assert state_server.json(
        "POST", "/apply/", {"r": 0, "k": 0, "c": 0.1, "te": 100.0}, headers=auth
    ) == (200, {"ready": 0})
    assert state_server.json(
        "POST", "/apply", {"r": 1, "k": 1, "c": 2.0, "te": 101.0}, headers=auth
    ) == (200, {"ready": 1})  # the slowest
    status, index = state_server.json("GET", "/")
    assert status == 200
    assert index == {
        "num_workers": 2,
        "t": 2,
        "epsilon": 0.5,
        "records": [[0, 0, 0.1, 100.0, False, 2], [1, 1, 2.0, 101.0, True, 2]],
    }


@serves(*SERVERS)
def test_rejoin_keeps_records_and_a_plain_init_forgets(state_server: RunningServer) -> None:
    auth = state_server.auth()
    state_server.msg(msg_type="reset", num_workers=3, epsilon=0.5)
    state_server.msg(msg_type="reset", rank=1, t=4, te=10.0)
    state_server.msg(msg_type="report", rank=0, k=2, c=0.01, te=11.0)
    before = state_server.state()
    rejoin = {"msg_type": "init", "num_workers": 3, "epsilon": 0.5, "rejoin": True}
    assert state_server.msg(**rejoin) == {"msg_type": "ack", "of": "init", "round": 4}
    upstream = {"num_workers": 3, "epsilon": "0.5", "rejoin": "true"}
    assert state_server.json("POST", "/init/", upstream, headers=auth) == (
        200,
        {"msg_type": "ack", "of": "init", "round": 4},
    )
    assert state_server.state() == before and before["recovering"] is False
    status, obj = state_server.json("POST", "/msg/", {**rejoin, "num_workers": 4}, headers=auth)
    assert status == 400 and "rejoin refused" in obj["error"], obj
    assert state_server.state() == before
    state_server.msg(msg_type="init", num_workers=3, epsilon=0.5)  # a plain init: a new run
    state = state_server.state()
    assert state["round"] == 0 and not any(w["reported"] for w in state["workers"])


@serves(*SERVERS)
def test_three_worker_walkthrough(state_server: RunningServer) -> None:
    """Alg. 2 end to end; time margins are seconds, so request latency cannot matter."""
    state_server.msg(msg_type="reset", num_workers=3, epsilon=0.5)
    now = time.time()
    for r in range(3):
        state_server.msg(msg_type="reset", rank=r, t=2, te=now)

    def q(rank: int, k: int, c: float, te: float) -> str:
        return state_server.msg(msg_type="query", rank=rank, k=k, c=c, te=te)["action"]

    assert q(0, 0, 0.0, now) == "compute"  # k == 0
    assert q(0, 1, 1.0, time.time()) == "compute"  # ranks 1, 2 unknown
    assert q(1, 1, 2.0, time.time()) == "compute"  # rank 2 unknown
    state_server.msg(msg_type="report", rank=2, k=0, c=100.0, te=time.time() - 10)  # rest ~ 90 s
    assert q(0, 2, 1.0, time.time()) == "compute"  # 1 + 0.5 < 90
    state_server.msg(msg_type="report", rank=2, k=0, c=100.0, te=time.time() - 99.8)  # rest ~ 0.2
    assert q(0, 3, 1.0, time.time()) == "sync"  # 1 + 0.5 > 0.2
    assert q(1, 2, 2.0, time.time()) == "sync"
    assert q(2, 1, 100.0, time.time()) == "sync"  # the slowest itself
    state = state_server.state()
    assert [w["ready"] for w in state["workers"]] == [True, True, True]
    assert [w["k"] for w in state["workers"]] == [3, 2, 1]
    assert state["slowest"] == 2 and state["round"] == 2
    # rank 0 is through the barrier first: a new round clears k and ready everywhere
    state_server.msg(msg_type="reset", rank=0, t=3, te=time.time())
    state = state_server.state()
    assert state["round"] == 3
    assert [(w["k"], w["ready"], w["round"]) for w in state["workers"]] == [
        (0, False, 3),
        (0, False, 2),
        (0, False, 2),
    ]
    assert q(0, 1, 1.0, time.time()) == "compute"  # the slowest has not reset yet
    state_server.msg(msg_type="reset", rank=2, t=3, te=time.time())
    assert q(2, 1, 100.0, time.time()) == "sync"
    assert q(0, 2, 1.0, time.time()) == "sync"  # the slowest is ready
    state_server.msg(msg_type="reset", rank=1, t=3, te=time.time())
    assert q(1, 1, 2.0, time.time()) == "sync"
    assert state_server.json("GET", "/")[1]["records"][2][4] is True


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


@serves(*SERVERS)
def test_malformed_messages_are_4xx_and_change_nothing(state_server: RunningServer) -> None:
    state_server.msg(msg_type="reset", num_workers=3, epsilon=0.5)
    state_server.msg(msg_type="report", rank=1, k=2, c=0.2, te=5.0)
    before = state_server.state()
    for label, body, expected in BAD_MSG_BODIES:
        status, headers, data = state_server.request(
            "POST", "/msg/", body, {"Content-Type": "application/json", **state_server.auth()}
        )
        _assert_json_error(status, headers, data, expected, label)
    assert state_server.state() == before


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
    ("init repeated", "/init/", b'{"num_workers": 2, "num_workers": 3, "epsilon": 0}', 400),
    ("init form", "/init/", b"num_workers=2&epsilon=0", 415),
    ("apply JSON array", "/apply/", b"[]", 400),
    ("init rejoin word", "/init/", {"num_workers": 3, "epsilon": 0.5, "rejoin": "maybe"}, 400),
    ("init rejoin other run", "/init/", {"num_workers": 2, "epsilon": 0.5, "rejoin": 1}, 400),
]


@serves(*SERVERS)
def test_malformed_upstream_requests_are_4xx_and_change_nothing(
    state_server: RunningServer,
) -> None:
    state_server.msg(msg_type="reset", num_workers=3, epsilon=0.5)
    before = state_server.state()
    for label, path, fields, expected in BAD_UPSTREAM:
        body = json.dumps(fields).encode() if isinstance(fields, dict) else fields
        is_json = body.startswith((b"[", b"{"))
        ctype = "application/json" if is_json else "application/x-www-form-urlencoded"
        status, headers, data = state_server.request(
            "POST", path, body, {"Content-Type": ctype, **state_server.auth()}
        )
        _assert_json_error(status, headers, data, expected, label)
    assert state_server.state() == before


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
@serves(*SERVERS)
def test_wrong_method_or_route(
    state_server: RunningServer, method: str, path: str, expected: int
) -> None:
    before = state_server.state()
    status, headers, data = state_server.request(
        method, path, b"{}" if method != "GET" else None, state_server.auth()
    )
    _assert_json_error(status, headers, data, expected, f"{method} {path}")
    if expected == 405:
        assert headers.get("allow")
    assert state_server.state() == before


@serves(*SERVERS)
def test_lying_content_length_is_refused_without_reading(state_server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", state_server.port), timeout=10) as sock:
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
    assert state_server.request("GET", "/status.json")[0] == 200  # still serving


@serves(*SERVERS)
def test_protocol_garbage(state_server: RunningServer) -> None:
    """runserver answers unparsable HTTP in JSON; gunicorn answers it itself (plain 400)."""
    with socket.create_connection(("127.0.0.1", state_server.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE /x HTTP/1.1 extra\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4") or head.startswith(b"HTTP/1.0 4"), data[:200]
    if state_server.kind == "runserver":
        assert b"application/json" in head and "error" in json.loads(body)
    assert state_server.request("GET", "/status.json")[0] == 200


# --- token --------------------------------------------------------------------------------


@serves(*WITH_TOKEN)
def test_token_required_on_writes(state_server: RunningServer) -> None:
    srv = state_server
    init = {"msg_type": "reset", "num_workers": 2, "epsilon": 0.0}
    for headers in (
        {},
        {"X-ESync-Token": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
    ):
        status, obj = srv.json("POST", "/msg/", init, headers=headers)
        assert status == 403 and "token" in obj["error"], headers
        status, obj = srv.json("POST", "/init/", {"num_workers": 2, "epsilon": 0}, headers=headers)
        assert status == 403, headers
    assert srv.state()["initialized"] is False
    assert srv.json("POST", "/msg/", init, headers={"X-ESync-Token": TOKEN})[0] == 200
    assert srv.json(
        "POST",
        "/apply/",
        {"r": 0, "k": 0, "c": 1, "te": 1},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) == (200, {"ready": 0})
    assert srv.json("GET", "/")[0] == 200  # reads need no token
    assert srv.request("GET", "/status/")[0] == 200


@serves(*WITH_TOKEN)
def test_allowed_hosts(state_server: RunningServer) -> None:
    """The token servers run with ESYNC_ALLOWED_HOSTS=127.0.0.1,localhost."""
    for path in ("/status.json", "/status/", "/"):
        status, headers, data = state_server.request("GET", path, headers={"Host": "evil.example"})
        _assert_json_error(status, headers, data, 400, path)
        assert b"evil.example" in data
    status, headers, data = state_server.request(
        "POST", "/msg/", b"{}", {"Host": "evil.example", "X-ESync-Token": TOKEN}
    )
    _assert_json_error(status, headers, data, 400, "POST /msg/")
    assert state_server.request("GET", "/status.json", headers={"Host": "localhost"})[0] == 200


@serves(*WITH_TOKEN)
def test_client_with_and_without_token(state_server: RunningServer) -> None:
    with StateClient(state_server.url, token=TOKEN, retry_for=5) as client:
        client.init(2, 0.0)
        assert client.query(0, 0, 0.1, time.time()) == "compute"
    start = time.monotonic()
    with (
        StateClient(state_server.url, token="nope", retry_for=30) as client,
        pytest.raises(StateServerError) as err,
    ):
        client.reset(0, 2, time.time())
    assert time.monotonic() - start < 5  # a 4xx is not retried
    assert "403" in str(err.value) and "token" in str(err.value)
    assert not isinstance(err.value, StateServerUnreachable)


# --- status -----------------------------------------------------------------------------


@serves(*SERVERS)
def test_status_page_html_and_json(state_server: RunningServer) -> None:
    state_server.msg(msg_type="reset", num_workers=2, epsilon=0.25)
    state_server.msg(msg_type="query", rank=1, k=3, c=0.02, te=time.time())
    status, headers, data = state_server.request("GET", "/status/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = data.decode()
    assert '<meta http-equiv="refresh"' in page and "<table>" in page
    assert page.count("<tr class=") == 2 and "20.00" in page and "never" in page
    for path in ("/status.json", "/status/?format=json"):
        code, obj = state_server.json("GET", path)
        assert code == 200
        assert obj["num_workers"] == 2 and obj["epsilon"] == 0.25
        assert [w["reported"] for w in obj["workers"]] == [False, True]
        assert obj["workers"][1]["k"] == 3 and obj["workers"][1]["last_seen"] > 0


# --- the client module ----------------------------------------------------------------------


@serves(*SERVERS)
def test_client_api(state_server: RunningServer) -> None:
    with StateClient(state_server.url, retry_for=5) as client:
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


@serves(RUNSERVER, private=True)
def test_client_rejoins_a_server_that_restarted(state_server: RunningServer) -> None:
    """409 is StateServerNotInitialised; rejoin initialises a fresh state_server once and then
    keeps what the others re-registered; a state_server restarted in place (same port) has lost
    its state again."""
    srv = state_server
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
        srv.stop()
    log = Path(srv.proc.log_path).read_text()
    assert f"(pid {old_pid}) exited with code -9; restarted" in log
