"""HTTP for the tests: a client for one server on loopback, and in-process stand-in servers
(a JSON handler base, and a server thread that is always shut down)."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlencode

Server = TypeVar("Server", bound=http.server.HTTPServer)


class HttpClient:
    """Requests to a server on 127.0.0.1:``port``, one connection each."""

    def __init__(self, port: int) -> None:
        self.port = port

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
        """(status, headers with lower-case names, body) of one request."""
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
        """Send ``obj`` as JSON (or ``form`` url-encoded); the answer must be JSON."""
        hdrs = dict(headers or {})
        body: bytes | None = None
        if form is not None:
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


class JSONStubHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive: read a JSON body, answer with JSON, log nothing."""

    protocol_version = "HTTP/1.1"

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers["Content-Length"]))

    def read_json(self) -> dict:
        return json.loads(self.read_body())

    def reply(self, body: bytes | dict, status: int = 200) -> None:
        """One answer with a Content-Length (a dict is sent as JSON)."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """``server`` answering in a thread of this process; shut down, closed and its thread
    joined on the way out."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not thread.is_alive(), "the stand-in server's thread did not stop"
