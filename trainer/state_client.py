"""Client of the ESync State Server (``StateServer/``), used by the trainers once per batch.

The protocol is the server's own: every message is built as a dataclass of
:mod:`StateServer.messages` (``InitMsg``, ``ResetMsg``, ``ReportMsg``, ``QueryMsg``) and
serialised with ``message_to_dict``; every answer is parsed with ``parse_response`` (query)
or ``parse_ack`` (init, reset, report). A malformed answer raises :class:`StateServerError`.

Fast path: one keep-alive ``http.client`` connection with TCP_NODELAY, each request sent in
a single ``send()`` (headers and JSON body together), to the typed ``POST /msg/`` endpoint.
Connection errors (and HTTP 503) are retried with exponential backoff for up to
``retry_for`` seconds, then :class:`StateServerUnreachable`; a 4xx answer is never retried.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from operator import index
from urllib.parse import urlsplit

from StateServer.messages import (
    AckMsg,
    InitMsg,
    MessageError,
    QueryMsg,
    ReportMsg,
    ResetMsg,
    WorkerMsg,
    message_to_dict,
    parse_ack,
    parse_response,
)

__all__ = ["StateClient", "StateServerError", "StateServerUnreachable"]

_BACKOFF_START_S = 0.05
_BACKOFF_MAX_S = 2.0
_RETRYABLE = (OSError, http.client.HTTPException)


class StateServerError(RuntimeError):
    """The State Server answered with an error (4xx/5xx) or something that is not its JSON."""


class StateServerUnreachable(StateServerError):
    """No answer from the State Server, even after retrying."""


class StateClient:
    """Keep-alive client of one State Server; safe to share between threads (serialised).

    Integer arguments accept anything with ``__index__`` (numpy ints too) and float ones
    anything ``float()`` takes; the server validates the values (NaN, negative, ranges).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:10010",
        token: str | None = None,
        timeout: float = 5.0,
        retry_for: float = 60.0,
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"State Server URL must be http(s)://host[:port], got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.retry_for = float(retry_for)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._token = token if token is not None else (os.environ.get("ESYNC_TOKEN") or None)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token:
            self._headers["X-ESync-Token"] = self._token
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    # --- the API ----------------------------------------------------------------------

    def init(self, num_workers: int, epsilon: float) -> None:
        """Start a new run on the server (forgets every record)."""
        self._ack(InitMsg(num_workers=index(num_workers), epsilon=float(epsilon)), "init")

    def query(self, rank: int, k: int, c: float, te: float) -> str:
        """Report progress and ask what to do next: ``"compute"`` or ``"sync"``."""
        msg = QueryMsg(rank=index(rank), k=index(k), c=float(c), te=float(te))
        reply = self._post_msg(msg)
        try:
            resp = parse_response(reply)
        except MessageError as exc:
            raise self._malformed("query", exc, reply) from None
        if resp.rank != msg.rank:
            raise self._malformed("query", f"answer for rank {resp.rank}, not {msg.rank}", reply)
        return resp.action

    def report(self, rank: int, k: int, c: float, te: float) -> None:
        """Report progress (k local iterations, c seconds per batch, te last finish)."""
        self._ack(ReportMsg(rank=index(rank), k=index(k), c=float(c), te=float(te)), "report")

    def reset(self, rank: int, t: int, te: float) -> None:
        """Tell the server that worker ``rank`` starts round ``t`` at Unix time ``te``."""
        self._ack(ResetMsg(rank=index(rank), t=index(t), te=float(te)), "reset")

    def status(self) -> dict:
        """The server's status (``GET /status.json``)."""
        return self._request("GET", "/status.json", None, self.retry_for)

    def wait_ready(self, timeout: float) -> None:
        """Poll until the server answers (start-up ordering); StateServerUnreachable if not."""
        self._request("GET", "/status.json", None, float(timeout))

    def close(self) -> None:
        """Close the keep-alive connection (the next call reopens one)."""
        with self._lock:
            self._drop()

    def __enter__(self) -> StateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------

    def _post_msg(self, msg: WorkerMsg) -> dict:
        """Send one worker message to ``POST /msg/``; the decoded JSON object of the answer."""
        body = json.dumps(message_to_dict(msg)).encode()
        return self._request("POST", "/msg/", body, self.retry_for)

    def _ack(self, msg: InitMsg | ResetMsg | ReportMsg, kind: str) -> AckMsg:
        """Send ``msg`` and check that the answer is the ack of a ``kind`` (for its rank)."""
        reply = self._post_msg(msg)
        try:
            ack = parse_ack(reply, kind)
        except MessageError as exc:
            raise self._malformed(kind, exc, reply) from None
        rank = getattr(msg, "rank", None)
        if ack.rank != rank:
            raise self._malformed(kind, f"ack for rank {ack.rank}, not {rank}", reply)
        return ack

    def _malformed(self, kind: str, problem: object, reply: dict) -> StateServerError:
        """The error for a 2xx answer that is not the protocol's answer to a ``kind``."""
        text = repr(reply)
        if len(text) > 200:
            text = text[:197] + "..."
        return StateServerError(
            f"POST {self.url}/msg/: malformed answer to {kind}: {problem} (answer: {text})"
        )

    def _request(self, method: str, path: str, body: bytes | None, retry_for: float) -> dict:
        """One request with retries; returns the decoded JSON object of a 2xx answer."""
        with self._lock:
            start = time.monotonic()
            delay = _BACKOFF_START_S
            attempts = 0
            while True:
                attempts += 1
                reused = self._conn is not None
                try:
                    status, data = self._send(method, path, body)
                except _RETRYABLE as exc:
                    self._drop()
                    if reused and attempts == 1:
                        continue  # a stale keep-alive connection: retry at once
                    error: str = f"{type(exc).__name__}: {exc}"
                else:
                    if status != 503:
                        return self._decode(method, path, status, data)
                    error = f"HTTP 503: {self._error_text(data)}"
                elapsed = time.monotonic() - start
                if elapsed >= retry_for:
                    raise StateServerUnreachable(
                        f"State Server {self.url} unreachable: {method} {path} failed "
                        f"{attempts} time(s) over {elapsed:.1f} s (retried for up to "
                        f"{retry_for:g} s); last error: {error}"
                    )
                time.sleep(min(delay, max(retry_for - elapsed, 0.0)))
                delay = min(delay * 2, _BACKOFF_MAX_S)

    def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn = self._conn
        if conn is None:
            conn = self._connect()
        # http.client sends headers and a bytes body in one send() call.
        conn.request(method, self._prefix + path, body=body, headers=self._headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self._drop()
        return resp.status, data

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        conn.connect()
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _decode(self, method: str, path: str, status: int, data: bytes) -> dict:
        where = f"{method} {self.url}{path}"
        if status >= 400:
            raise StateServerError(f"{where} -> HTTP {status}: {self._error_text(data)}")
        try:
            obj = json.loads(data)
        except ValueError:
            raise StateServerError(f"{where} -> HTTP {status}, not JSON: {data[:200]!r}") from None
        if not isinstance(obj, dict):
            raise StateServerError(f"{where} -> HTTP {status}, not a JSON object: {obj!r}")
        return obj

    @staticmethod
    def _error_text(data: bytes) -> str:
        try:
            obj = json.loads(data)
        except ValueError:
            return repr(data[:200])
        if isinstance(obj, dict) and "error" in obj:
            return json.dumps(obj)
        return repr(data[:200])
