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

Slow and idle clients (docs/state-server.md, "Time-outs and connection caps"): a request's
line, headers and body must all arrive within ``REQUEST_TIMEOUT_S`` of its first byte (a
new connection's first request: of the accept), however slowly the bytes trickle in (a
deadline, not a time-out per ``recv``); a connection idle for ``IDLE_TIMEOUT_S`` between
requests is closed. Neither bounds a held request, whose reading is over when it is held.
At most ``max_per_client`` connections per client address (``max_connections`` in all) are
open at once; more are closed at accept. A read (GET, HEAD) lets the other requests waiting
for the admission go first, so a flood of reads cannot delay the workers' messages.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import io
import json
import logging
import os
import platform
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from django.core.servers.basehttp import ServerHandler, WSGIRequestHandler, WSGIServer

from ..httpapi import STATUS_LINES, json_headers
from ..limits import (
    IDLE_TIMEOUT_S,
    REFUSAL_LOG_EVERY_S,
    REQUEST_TIMEOUT_S,
    max_per_client,
    raise_fd_limit,
)
from ..messages import MAX_BODY_BYTES
from .fastpath import fast_answer

WRITE_BUFFER = 16 * 1024  # an API response fits easily: one send() per response
MAX_REQUEST_LINE = 65536
READ_REQUESTS = (b"GET ", b"HEAD ")  # reads: they let the waiting messages go first
LINGER_S = 1.0  # after refusing a body: how long, and how much of it, to read and discard
LINGER_BYTES = 4 * 1024 * 1024


LEAN_REQUEST_LINES = {b"POST /msg/ HTTP/1.1\r\n": "/msg/", b"POST /apply/ HTTP/1.1\r\n": "/apply/"}
LEAN_MAX_BYTES = 8192  # headers and body of a hot request (a worker's are ~250 bytes)
LEAN_MAX_HEADERS = 32
SERVER_HEADER = f"Server: WSGIServer/0.2 CPython/{platform.python_version()}"
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([0-9]{1,9})[ \t]*\r$")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_date_cache: list[object] = [0, ""]
log = logging.getLogger(__name__)
_UNCOUNTED = object()


def _http_date() -> str:
    """The Date header's value (RFC 7231), computed once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.formatdate(now, usegmt=True)]
    return str(_date_cache[1])


def _plain_headers(block: bytes) -> dict[str, str] | None:
    """Header lines as {lower-case name: value}, or None for anything but plain, unique,
    printable ``Name: value`` lines (folding, duplicates, control bytes, ...)."""
    lines = block.split(b"\r\n") if block else []
    if len(lines) > LEAN_MAX_HEADERS:
        return None
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _HEADER_NAME.fullmatch(name):
            return None
        key = name.decode("ascii").lower()
        text = value.strip(b" \t")
        if key in headers or not text.isascii() or any(b < 32 or b == 127 for b in text):
            return None
        headers[key] = text.decode("ascii")
    return headers


class _DeadlineReader(io.RawIOBase):
    """A connection's raw input that ends at its handler's ``read_deadline``.

    Before each ``recv`` the socket's time-out is set to the time left, so a client that
    sends a byte every few seconds cannot stretch a request past the deadline (TimeoutError,
    as a socket time-out). No deadline (None), or a non-blocking socket (a peek): the socket
    is left as it is.
    """

    def __init__(self, sock: socket.socket, handler: FastRequestHandler) -> None:
        super().__init__()
        self._raw = sock.makefile("rb", buffering=0)
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buf: Any) -> int | None:
        deadline = self._handler.read_deadline
        if deadline is not None and self._sock.gettimeout() != 0.0:
            left = deadline - time.monotonic()
            if left <= 0.0:
                raise TimeoutError(f"request not read within {REQUEST_TIMEOUT_S:g} s")
            self._sock.settimeout(left)
            self._handler.timeout_changed = True
        return self._raw.readinto(buf)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on a TCP socket (no-op for other sockets)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class Admission:
    """At most ``limit`` request threads handle a request at a time, admitted in the order
    their requests arrived (0: no limit, every thread for itself).

    Why: runserver serves each connection in its own thread. With 64 busy connections, 64
    threads wait for the GIL whenever their data arrives, and CPython hands the GIL to an
    arbitrary waiter: a request (or the dispatcher thread) can lose that lottery many times
    in a row, which made the 64-connection p99 jump to hundreds of milliseconds. Here a
    connection's thread waits for its data in a lock, not in ``recv``: one poller thread
    watches every idle connection (epoll) and, when data arrives, queues that thread for a
    place; threads that wait for a place hold no GIL. The admitted thread, the poller and
    the dispatcher share the GIL. A thread that waits for a held request (the non-blocking
    protocol's delayed ACK) gives its place up meanwhile (:meth:`outside`). Places are
    re-entrant per thread.

    Reads come last: a thread that finds its request is a read (``GET``, ``HEAD``) hands its
    place to the first waiting thread and waits in a second queue (:meth:`yield_place`,
    ``enter(low=True)``), served only when no other thread waits. So a worker's message
    waits for at most the one read being served, however many readers flood the server.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._inside = 0
        self._queue: collections.deque[threading.Lock] = collections.deque()
        self._low: collections.deque[threading.Lock] = collections.deque()  # reads waiting
        self._mine = threading.local()  # .depth: places this thread holds (re-entrant)
        self._epoll = select.epoll() if limit > 0 and hasattr(select, "epoll") else None
        self._readers: dict[int, threading.Lock] = {}  # fd -> its thread's waiter
        self._poller: threading.Thread | None = None

    def enter(self, low: bool = False) -> None:
        """Wait for a place (FIFO; ``low``: a read, after every other waiting thread)."""
        depth = getattr(self._mine, "depth", 0)
        if depth == 0 and self.limit > 0:
            waiter = threading.Lock()
            waiter.acquire()
            self._grant(waiter, low)
            waiter.acquire()  # released by _grant or leave(), which gave us a place
        self._mine.depth = depth + 1

    def yield_place(self) -> None:
        """A read that holds its thread's only place: hand it to the first waiting thread,
        if any, and wait for one again after every other waiting thread."""
        if self.limit <= 0 or getattr(self._mine, "depth", 0) != 1:
            return
        with self._lock:
            if not self._queue:
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._queue.popleft().release()  # our place goes to the first waiter
            self._low.append(waiter)
        waiter.acquire()  # released by leave(): a place for us

    def leave(self) -> None:
        """Give the place up (to the first waiter) when this is the outermost one."""
        self._mine.depth -= 1
        if self._mine.depth or self.limit <= 0:
            return
        with self._lock:
            if self._queue:
                self._queue.popleft().release()  # the place goes to the first waiter
            elif self._low:
                self._low.popleft().release()  # ... or to the first waiting read
            else:
                self._inside -= 1

    def enter_when_readable(self, sock: socket.socket, timeout: float) -> bool:
        """Wait until ``sock`` has data, then for a place; False after ``timeout`` s idle."""
        if self._epoll is None:  # poll(), not select(): file descriptors above 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            ready = poller.poll(max(0.0, timeout) * 1000.0)
            if ready:
                self.enter()
            return bool(ready)
        self._start_poller()
        fd, waiter = sock.fileno(), threading.Lock()
        waiter.acquire()
        with self._lock:
            self._readers[fd] = waiter
        try:
            self._epoll.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)
        except FileNotFoundError:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        if not waiter.acquire(timeout=max(0.0, timeout)):
            with self._lock:
                if self._readers.get(fd) is waiter:
                    del self._readers[fd]
                    return False
            waiter.acquire()  # a place was given to us meanwhile
        self._mine.depth = 1
        return True

    def forget(self, sock: socket.socket) -> None:
        """Stop watching a connection that is about to close."""
        if self._epoll is not None:
            try:
                self._epoll.unregister(sock.fileno())
            except (FileNotFoundError, ValueError, OSError):
                pass

    def __enter__(self) -> Admission:
        self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()

    @contextlib.contextmanager
    def place(self, low: bool = False) -> Iterator[None]:
        """``with admission.place(low):`` as ``with admission:``, a read's place if ``low``."""
        self.enter(low)
        try:
            yield
        finally:
            self.leave()

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """Give the place up while blocked on something else; wait for one again after."""
        depth = getattr(self._mine, "depth", 0)
        if depth == 0:
            yield
            return
        self._mine.depth = 1
        self.leave()
        try:
            yield
        finally:
            self.enter()
            self._mine.depth = depth

    def _grant(self, waiter: threading.Lock, low: bool = False) -> None:
        with self._lock:
            if self._inside < self.limit and not self._queue and not self._low:
                self._inside += 1
                waiter.release()
            else:
                (self._low if low else self._queue).append(waiter)

    def _start_poller(self) -> None:
        if self._poller is None:
            with self._lock:
                if self._poller is None:
                    self._poller = threading.Thread(
                        target=self._poll, name="esync-poller", daemon=True
                    )
                    self._poller.start()

    def _poll(self) -> None:
        assert self._epoll is not None
        while True:
            for fd, _ in self._epoll.poll():
                with self._lock:
                    waiter = self._readers.pop(fd, None)
                if waiter is not None:
                    self._grant(waiter)


class FastRequestHandler(WSGIRequestHandler):
    """Django's request handler with NODELAY, one write per response, a body cap and a
    deadline for reading each request."""

    wbufsize = WRITE_BUFFER
    timeout = REQUEST_TIMEOUT_S  # the socket's time-out for a write (a client that never reads)
    read_deadline: float | None = None  # time.monotonic() by which the request must be read
    timeout_changed = False  # _DeadlineReader changed the socket's time-out

    def setup(self) -> None:
        super().setup()
        set_nodelay(self.connection)
        self.accepted = time.monotonic()
        self.rfile.close()  # makefile's; the same buffer over a reader with the deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle(self) -> None:
        """Serve the connection's requests, each in the server's admission (see
        :class:`Admission`): wait for data without the GIL, then for a place; a request that
        is not all there yet is read outside the admission (a client that sends slowly holds
        up nobody else), which it enters again to run the app; a read lets the waiting
        messages go first. The first request must arrive, whole, within REQUEST_TIMEOUT_S of
        the accept; a later one within REQUEST_TIMEOUT_S of its first byte, which must come
        within IDLE_TIMEOUT_S of the previous answer; otherwise the connection is closed."""
        admission = self.server.admission
        self.close_connection = True
        first, wait = True, REQUEST_TIMEOUT_S - (time.monotonic() - self.accepted)
        try:
            while admission.enter_when_readable(self.connection, wait):
                start = self.accepted if first else time.monotonic()
                self.read_deadline = start + REQUEST_TIMEOUT_S
                try:
                    buffered, read = self._request_buffered()
                    if not buffered:
                        with admission.outside():
                            self.handle_one_request()
                    else:
                        if read:
                            admission.yield_place()
                        self.handle_one_request()
                finally:
                    self._stop_reading()
                    admission.leave()
                if self.close_connection:
                    break
                first, wait = False, IDLE_TIMEOUT_S
        finally:
            admission.forget(self.connection)
        try:
            self.connection.shutdown(socket.SHUT_WR)
        except (AttributeError, OSError):
            pass

    def _request_buffered(self) -> tuple[bool, bool]:
        """Whether a whole request (headers and a plain Content-Length's body) has arrived,
        looked at without blocking; and whether it is a read (GET, HEAD)."""
        sock = self.connection
        try:
            sock.setblocking(False)
            buf = self.rfile.peek(LEAN_MAX_BYTES)
        except (OSError, ValueError):
            return False, False
        finally:
            try:
                sock.settimeout(self.timeout)
            except OSError:
                pass
        read = buf.startswith(READ_REQUESTS)
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False, read
        match = _CONTENT_LENGTH.search(buf, 0, end + 2)
        return match is None or len(buf) - end - 4 >= int(match.group(1)), read

    def _stop_reading(self) -> None:
        """The request is read: no deadline until the next one (a held request waits for its
        answer as long as the server holds it); the socket's time-out is a write's again."""
        self.read_deadline = None
        if self.timeout_changed:
            self.timeout_changed = False
            try:
                self.connection.settimeout(self.timeout)
            except OSError:
                pass

    def handle_one_request(self) -> None:
        """Read one request, run the app, flush the response in one piece.

        The app runs in the server's admission (entered here unless the caller holds it)."""
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            self._serve_one()
        except TimeoutError:  # a client too slow to send its request (REQUEST_TIMEOUT_S)
            self.close_connection = True
        finally:
            self._flush()

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ["esync.admission"] = self.server.admission
        return environ

    def _serve_one(self) -> None:
        path = LEAN_REQUEST_LINES.get(self.raw_requestline)
        if path is not None and self._serve_lean(path):
            return
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
        stdin = self._read_body()
        if stdin is None:
            return  # answered 400, the connection is closed
        self._stop_reading()
        with self.server.admission.place(low=self.command in ("GET", "HEAD")):
            handler = ServerHandler(stdin, self.wfile, self.get_stderr(), self.get_environ())
            handler.request_handler = self
            handler.run(self.server.get_app())

    def _read_body(self) -> Any:
        """The body as an in-memory stream, read before the admission; the socket's stream
        when there is no Content-Length (Django reads nothing then). None after a 400 for a
        Content-Length that is not a number, or a body that ends before it (the client
        closed its side): the connection is closed, so whatever follows on it can never be
        taken for another request (request smuggling), and an incomplete body is never run."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return self.rfile
        length = raw.strip()
        if not length.isdigit():
            self.send_error(HTTPStatus.BAD_REQUEST, f"Content-Length is not a number: {raw!r}")
            return None
        body = self.rfile.read(int(length)) if int(length) else b""
        if len(body) < int(length):
            self.send_error(
                HTTPStatus.BAD_REQUEST,
                f"the body ended after {len(body)} of its {int(length)} bytes (Content-Length)",
            )
            return None
        return io.BytesIO(body)

    def _serve_lean(self, path: str) -> bool:
        """The hot request, ``POST /msg/ HTTP/1.1`` (or upstream's ``/apply/``) with plain
        headers and its whole body already read into the buffer, answered by
        ``fastpath.fast_answer`` without building a WSGI environment; the same bytes on the
        wire as the full path. False (nothing consumed) when anything is unusual: the full
        path then handles the request."""
        buf = self.rfile.peek(LEAN_MAX_BYTES)
        end = buf.find(b"\r\n\r\n")
        headers = _plain_headers(buf[:end]) if end >= 0 else None
        if headers is None or "expect" in headers or "transfer-encoding" in headers:
            return False
        length = headers.get("content-length", "")
        start = end + 4
        if not length.isdigit() or not 0 < int(length) <= len(buf) - start:
            return False
        body = buf[start : start + int(length)]
        self._stop_reading()  # all of it is in the buffer
        admission = self.server.admission
        with admission:
            answer = fast_answer(headers.get, body, admission, admission.limit > 0, path)
        if answer is None:
            return False
        self.rfile.read(start + len(body))  # consumed: it is answered here
        status, data = answer
        self.command, self.path, self.request_version = "POST", path, "HTTP/1.1"
        self.requestline = f"POST {path} HTTP/1.1"
        self.close_connection = headers.get("connection", "").lower() == "close"
        head = [f"HTTP/1.1 {STATUS_LINES[status]}", f"Date: {_http_date()}", SERVER_HEADER]
        head += [f"{name}: {value}" for name, value in json_headers(data)]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        self.log_request(status, len(data))
        return True

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
            self.read_deadline = deadline
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
    open at once, and at most ``max_per_client`` from one client address (more are closed at
    accept; 0: no per-address cap), so threads and buffers stay bounded and one client cannot
    take every connection. The soft limit of open files is raised to fit them.
    """

    request_queue_size = 128
    max_connections = 1000
    admitted = 1

    def __init__(
        self, server_address: Any, handler_cls: Any = None, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(server_address, FastRequestHandler, *args, **kwargs)
        self._open: set[int] = set()
        self._client_of: dict[int, object] = {}  # id(request) -> its client's address
        self._per_client: collections.Counter[object] = collections.Counter()
        self._open_lock = threading.Lock()
        self._refused_logged = 0.0
        self.max_per_client = max_per_client()
        self.admission = Admission(int(os.environ.get("ESYNC_ADMIT", self.admitted)))
        raise_fd_limit(self.max_connections + 256)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a new connection while fewer than ``max_connections`` are open, and fewer
        than ``max_per_client`` from its address."""
        host = client_address[0] if isinstance(client_address, tuple) else client_address
        with self._open_lock:
            if len(self._open) >= self.max_connections:
                return False
            if self.max_per_client and self._per_client[host] >= self.max_per_client:
                self._log_refusal(host)
                return False
            self._open.add(id(request))
            self._client_of[id(request)] = host
            self._per_client[host] += 1
        return True

    def _log_refusal(self, host: object) -> None:
        """One line every 10 s at most (a flood of refusals does not flood the log)."""
        now = time.monotonic()
        if now - self._refused_logged >= REFUSAL_LOG_EVERY_S:
            self._refused_logged = now
            log.warning(
                "refused connections from %s: %d open, the cap per client address "
                "(ESYNC_MAX_CONNECTIONS_PER_CLIENT)",
                host,
                self.max_per_client,
            )

    def close_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(id(request))
            host = self._client_of.pop(id(request), _UNCOUNTED)
            if host is not _UNCOUNTED:  # not a connection refused at accept
                self._per_client[host] -= 1
                if self._per_client[host] <= 0:
                    del self._per_client[host]
        super().close_request(request)


class PlainRequestHandler(WSGIRequestHandler):
    """Django's own request handler with a socket time-out (``ESYNC_PLAIN_RUNSERVER=1``,
    the benchmark's before/after comparison): a read, or the wait between two requests,
    longer than REQUEST_TIMEOUT_S closes the connection. A time-out per ``recv``, not a
    deadline per request as :class:`FastRequestHandler`'s."""

    timeout = REQUEST_TIMEOUT_S

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except TimeoutError:  # Django's handler does not catch it (a traceback otherwise)
            self.close_connection = True


class PlainWSGIServer(WSGIServer):
    """Django's WSGIServer with :class:`PlainRequestHandler`."""

    def __init__(
        self, server_address: Any, handler_cls: Any = None, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(server_address, PlainRequestHandler, *args, **kwargs)
