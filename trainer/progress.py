"""A worker's progress reports to the State Server's dashboard (``POST /progress/``).

:class:`ProgressReporter` never slows training down: :meth:`~ProgressReporter.report` copies a
few fields of the round's record into a bounded in-memory queue (when it is full the oldest
report is dropped and counted) and returns; a daemon thread posts what piled up, at most every
``config.PROGRESS_MIN_INTERVAL_S`` and at most ``config.PROGRESS_MAX_RECORDS`` rounds per
message, over its own keep-alive ``http.client`` connection. A server that is down or slow
is retried quietly with backoff (connection errors, 5xx); a 4xx answer drops that message
(counted in ``rejected``). The message format is ``StateServer/dashboard/reports.py``'s.

:meth:`~ProgressReporter.finish` sends the last message (state ``finished`` or ``failed``)
and waits at most ``config.PROGRESS_CLOSE_TIMEOUT_S`` for it; a process that exits without
calling it reports ``failed`` on the way out (atexit), when it can.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import math
import os
import threading
import time
from collections import deque
from itertools import zip_longest
from typing import Any
from urllib.parse import urlsplit

import config
from StateServer.dashboard.reports import RECORD_FIELDS, TIMERS
from trainer import layout, registry

__all__ = ["ProgressReporter", "progress_reporter"]

_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0
SERVER_BYTES = "server_bytes"  # bytes on each parameter server: summed, sent beside the totals
_OPTIONAL_NUMBERS = ("slowdown", "test_acc", "test_loss", "eval_time")  # dropped when not finite


def run_name(meta: dict[str, Any]) -> str:
    """The run's name on the dashboard: ``meta["run"]``, else ``<network>/<mode-dir>``."""
    if meta.get("run"):
        return str(meta["run"])
    run_dir = layout.mode_dir_name(str(meta.get("mode", "unknown")), meta.get("split") == "niid")
    return f"{meta.get('network', 'run')}/{run_dir}"


class ProgressReporter:
    """Reports one worker's rounds to ``<url>/progress/`` from a daemon thread.

    ``meta`` is the worker's meta.json (rank, num_workers, host, device, mode, network, split,
    slowdown) plus, optionally, ``run`` (the run's name), ``rounds`` and ``max_time`` (its
    budget, for the ETA) and ``epsilon`` (ESync's slack). ``token=None`` reads ESYNC_TOKEN.
    Counters: ``sent``, ``dropped`` (queue overflow, or lost at close), ``rejected`` (4xx),
    ``failures`` (attempts that failed); ``last_error`` says why the last one failed.
    """

    def __init__(
        self,
        url: str,
        meta: dict[str, Any],
        token: str | None = None,
        queue_size: int = config.PROGRESS_QUEUE,
        min_interval: float = config.PROGRESS_MIN_INTERVAL_S,
        timeout: float = config.PROGRESS_TIMEOUT_S,
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"progress URL must be http://host:port, got {url!r}")
        self.url = url
        self._host, self._port = parts.hostname, parts.port or 80
        self._path = parts.path.rstrip("/") + "/progress/"
        self._headers = {"Content-Type": "application/json"}
        token = os.environ.get("ESYNC_TOKEN") if token is None else token
        if token:
            self._headers["X-ESync-Token"] = token
        self._identity = self._identity_of(meta)
        self._slowdown = meta.get("slowdown")
        self._totals: dict[str, Any] = {"rounds": 0, "samples": 0, **dict.fromkeys(TIMERS, 0.0)}
        self.queue_size, self.min_interval, self.timeout = queue_size, min_interval, timeout
        self._queue: deque[tuple[dict, dict, Any]] = deque()
        self._lock = threading.Lock()
        self._wake, self._closing = threading.Event(), threading.Event()
        self._final: tuple[str, str | None] | None = None
        self._conn: http.client.HTTPConnection | None = None
        self.sent = self.dropped = self.rejected = self.failures = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="progress-reporter", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    @staticmethod
    def _identity_of(meta: dict[str, Any]) -> dict[str, Any]:
        """The fields every message repeats (who is reporting, and the run's budget)."""
        out = {
            "run": run_name(meta),
            "mode": str(meta.get("mode", "unknown")),
            "num_workers": int(meta.get("num_workers", 1)),
            "rank": int(meta.get("rank", 0)),
            "host": str(meta.get("host", "unknown")),
            "device": str(meta.get("device", "cpu")),
            "started": time.time(),
        }
        for name, kind in (("rounds", int), ("max_time", float), ("epsilon", float)):
            if meta.get(name) is not None:
                out[name] = kind(meta[name])
        return out

    # --- the training thread's side: cheap, never blocks on the network -----------------

    def report(self, record: dict[str, Any]) -> None:
        """Queue one round's record (``RunLog.write`` calls this); O(1), never blocks."""
        if self._final is not None or self._closing.is_set():
            return
        entry = {key: record[key] for key in RECORD_FIELDS if key in record}
        for key in _OPTIONAL_NUMBERS:
            if key in entry and not math.isfinite(entry[key]):
                del entry[key]  # e.g. a diverged loss: the server accepts finite numbers only
        totals = self._totals
        totals["rounds"] += 1
        totals["samples"] += record.get("samples", 0)
        for key in TIMERS:
            totals[key] += record.get(key, 0.0)
        per_server = record.get("server_bytes")
        if per_server:  # a new list each time: the queued copies of the totals keep theirs
            before = totals.get(SERVER_BYTES) or []
            totals[SERVER_BYTES] = [a + b for a, b in zip_longest(before, per_server, fillvalue=0)]
        self._slowdown = entry.get("slowdown", self._slowdown)
        item = (entry, dict(totals), self._slowdown)
        with self._lock:
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
        self._wake.set()

    def finish(
        self, ok: bool, error: str | None = None, timeout: float = config.PROGRESS_CLOSE_TIMEOUT_S
    ) -> None:
        """Send the last message (``finished``, or ``failed`` with ``error``) and close.

        Waits at most ``timeout`` s; a second call does nothing.
        """
        if self._final is not None:
            return
        self._final = ("finished", None) if ok else ("failed", error or "the worker failed")
        self.close(timeout)

    def close(self, timeout: float = config.PROGRESS_CLOSE_TIMEOUT_S) -> None:
        """Send what is queued (one attempt each) and stop the thread; waits at most
        ``timeout`` s (the daemon thread is left behind after that)."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        self.finish(False, "the worker process exited before its last round", timeout=1.0)

    # --- the reporter thread -------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self._closing.is_set():
                self._wake.wait()
                self._wake.clear()
                if self._closing.is_set():
                    break
                if self._send_queued():
                    backoff = 0.0
                    self._closing.wait(self.min_interval)  # rounds meanwhile go in one message
                else:
                    backoff = min(_BACKOFF_MAX_S, max(_BACKOFF_START_S, 2 * backoff))
                    self._closing.wait(backoff)
                    self._wake.set()  # try again even if no new round comes
            self._drain()
        finally:
            self._disconnect()

    def _take(self) -> list[tuple[dict, dict, Any]]:
        with self._lock:
            count = min(len(self._queue), config.PROGRESS_MAX_RECORDS)
            return [self._queue.popleft() for _ in range(count)]

    def _put_back(self, batch: list[tuple[dict, dict, Any]]) -> None:
        """Return an unsent batch to the front; the oldest go when the queue overflows."""
        with self._lock:
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.queue_size:
                self._queue.popleft()
                self.dropped += 1

    def _send_queued(self) -> bool:
        """Post everything queued; False (the batch put back) when the server is not there."""
        while batch := self._take():
            if not self._post(batch, "running", None):
                self._put_back(batch)
                return False
        return True

    def _drain(self) -> None:
        """At close: one attempt per batch, the last one carrying the final state."""
        state, error = self._final or ("running", None)
        while True:
            batch = self._take()
            with self._lock:
                last = not self._queue
            if not batch and self._final is None:
                return
            if not self._post(batch, state if last else "running", error if last else None):
                with self._lock:
                    self.dropped += len(batch) + len(self._queue)
                    self._queue.clear()
                return
            if last:
                return

    def _message(self, batch: list[tuple[dict, dict, Any]], state: str, error: str | None):
        totals, slowdown = (batch[-1][1], batch[-1][2]) if batch else (self._totals, self._slowdown)
        msg: dict[str, Any] = {"msg_type": "progress", **self._identity, "state": state}
        if error is not None:
            msg["error"] = error[:1000]
        if slowdown is not None and math.isfinite(slowdown):
            msg["slowdown"] = slowdown
        msg["dropped"] = self.dropped + self.rejected
        totals = dict(totals)
        per_server = totals.pop(SERVER_BYTES, None)
        msg["totals"] = totals
        if per_server and len(per_server) > 1:  # one server: nothing to show, and an older
            msg["server_bytes"] = per_server  # State Server would refuse the unknown field
        msg["records"] = [entry for entry, _, _ in batch]
        return msg

    def _post(self, batch: list[tuple[dict, dict, Any]], state: str, error: str | None) -> bool:
        """One message; True when the server took it or refused it for good (4xx)."""
        body = json.dumps(self._message(batch, state, error), separators=(",", ":")).encode()
        for _ in range(2):  # a kept-alive connection the server closed: once more, at once
            reused = self._conn is not None
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(
                        self._host, self._port, timeout=self.timeout
                    )
                self._conn.request("POST", self._path, body, self._headers)
                resp = self._conn.getresponse()
                answer = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._disconnect()
                self.last_error = f"{type(exc).__name__}: {exc}"
                if reused:
                    continue
                break
            if resp.status < 300:
                self.sent += len(batch)
                return True
            self.last_error = f"HTTP {resp.status}: {answer[:300].decode(errors='replace')}"
            if resp.status < 500 and resp.status not in (408, 429):
                self.rejected += len(batch)
                return True
            break
        self.failures += 1
        return False

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def progress_reporter(args: argparse.Namespace, meta: dict[str, Any]) -> ProgressReporter | None:
    """The reporter main.py's ``--report-progress URL`` asks for (None without the flag),
    with the run's budget (``--rounds``, ``--max-time``) and, for modes that use the State
    Server, the slack ``--epsilon``."""
    url = getattr(args, "report_progress", None)
    if not url:
        return None
    spec = registry.MODES.get(str(meta.get("mode")))
    budget = {
        "rounds": getattr(args, "rounds", None),
        "max_time": getattr(args, "max_time", None) or None,
        "epsilon": getattr(args, "epsilon", None) if spec and spec.state_server else None,
    }
    return ProgressReporter(url, {**meta, **budget})
