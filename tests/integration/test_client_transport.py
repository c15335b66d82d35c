"""The State Server client's transport: stale keep-alive connections, HTTP 503 retries, a
server that is not there (yet), and answers that are not the protocol's.

Stub HTTP servers on loopback play the State Server; the client module's clock is replaced
(``trainer.state_client.time``) so that its backoff sleeps are recorded, or forbidden.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import types
from collections.abc import Iterator

import pytest

from launcher.supervision import free_port
from tests.support.http import JSONStubHandler, serving
from trainer import state_client
from trainer.state_client import StateClient, StateServerError, StateServerUnreachable


def _answer(msg: dict) -> dict:
    """What the State Server answers to a worker message (enough for the client's checks)."""
    if msg["msg_type"] == "query":
        return {"msg_type": "response", "rank": msg["rank"], "round": 1, "action": "sync"}
    return {"msg_type": "ack", "of": msg["msg_type"], "round": 1, "rank": msg.get("rank")}


class _StubServer(http.server.ThreadingHTTPServer):
    """Counts connections and requests; ``statuses`` scripts the answers (then 200s)."""

    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.connections = 0
        self.requests = 0
        self.statuses: list[int] = []
        self.closed = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def shutdown_request(self, request: object) -> None:
        super().shutdown_request(request)
        self.closed.set()  # the server's end of a connection is closed


class _Handler(JSONStubHandler):
    """HTTP/1.1 keep-alive answers; a 503 carries the State Server's JSON error."""

    server: _StubServer

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        msg = self.read_json()
        self.server.requests += 1
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        obj = _answer(msg) if status == 200 else {"error": "overloaded: queue full"}
        self.reply(obj, status)


class _IdleTimeoutHandler(_Handler):
    """Closes a keep-alive connection after 0.2 s without a request, as servers do when idle."""

    timeout = 0.2

    def log_error(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[_StubServer]:
    with serving(_StubServer(_Handler)) as srv:
        yield srv


@pytest.fixture
def idle_closing() -> Iterator[_StubServer]:
    with serving(_StubServer(_IdleTimeoutHandler)) as srv:
        yield srv


class _Sleeps(list):
    """The client's ``sleep``: records each delay; ``forbid`` turns a sleep into a failure."""

    def __init__(self, forbid: bool = False, really: bool = False) -> None:
        super().__init__()
        self.forbid, self.really = forbid, really

    def __call__(self, seconds: float) -> None:
        if self.forbid:
            raise AssertionError(f"the client backed off ({seconds} s) instead of retrying")
        self.append(seconds)
        if self.really:
            time.sleep(seconds)


def _patch_sleep(monkeypatch: pytest.MonkeyPatch, sleeps: _Sleeps) -> None:
    clock = types.SimpleNamespace(monotonic=time.monotonic, time=time.time, sleep=sleeps)
    monkeypatch.setattr(state_client, "time", clock)


def test_a_stale_keep_alive_connection_is_retried_at_once(
    idle_closing: _StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server closed the idle connection: the next request reconnects, no backoff."""
    with StateClient(idle_closing.url, retry_for=10, timeout=2) as client:
        assert client.query(0, 1, 0.1, 1.0) == "sync"
        assert client._conn is not None  # kept alive
        assert idle_closing.closed.wait(5), "the stub did not close the idle connection"
        time.sleep(0.05)  # let its FIN arrive
        _patch_sleep(monkeypatch, _Sleeps(forbid=True))
        started = time.monotonic()
        assert client.query(0, 2, 0.1, 1.0) == "sync"
        assert time.monotonic() - started < 1
    assert idle_closing.connections == 2  # the stale one, then one fresh connection
    assert idle_closing.requests == 2  # the request was answered once: on the new connection


def test_http_503_is_retried_with_backoff_until_served(
    stub: _StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.statuses = [503, 503]
    sleeps = _Sleeps()
    _patch_sleep(monkeypatch, sleeps)
    with StateClient(stub.url, retry_for=10, timeout=2) as client:
        assert client.query(1, 3, 0.1, 1.0) == "sync"
        client.reset(1, 2, 1.0)
    assert stub.requests == 4
    assert sleeps == [pytest.approx(0.05), pytest.approx(0.1)]  # exponential backoff


def test_http_503_for_longer_than_retry_for_is_unreachable(
    stub: _StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.statuses = [503] * 1000
    sleeps = _Sleeps(really=True)
    _patch_sleep(monkeypatch, sleeps)
    started = time.monotonic()
    with (
        StateClient(stub.url, retry_for=0.6, timeout=2) as client,
        pytest.raises(StateServerUnreachable) as err,
    ):
        client.query(0, 1, 0.1, 1.0)
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 3
    text = str(err.value)
    assert "HTTP 503" in text and "overloaded" in text and "retried for up to 0.6 s" in text
    assert f"failed {stub.requests} time(s)" in text and stub.requests >= 4
    assert sleeps[:3] == [pytest.approx(0.05), pytest.approx(0.1), pytest.approx(0.2)]
    assert sum(sleeps) <= 0.6 + 1e-6  # the last sleep is cut to what retry_for leaves


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
    with (
        serving(srv),
        StateClient(f"http://127.0.0.1:{srv.server_address[1]}", retry_for=2) as client,
    ):
        for method, args, answer, needle in WRONG_ANSWERS:
            with pytest.raises(StateServerError) as err:
                getattr(client, method)(*args)
            text = str(err.value)
            assert "/msg/" in text and needle in text, (method, answer, text)
            assert not isinstance(err.value, StateServerUnreachable)
    assert _WrongAnswerHandler.answers == []  # one request per call: nothing was retried
