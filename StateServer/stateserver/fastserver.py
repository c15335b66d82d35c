"""A low-latency server class for ``python -m StateServer runserver``.

Why: wsgiref (under Django's runserver) writes every response in five small ``send()``
calls (status line, Date, Server, the other headers, the body) on a socket without
TCP_NODELAY. On a keep-alive connection Nagle's algorithm holds the second segment until
the client ACKs the first, and the client delays that ACK (Linux: 40 ms) because it is
waiting for the rest of the response: every request then costs ~40 ms.

Fix, at the server: TCP_NODELAY on every accepted socket, and a buffered socket writer
that is flushed once per response, so a response leaves in one ``send()``. Also: a larger
listen backlog (Django's is 10), request bodies above the cap refused before anything
reads them, and protocol-level errors answered in JSON.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from django.core.servers.basehttp import ServerHandler, WSGIRequestHandler, WSGIServer

from ..messages import MAX_BODY_BYTES

WRITE_BUFFER = 16 * 1024  # an API response fits easily: one send() per response
MAX_REQUEST_LINE = 65536
IDLE_TIMEOUT_S = 600.0  # the client reconnects transparently after a longer pause
LINGER_S = 1.0  # after refusing a body: how long, and how much of it, to read and discard
LINGER_BYTES = 4 * 1024 * 1024


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on a TCP socket (no-op for other sockets)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class Admission:
    """At most ``limit`` request threads past their request line at a time, admitted in
    arrival order (0: no limit).

    Why: runserver serves each connection in its own thread. With 64 busy connections, 64
    threads wait for the GIL, and CPython hands the GIL to an arbitrary waiter: a request
    (or the dispatcher thread every request needs) can lose that lottery many times in a
    row, which made the 64-connection p99 jump to hundreds of milliseconds. Waiting for
    admission is a plain lock wait, outside the GIL contest; the admitted few, the
    dispatcher and the timer share the GIL. A thread waiting for a held request (the
    non-blocking protocol's delayed ACK) leaves the admission meanwhile (:meth:`outside`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._inside = 0
        self._queue: collections.deque[threading.Lock] = collections.deque()

    def enter(self) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            if self._inside < self.limit and not self._queue:
                self._inside += 1
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._queue.append(waiter)
        waiter.acquire()  # released by leave(), which passed its place on to us

    def leave(self) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            if self._queue:
                self._queue.popleft().release()  # the place goes to the first waiter
            else:
                self._inside -= 1

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """Leave the admission while blocked on something else; enter again after."""
        self.leave()
        try:
            yield
        finally:
            self.enter()


class FastRequestHandler(WSGIRequestHandler):
    """Django's request handler with NODELAY, one write per response and a body cap."""

    wbufsize = WRITE_BUFFER
    timeout = IDLE_TIMEOUT_S  # socket timeout: idle keep-alive connections are closed

    def setup(self) -> None:
        super().setup()
        set_nodelay(self.connection)

    def handle_one_request(self) -> None:
        """Read one request, run the app, flush the response in one piece.

        Everything after the request line runs inside the server's admission (at most
        ``admitted`` threads at a time, FIFO): see :class:`Admission`.
        """
        admission = self.server.admission
        entered = False
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            admission.enter()
            entered = True
            self._serve_one()
        except TimeoutError:  # idle for IDLE_TIMEOUT_S, or a client too slow to send
            self.close_connection = True
        finally:
            self._flush()
            if entered:
                admission.leave()

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ["esync.admission"] = self.server.admission
        return environ

    def _serve_one(self) -> None:
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return
        if not self.parse_request():  # it has answered with send_error
            return
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self.send_error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes exceeds {MAX_BODY_BYTES} bytes",
            )
            self._lingering_close()
            return
        handler = ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ())
        handler.request_handler = self
        handler.run(self.server.get_app())

    def _lingering_close(self) -> None:
        """Send the answer and a FIN, then discard (a bounded amount of) the unread body.

        Closing a socket with unread input makes the kernel send a RST, which can destroy
        the answer before the client reads it.
        """
        self._flush()
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            deadline = time.monotonic() + LINGER_S
            drained = 0
            while drained < LINGER_BYTES and time.monotonic() < deadline:
                chunk = self.rfile.read1(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except (OSError, ValueError):
            pass

    def _flush(self) -> None:
        try:
            self.wfile.flush()
        except (OSError, ValueError):  # peer gone, or file already closed
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level error as JSON ``{"error": ...}``; the connection is closed."""
        try:
            status = HTTPStatus(code)
            text = message or status.phrase
        except ValueError:
            text = message or "error"
        body = json.dumps({"error": text}).encode()
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # unparsable version: answer HTTP/1.x anyway
            self.request_version = "HTTP/1.0"
        self.send_response(code, None)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)


class FastWSGIServer(WSGIServer):
    """Django's WSGIServer serving through :class:`FastRequestHandler`.

    runserver serves every connection in its own thread; at most ``max_connections`` are
    open at once (more are closed at accept), so threads and buffers stay bounded.
    """

    request_queue_size = 128
    max_connections = 1000
    admitted = 4

    def __init__(
        self, server_address: Any, handler_cls: Any = None, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(server_address, FastRequestHandler, *args, **kwargs)
        self._open: set[int] = set()
        self._open_lock = threading.Lock()
        import os

        self.admission = Admission(int(os.environ.get("ESYNC_ADMIT", self.admitted)))

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a new connection while fewer than ``max_connections`` are open."""
        with self._open_lock:
            if len(self._open) >= self.max_connections:
                return False
            self._open.add(id(request))
        return True

    def close_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(id(request))
        super().close_request(request)
