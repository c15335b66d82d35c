"""gunicorn's gthread worker with the State Server's limits (``worker_class`` in
``StateServer/gunicorn.conf.py``).

gthread alone reads a request with a blocking socket and no time-out: a client that sends
half a request line holds a thread for ever, and a few dozen such clients hold them all. This
worker adds what runserver's server class does (``stateserver/fastserver.py``):

* a deadline to read each request (line, headers and body): ``REQUEST_TIMEOUT_S`` after its
  first byte, or after the accept for a connection's first request. A reaper thread shuts
  the socket of a request still being read at its deadline down, which ends the blocked read
  (gunicorn then closes the connection). The body is read before the app runs, so the clock
  stops before a held request (the delayed ACK) starts waiting for its answer;
* a new connection waits for its first byte in gunicorn's poller, not in a thread (gthread
  lets a thread wait 5 s for it): idle connections cannot take the threads; gunicorn closes
  them after ``keepalive`` s (``IDLE_TIMEOUT_S``), as it does idle keep-alive connections;
* at most ``max_per_client`` open connections per client address (more are closed at once).

It relies on gthread's internals (``TConn``, ``_DEFER``, ``handle``, ``handle_request``),
checked by tests/e2e/test_reads_flood.py against the pinned gunicorn.
"""

from __future__ import annotations

import collections
import io
import select
import socket
import threading
import time
from typing import Any

from gunicorn.workers import gthread

from .limits import (
    MAX_ROUTE_BODY_BYTES,
    REFUSAL_LOG_EVERY_S,
    REQUEST_TIMEOUT_S,
    max_per_client,
    raise_fd_limit,
)

PRE_READ_BYTES = MAX_ROUTE_BODY_BYTES  # a body up to this is read before the app runs
REAP_EVERY_S = 0.25


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data (or an EOF) now; poll(), not select(): fds above 1023."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class StateServerWorker(gthread.ThreadWorker):
    """gthread with a read deadline per request, idle connections kept out of the threads,
    and a connection cap per client address."""

    def init_process(self) -> None:
        self._reading: dict[Any, float] = {}  # connection -> deadline of the request it reads
        self._lock = threading.Lock()
        self._per_client: collections.Counter[object] = collections.Counter()
        self._max_per_client = max_per_client()
        self._refused_logged = 0.0
        raise_fd_limit(self.cfg.worker_connections + 256)
        threading.Thread(target=self._reap, name="esync-reaper", daemon=True).start()
        super().init_process()

    # --- a connection's life --------------------------------------------------------------

    def handle(self, conn: Any) -> Any:
        if not hasattr(conn, "esync_host") and not self._admit(conn):
            return False  # refused: gunicorn closes it
        if not conn.initialized and not conn.data_ready and not _readable(conn.sock):
            return gthread._DEFER  # the poller waits for its first byte, not a thread
        start = conn.esync_accepted if not conn.esync_served else time.monotonic()
        with self._lock:
            self._reading[conn] = start + REQUEST_TIMEOUT_S
        try:
            return super().handle(conn)
        finally:
            self._done_reading(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        """The headers are read: read the body too (small: the routes' cap), then the app
        runs without a deadline (a held request may wait for its answer)."""
        body = req.body
        length = _content_length(req)
        if body is not None and (length is None or length <= PRE_READ_BYTES):
            data = body.read(PRE_READ_BYTES + 1)
            req.body = io.BytesIO(data) if len(data) <= PRE_READ_BYTES else _Rest(data, body)
        self._done_reading(conn)
        conn.esync_served = True
        return super().handle_request(req, conn)

    def _admit(self, conn: Any) -> bool:
        client = conn.client
        host = client[0] if isinstance(client, tuple) else client
        with self._lock:
            if self._max_per_client and self._per_client[host] >= self._max_per_client:
                now = time.monotonic()
                if now - self._refused_logged >= REFUSAL_LOG_EVERY_S:
                    self._refused_logged = now
                    self.log.warning(
                        "refused connections from %s: %d open, the cap per client address "
                        "(ESYNC_MAX_CONNECTIONS_PER_CLIENT)",
                        host,
                        self._max_per_client,
                    )
                return False
            self._per_client[host] += 1
        conn.esync_host, conn.esync_accepted, conn.esync_served = host, time.monotonic(), False
        close = conn.close

        def counted_close(graceful: bool = False) -> None:
            self._release(conn)
            close(graceful)

        conn.close = counted_close
        return True

    def _release(self, conn: Any) -> None:
        with self._lock:
            self._reading.pop(conn, None)
            host = getattr(conn, "esync_host", None)
            if getattr(conn, "esync_counted_out", False):
                return
            conn.esync_counted_out = True
            self._per_client[host] -= 1
            if self._per_client[host] <= 0:
                del self._per_client[host]

    def _done_reading(self, conn: Any) -> None:
        with self._lock:
            self._reading.pop(conn, None)

    def _reap(self) -> None:
        """Shut down the sockets of requests not read by their deadline: the thread blocked
        in ``recv`` gets an EOF, and gunicorn closes the connection."""
        while True:
            time.sleep(REAP_EVERY_S)
            now = time.monotonic()
            with self._lock:
                late = [conn for conn, deadline in self._reading.items() if deadline <= now]
                for conn in late:
                    del self._reading[conn]
                    try:
                        conn.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


def _content_length(req: Any) -> int | None:
    for name, value in req.headers:
        if name == "CONTENT-LENGTH":
            return int(value) if value.isdigit() else None
    return None


class _Rest(io.RawIOBase):
    """A body longer than the pre-read: the bytes read, then the rest from gunicorn's body
    (the app refuses it; gunicorn drains or closes the connection)."""

    def __init__(self, head: bytes, body: Any) -> None:
        super().__init__()
        self._head = io.BytesIO(head)
        self._body = body

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        data = self._head.read(size)
        if size < 0:
            return data + (self._body.read() or b"")
        if len(data) < size:
            data += self._body.read(size - len(data)) or b""
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = self._head.readline(-1 if size is None else size)
        if line.endswith(b"\n") or (size is not None and 0 <= size <= len(line)):
            return line
        rest = -1 if size is None or size < 0 else size - len(line)
        return line + (self._body.readline(rest) or b"")
