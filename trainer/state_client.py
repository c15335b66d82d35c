"""Client of the ESync State Server (``StateServer/``), used by the trainers once per batch.

The protocol is the server's own: every message is built as a dataclass of
:mod:`StateServer.messages` (``InitMsg``, ``ResetMsg``, ``ReportMsg``, ``QueryMsg``) and
serialised with ``message_to_dict``; every answer is parsed with ``parse_response`` (query)
or ``parse_ack`` (init, reset, report). A malformed answer raises :class:`StateServerError`.

Fast path: one keep-alive ``http.client`` connection with TCP_NODELAY, each request sent in
a single ``send()`` (headers and JSON body together), to the typed ``POST /msg/`` endpoint.
Connection errors (and HTTP 503) are retried with exponential backoff for up to
``retry_for`` seconds, then :class:`StateServerUnreachable`; a 4xx answer is never retried.
Errors carry the HTTP status; a 409 ("not initialised": typically a State Server that
restarted and lost its state) is :class:`StateServerNotInitialised`, and :meth:`StateClient.rejoin`
re-registers a worker without wiping what other workers re-registered.

Non-blocking protocol (``--state-protocol nonblocking``): :class:`ProgressChannel` hands a
worker's progress to a background thread through a one-slot mailbox and tells the worker,
by a flag it reads in microseconds, when the server has answered that it must synchronise.
The thread sends ``hold`` messages (:meth:`StateClient.hold`) that the server keeps open
until the answer is sync: the paper's delayed acknowledgement. See docs/state-server.md.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from operator import index
from urllib.parse import urlsplit

from StateServer.holds import DEFAULT_MAX_HOLD_S
from StateServer.messages import (
    AckMsg,
    HoldMsg,
    InitMsg,
    MessageError,
    QueryMsg,
    ReportMsg,
    ResetMsg,
    ResponseMsg,
    WorkerMsg,
    message_to_dict,
    parse_ack,
    parse_response,
)

__all__ = [
    "ProgressChannel",
    "StateClient",
    "StateServerError",
    "StateServerNotInitialised",
    "StateServerUnreachable",
    "Verdict",
]

HOLD_LATE_S = DEFAULT_MAX_HOLD_S + 2.0  # no answer to a hold for this long: ask the blocking way

_BACKOFF_START_S = 0.05
_BACKOFF_MAX_S = 2.0
_RETRYABLE = (OSError, http.client.HTTPException)


class StateServerError(RuntimeError):
    """The State Server answered with an error (4xx/5xx) or something that is not its JSON.

    ``status`` is the HTTP status of an error answer; None for a malformed 2xx answer and
    when the server could not be reached.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StateServerNotInitialised(StateServerError):
    """HTTP 409: the server has no run (it restarted, or nobody sent init yet)."""


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
        self._aborted = False

    # --- the API ----------------------------------------------------------------------

    def init(self, num_workers: int, epsilon: float) -> None:
        """Start a new run on the server (forgets every record)."""
        self._ack(InitMsg(num_workers=index(num_workers), epsilon=float(epsilon)), "init")

    def rejoin(self, num_workers: int, epsilon: float) -> None:
        """Re-register after a server restart: initialise it unless it already serves this
        run (same num_workers and epsilon); never forgets a record. Follow it with a
        :meth:`reset` into the worker's current round. A server initialised with other
        parameters answers HTTP 400 (:class:`StateServerError`)."""
        msg = InitMsg(num_workers=index(num_workers), epsilon=float(epsilon), rejoin=True)
        self._ack(msg, "init")

    def query(self, rank: int, k: int, c: float, te: float) -> str:
        """Report progress and ask what to do next: ``"compute"`` or ``"sync"``."""
        return self.query_response(rank, k, c, te).action

    def query_response(self, rank: int, k: int, c: float, te: float) -> ResponseMsg:
        """As :meth:`query`, but the whole answer (``left``: seconds until the slowest worker
        is expected to finish, on a sync while it still computes)."""
        msg = QueryMsg(rank=index(rank), k=index(k), c=float(c), te=float(te))
        return self._response(msg, self._post_msg(msg), "query")

    def hold(
        self, rank: int, t: int, k: int, c: float, te: float, wait: float = HOLD_LATE_S
    ) -> ResponseMsg:
        """The delayed ACK: progress of worker ``rank`` in round ``t``; the server answers
        when the worker must synchronise (``sync``) or, after holding it for its maximum,
        ``compute`` (send it again). Waits at most ``wait`` s for the answer; one attempt
        (a stale keep-alive connection is reopened once): the caller retries."""
        msg = HoldMsg(rank=index(rank), t=index(t), k=index(k), c=float(c), te=float(te))
        body = json.dumps(message_to_dict(msg)).encode()
        reply = self._request("POST", "/msg/", body, 0.0, timeout=float(wait))
        return self._response(msg, reply, "hold")

    def clone(self) -> StateClient:
        """A client of the same server with its own connection (for another thread)."""
        return StateClient(self.url, self._token, self.timeout, self.retry_for)

    def abort(self) -> None:
        """Shut the connection down from another thread (a request blocked on it fails)."""
        self._aborted = True
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

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

    def _response(self, msg: QueryMsg | HoldMsg, reply: dict, kind: str) -> ResponseMsg:
        """``reply`` parsed as the response to ``msg``, or StateServerError."""
        try:
            resp = parse_response(reply)
        except MessageError as exc:
            raise self._malformed(kind, exc, reply) from None
        if resp.rank != msg.rank:
            raise self._malformed(kind, f"answer for rank {resp.rank}, not {msg.rank}", reply)
        return resp

    def _malformed(self, kind: str, problem: object, reply: dict) -> StateServerError:
        """The error for a 2xx answer that is not the protocol's answer to a ``kind``."""
        text = repr(reply)
        if len(text) > 200:
            text = text[:197] + "..."
        return StateServerError(
            f"POST {self.url}/msg/: malformed answer to {kind}: {problem} (answer: {text})"
        )

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        retry_for: float,
        timeout: float | None = None,
    ) -> dict:
        """One request with retries; returns the decoded JSON object of a 2xx answer.

        ``timeout``: the socket time-out of this request (default: the client's)."""
        with self._lock:
            start = time.monotonic()
            delay = _BACKOFF_START_S
            attempts = 0
            while True:
                attempts += 1
                reused = self._conn is not None
                try:
                    status, data = self._send(method, path, body, timeout)
                except _RETRYABLE as exc:
                    self._drop()
                    stale = reused and attempts == 1 and not isinstance(exc, TimeoutError)
                    if stale and not self._aborted:
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

    def _send(
        self, method: str, path: str, body: bytes | None, timeout: float | None = None
    ) -> tuple[int, bytes]:
        conn = self._conn
        if conn is None:
            conn = self._connect()
        if timeout is not None and conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            # http.client sends headers and a bytes body in one send() call.
            conn.request(method, self._prefix + path, body=body, headers=self._headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            if timeout is not None and conn.sock is not None:
                conn.sock.settimeout(self.timeout)
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
            cls = StateServerNotInitialised if status == 409 else StateServerError
            raise cls(f"{where} -> HTTP {status}: {self._error_text(data)}", status)
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


# --- the non-blocking protocol ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """The server's "sync" for round ``round``; ``finish_at`` (``time.monotonic()``) is when
    the slowest worker is expected to finish, when it was still computing; ``final``: the
    server wants the worker's last progress of the round (it is the slowest)."""

    round: int
    finish_at: float | None
    final: bool = False


_Mail = tuple[int, int, float, float, bool]  # t, k, c, te, final


class ProgressChannel:
    """The worker side of the non-blocking protocol (the delayed ACK).

    The worker's thread only touches a one-slot mailbox and a flag, never the network:
    :meth:`begin_round` and :meth:`post` leave the newest progress ``(t, k, c, te)`` in the
    mailbox (a newer one replaces an unsent older one), :meth:`verdict` reads the flag. A
    background thread with its own connection (``client``, used by nothing else) sends
    ``hold`` messages: one when a round starts (it is also the worker's reset), and one more
    whenever the server answered compute (it needed this worker's capability, or held the
    request for its maximum) and there is news; the server answers a hold when the worker
    must synchronise, and the thread raises the flag. The worker's last post of a round
    (``final=True``: it goes to the barrier) is sent too when the server asked for it (the
    answer's ``final``: this worker is the slowest, the others sync when it arrives).

    When a hold fails (connection error, HTTP error, a server that lost its state) or stays
    unanswered for ``late_s``, :meth:`trouble` says why: the worker then asks the blocking
    way until the round ends (and re-registers on HTTP 409), so a lost answer cannot stall
    a round; the thread keeps trying with back-off (:meth:`kick` retries at once).
    """

    def __init__(self, client: StateClient, rank: int, late_s: float = HOLD_LATE_S) -> None:
        self.client = client
        self.rank = index(rank)
        self.late_s = float(late_s)
        self.sent = 0  # hold messages sent (by the thread)
        self._cond = threading.Condition(threading.Lock())
        self._mail: _Mail | None = None
        self._sent: _Mail | None = None  # what the last hold carried
        self._resend = False  # send the mailbox again although nothing changed
        self._round: int | None = None
        self._verdict: Verdict | None = None
        self._final_sent = False
        self._inflight_since: float | None = None
        self._failure: str | None = None
        self._retry_at = 0.0
        self._backoff = _BACKOFF_START_S
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"esync-progress-{self.rank}", daemon=True
        )
        self._thread.start()

    # --- the worker's thread (no network, no waiting) ----------------------------------

    def begin_round(self, t: int, te: float, c: float) -> None:
        """A new round ``t`` started at ``te``; ``c`` is the worker's capability (0: unknown)."""
        with self._cond:
            self._round, self._verdict, self._final_sent = t, None, False
            self._mail = (t, 0, float(c), float(te), False)
            self._cond.notify()

    def post(self, k: int, c: float, te: float, final: bool = False) -> None:
        """Newest progress of the current round; ``final``: the worker goes to synchronise."""
        with self._cond:
            if self._round is None:
                return
            self._mail = (self._round, k, float(c), float(te), final)
            self._cond.notify()

    def verdict(self) -> Verdict | None:
        """The server's sync for the current round, once it has come (a flag read)."""
        verdict = self._verdict
        return verdict if verdict is not None and verdict.round == self._round else None

    def trouble(self) -> str | None:
        """Why the worker should ask the blocking way now (None: the hold is fine)."""
        failure = self._failure
        if failure is not None:
            return failure
        since = self._inflight_since
        if since is not None and time.monotonic() - since > self.late_s:
            return f"no answer to a hold for {time.monotonic() - since:.1f} s"
        return None

    def kick(self) -> None:
        """Retry a failed hold now (the worker has just re-registered)."""
        with self._cond:
            self._retry_at = 0.0
            self._backoff = _BACKOFF_START_S
            self._cond.notify()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread (a held request is abandoned) and close its connection."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.client.abort()
        self._thread.join(timeout)
        self.client.close()

    # --- the channel's thread ----------------------------------------------------------

    def _next(self) -> _Mail | None:
        """What to send now, if anything (called with the lock held)."""
        mail = self._mail
        if mail is None or (self._failure is not None and time.monotonic() < self._retry_at):
            return None
        verdict = self._verdict
        if verdict is not None and verdict.round == mail[0]:  # told sync in this round
            return mail if mail[4] and verdict.final and not self._final_sent else None
        return mail if (mail != self._sent or self._resend) else None

    def _wait_for_mail(self) -> _Mail | None:
        """Block until there is something to send (None: closed)."""
        with self._cond:
            while not self._closed:
                mail = self._next()
                if mail is not None:
                    self._sent, self._resend = mail, False
                    self._inflight_since = time.monotonic()
                    return mail
                timeout = None
                if self._failure is not None:
                    timeout = max(self._retry_at - time.monotonic(), 0.001)
                self._cond.wait(timeout)
        return None

    def _run(self) -> None:
        while True:
            mail = self._wait_for_mail()
            if mail is None:
                return
            t, k, c, te, final = mail
            try:
                resp = self.client.hold(self.rank, t, k, c, te, wait=self.late_s + 1.0)
            except (StateServerError, ValueError) as exc:
                self._failed(exc)
                continue
            finally:
                self.sent += 1
            self._answered(mail, resp)

    def _failed(self, exc: Exception) -> None:
        with self._cond:
            self._inflight_since = None
            self._failure = f"{type(exc).__name__}: {exc}"
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)
            self._resend = True

    def _answered(self, mail: _Mail, resp: ResponseMsg) -> None:
        received = time.monotonic()
        with self._cond:
            self._inflight_since, self._failure = None, None
            self._backoff = _BACKOFF_START_S
            t, c, final = mail[0], mail[2], mail[4]
            if resp.action != "sync":
                # The server held it for its maximum, or a newer run began: send it again.
                # (With c unknown it needs the capability: the next post brings it.)
                self._resend = c > 0.0
                return
            if t != self._round:
                return  # an answer for a round the worker has left
            if final:
                self._final_sent = True
            if self._verdict is None:
                finish_at = received + resp.left if resp.left is not None else None
                self._verdict = Verdict(t, finish_at, resp.final)
