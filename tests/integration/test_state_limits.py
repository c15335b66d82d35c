"""The State Server's runserver at its limits: bad Content-Length headers and the connection cap.

The Content-Length tests run a real ``python -m StateServer runserver`` (the ``state_server``
fixture: started the way the launcher does, ``supervision.start_state_server``) and speak raw
HTTP to it. The connection cap is checked on the server class itself, assembled as Django's
runserver assembles it (a ``ThreadingMixIn`` over :class:`FastWSGIServer`), with a small cap,
serving real sockets.
"""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import time
from collections.abc import Iterator
from typing import Any

import pytest

from StateServer.stateserver.fastserver import FastWSGIServer
from tests.support.http import serving
from tests.support.state_server import RunningServer
from trainer.state_client import StateClient

ANSWER_WITHIN_S = 5.0  # a bad request is answered at once, never after a socket time-out


@pytest.fixture
def server(state_server: RunningServer) -> Iterator[tuple[StateClient, int]]:
    """The runserver State Server (the ``state_server`` fixture, one for the module) in a
    known state (2 workers, epsilon 0.25) and a client of it."""
    with StateClient(state_server.url, retry_for=5) as client:
        client.init(2, 0.25)
        yield client, state_server.port


def init_msg(workers: int) -> bytes:
    return json.dumps({"msg_type": "init", "num_workers": workers, "epsilon": 0.0}).encode()


def raw_post(port: int, length: str, body: bytes, half_close: bool = True) -> tuple[float, bytes]:
    """POST /msg/ with a literal Content-Length header; (seconds until EOF, all bytes read)."""
    head = (
        "POST /msg/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN_S * 2) as sock:
        sock.sendall(head + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pytest.fail(f"Content-Length {length!r}: no answer within {ANSWER_WITHIN_S * 2} s")
    return time.monotonic() - started, data


def first_response(data: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers and decoded JSON body of the first HTTP response in ``data``."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    body = rest[: int(headers["content-length"])]
    assert headers["content-type"].startswith("application/json"), (headers, body)
    return status, headers, json.loads(body)


UNUSABLE = ["-1", "-100", "abc", "1e3", "0x10", "5, 5", " "]  # not a length at all
TOO_LARGE = [str(10**30), "9" * 25]  # above the body cap: 413 before anything is read
BAD_LENGTHS = UNUSABLE + TOO_LARGE


@pytest.mark.parametrize("length", BAD_LENGTHS)
def test_bad_content_length_is_a_json_4xx_at_once(
    server: tuple[StateClient, int], length: str
) -> None:
    client, port = server
    elapsed, data = raw_post(port, length, init_msg(3))
    assert data, f"Content-Length {length!r}: connection closed without an answer"
    status, _, body = first_response(data)
    assert 400 <= status < 500, (length, status, body)
    assert isinstance(body, dict) and body.get("error"), body
    assert elapsed < ANSWER_WITHIN_S, (length, elapsed)
    assert client.status()["num_workers"] == 2  # still serving, and the body never ran


# A body that follows an unusable Content-Length must never be read as the next request on the
# keep-alive connection (a request smuggled inside a body): runserver answers 400 and closes the
# connection (fastserver.FastRequestHandler._read_body), as it does with 413 above the body cap.
@pytest.mark.parametrize("length", BAD_LENGTHS)
def test_the_body_after_a_bad_content_length_never_runs_as_a_request(
    server: tuple[StateClient, int], length: str
) -> None:
    client, port = server
    inner = init_msg(3)
    smuggled = (
        b"POST /msg/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(inner), inner)
    )
    _, data = raw_post(port, length, smuggled)
    answers = data.count(b"HTTP/1.")
    assert client.status()["num_workers"] == 2, f"the body was run as a request: {data[:600]!r}"
    assert answers == 1, data[:600]


def test_content_length_larger_than_the_body_blocks_nobody_else(
    server: tuple[StateClient, int],
) -> None:
    """A client that announces more bytes than it sends holds only its own connection."""
    client, port = server
    head = (
        b"POST /msg/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stuck:
        stuck.sendall(head + init_msg(3))
        started = time.monotonic()
        for _ in range(5):
            assert client.status()["num_workers"] == 2
            assert client.query(0, 1, 0.1, time.time()) == "compute"
        assert time.monotonic() - started < ANSWER_WITHIN_S
    # what the server makes of the short body once the client gives up: see the next test


def test_a_body_shorter_than_its_content_length_is_refused(
    server: tuple[StateClient, int],
) -> None:
    client, port = server
    body = init_msg(3)
    elapsed, data = raw_post(port, str(len(body) + 50), body)
    status, _, answer = first_response(data)
    assert elapsed < ANSWER_WITHIN_S
    assert 400 <= status < 500, (status, answer)
    assert client.status()["num_workers"] == 2


# --- the connection cap -----------------------------------------------------------------


class _CappedServer(socketserver.ThreadingMixIn, FastWSGIServer):
    """runserver's server class (Django builds the same ThreadingMixIn type), cap of 3.

    It keeps every accepted socket object alive, so that no two connections share an id():
    otherwise a leaked slot would be refilled by the next socket allocated at the same address,
    and a leak could hide.
    """

    daemon_threads = True
    max_connections = 3

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), None)
        self.accepted: list[socket.socket] = []
        self.set_app(_ok_app)

    def get_request(self) -> tuple[socket.socket, Any]:
        request, address = super().get_request()
        self.accepted.append(request)
        return request, address


def _ok_app(environ: dict, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.fixture
def capped() -> Iterator[_CappedServer]:
    with serving(_CappedServer()) as srv:
        yield srv


def _get(port: int, conn: http.client.HTTPConnection | None = None) -> bytes:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/")
    return conn.getresponse().read()


def _wait_closed(srv: _CappedServer, count: int) -> None:
    """Until ``count`` connections were accepted and the server has let go of all of them."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if len(srv.accepted) >= count and all(s.fileno() == -1 for s in srv.accepted):
            return
        time.sleep(0.01)
    raise AssertionError(f"the server did not close its connections: {srv.accepted}")


def test_closed_connections_free_their_slot(capped: _CappedServer) -> None:
    """Many more connections than the cap, one after the other: every one is served."""
    port = capped.server_address[1]
    total = 4 * capped.max_connections
    for i in range(total):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            assert _get(port, conn) == b"ok", f"connection {i + 1} refused"
        except (ConnectionError, http.client.HTTPException) as exc:
            raise AssertionError(f"connection {i + 1} of {total} refused: {exc!r}") from None
        finally:
            conn.close()
        _wait_closed(capped, i + 1)
    assert len({id(s) for s in capped.accepted}) == total


def test_the_cap_refuses_at_accept_and_admits_again_after_a_close(capped: _CappedServer) -> None:
    port = capped.server_address[1]
    held = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(3)]
    try:
        for conn in held:  # keep-alive: each one holds a slot
            assert _get(port, conn) == b"ok"
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            _get(port)  # the fourth is closed at accept
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the slot comes free once the server has seen the close
            try:
                assert _get(port) == b"ok"
                break
            except (ConnectionError, http.client.HTTPException):
                assert time.monotonic() < deadline, "a closed connection did not free its slot"
                time.sleep(0.02)
    finally:
        for conn in held:
            conn.close()


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
