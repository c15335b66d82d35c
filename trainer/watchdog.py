"""Fail fast when a node of the MXNet cluster dies, instead of waiting for it forever.

With ``dist_sync`` the parameter server applies a round only when every worker has pushed, and
ps-lite's barriers count every node, so one dead process (``kill -9``, a crashed host) leaves
every other worker, the server and the scheduler waiting forever. Here every surviving process
exits within ``--failure-timeout`` seconds with exit code 5 and one line on stderr that names
the dead node and says how to resume:

* **Heartbeats** (ps-lite): with ``PS_HEARTBEAT_INTERVAL`` > 0 every server and worker sends
  one to the scheduler every that many seconds and the scheduler answers each; ps-lite keeps
  the (whole-second) time of the last one per node. ``MXKVStoreGetNumDeadNode`` asks it: on
  the scheduler about every worker and server, elsewhere only about the scheduler.
* **Dead-node watchdog** (every role): the scheduler asks about each worker and server by
  node id (worker r is node 9 + 2r, server r is 8 + 2r), so it can name the rank; the server
  and the workers ask about the scheduler (node 1), which exits when anything else died. A
  dead worker or server is thus noticed in two stages, a dead scheduler in one; each stage
  is at most ``stage_timeout + 1`` s plus one poll plus the confirmation, and two of them fit
  in the timeout.
* **No false alarms**: ps-lite counts a node with no heartbeat yet as dead as soon as its own
  start is ``stage`` s old, so a slow join (a loaded machine, slow imports elsewhere) made it
  report the scheduler dead the moment the cluster was ready, before the first heartbeat
  could arrive. A node is therefore dead only when ps-lite says so at every poll for
  ``confirm_seconds`` (two heartbeat intervals and a second), and one that was never seen
  alive (the start-up: until every node has joined, the join time-out judges, and ps-lite
  answers nothing before that) for a whole stage more.
* **No-progress guard** (needs the training loop's calls): the loop calls ``beat()`` after
  every round and wraps evaluation and checkpoints in ``paused()``; no round for longer than
  the timeout ends the worker, naming what it waited for and, in esync, the workers the State
  Server last saw away from the synchronisation point. It catches a node that hangs without
  dying. In the synchronous modes only rank 0 guards (see ``rounds_wait_for``).

A worker's watchdog starts with its KVStore (``trainer.cluster.create_kvstore``), the
scheduler's and the server's in ``trainer.cluster.run_scheduler_or_server``. No MXNet import
at module level: main.py configures heartbeats before MXNet loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass

import config

EXIT_CODE = 5  # a node of the cluster died (or no round finished within the timeout)
POLL_S = 0.5  # how often the watchdog asks ps-lite
HEARTBEAT_INTERVAL_S = 1  # PS_HEARTBEAT_INTERVAL (ps-lite reads whole seconds)
MIN_STAGE_INTERVALS = 3  # a node is dead only after this many missed heartbeats at least
CONFIRM_INTERVALS = 2  # ...and when still reported dead after this many more intervals
SETTLE_S = 1.0  # scheduler / server: wait this long after ps-lite starts before asking it
SCHEDULER_ID = 1  # ps-lite node ids: scheduler 1, server r 8 + 2r, worker r 9 + 2r
RESUME = (
    "restart the cluster (scheduler, server and every worker; the State Server may stay); "
    "with checkpoints, add --resume to the workers' command"
)


def parse_interval(text: str | None) -> int:
    """An environment value as ps-lite's ``atoi`` reads it (leading integer, else 0)."""
    match = re.match(r"\s*([+-]?\d+)", text or "")
    return int(match.group(1)) if match else 0


def confirm_seconds(interval: int = HEARTBEAT_INTERVAL_S) -> float:
    """How long ps-lite must keep reporting a node dead before the watchdog believes it: two
    heartbeat intervals and a second, time for a late first heartbeat (and its answer)."""
    return CONFIRM_INTERVALS * max(1, interval) + 1.0


def stage_timeout(timeout: float, interval: int = HEARTBEAT_INTERVAL_S) -> int:
    """Whole seconds without a heartbeat after which ps-lite counts a node as dead.

    A node is found dead at most ``stage + 1`` s after its last heartbeat (ps-lite's clock has
    whole seconds) plus one poll plus :func:`confirm_seconds`; a dead worker takes two such
    stages (the scheduler, then everyone else noticing that the scheduler is gone), so two of
    them fit in ``timeout`` (from 20 s up with 1 s heartbeats; below that the floor wins).
    Never less than ``MIN_STAGE_INTERVALS`` heartbeat intervals, so a busy host is not dead.
    """
    floor = MIN_STAGE_INTERVALS * max(1, interval)
    per_stage_extra = 1.0 + POLL_S + confirm_seconds(interval)
    return max(floor, int((timeout - 2 * per_stage_extra) // 2))


def configure_heartbeats(timeout: float, env: MutableMapping[str, str] = os.environ) -> int:
    """Turn ps-lite's heartbeats on before it starts (values already set are kept).

    ``PS_HEARTBEAT_INTERVAL`` is 1 s whatever the timeout, so nodes started with different
    ``--failure-timeout`` values never take each other for dead (launch.py passes no flags to
    the scheduler and the server); ``PS_HEARTBEAT_TIMEOUT`` (ps-lite's own horizon, used when
    a node re-registers) is the watchdog's stage. Returns the stage in seconds.
    """
    env.setdefault("PS_HEARTBEAT_INTERVAL", str(HEARTBEAT_INTERVAL_S))
    stage = stage_timeout(timeout, parse_interval(env.get("PS_HEARTBEAT_INTERVAL")))
    env.setdefault("PS_HEARTBEAT_TIMEOUT", str(stage))
    return stage


@dataclass
class WorkerSettings:
    """What a worker's watchdog needs from the command line (set by ``configure_worker``)."""

    timeout: float = config.FAILURE_TIMEOUT_S
    state_url: str | None = None  # the State Server, for esync hints


_settings = WorkerSettings()


def configure_worker(args) -> int:
    """main.py, before the KVStore starts: heartbeats on, and the worker watchdog's settings."""
    from trainer import registry

    _settings.timeout = float(args.failure_timeout)
    spec = registry.get(args.mode)
    _settings.state_url = f"http://{args.ip}:{args.port}" if spec.state_server else None
    return configure_heartbeats(_settings.timeout)


@dataclass(frozen=True)
class Node:
    """A ps-lite node: the scheduler, or a server / worker of some rank."""

    role: str  # scheduler | server | worker
    rank: int = 0
    address: str | None = None  # host:port when known (the scheduler's)

    @property
    def node_id(self) -> int:
        if self.role == "scheduler":
            return SCHEDULER_ID
        return (8 if self.role == "server" else 9) + 2 * self.rank

    def __str__(self) -> str:
        if self.role == "scheduler":
            return f"the scheduler at {self.address}" if self.address else "the scheduler"
        return f"{self.role} rank {self.rank} (ps-lite node {self.node_id})"


def watched_nodes(role: str, env: Mapping[str, str] = os.environ) -> list[Node]:
    """What ``role`` can watch: the scheduler every worker and server, the others the scheduler."""
    if role == "scheduler":
        workers = [Node("worker", r) for r in range(int(env["DMLC_NUM_WORKER"]))]
        return workers + [Node("server", r) for r in range(int(env["DMLC_NUM_SERVER"]))]
    address = f"{env.get('DMLC_PS_ROOT_URI', '?')}:{env.get('DMLC_PS_ROOT_PORT', '?')}"
    return [Node("scheduler", address=address)]


def _write_stderr(line: str) -> None:
    """One line to fd 2 without Python's stream locks (the main thread may hold them)."""
    os.write(2, (line + "\n").encode(errors="replace"))


class FailureWatchdog:
    """A daemon thread that ends the process (``EXIT_CODE``) when a watched node is dead, or
    (after the first ``beat()``) when no round finished within ``timeout`` seconds.

    ``is_dead(node_id)`` asks ps-lite (None: not available); ``active()`` tells whether ps-lite
    runs (None: always), so that nothing is asked before it started or while it shuts down;
    ``hint()`` adds what the State Server knows to a failure message; ``waits_for`` says what
    a round waits for (None: no no-progress guard). ``clock``, ``exit`` and ``write`` are
    replaceable for tests; ``check()`` is one decision without side effects other than
    reading those.
    """

    def __init__(
        self,
        me: str,
        role: str,
        watch: list[Node],
        is_dead: Callable[[int], bool] | None,
        stage: int,
        timeout: float,
        *,
        active: Callable[[], bool] | None = None,
        hint: Callable[[], str] | None = None,
        waits_for: str | None = "the other workers and the parameter server",
        clock: Callable[[], float] = time.monotonic,
        exit: Callable[[int], object] = os._exit,
        write: Callable[[str], None] = _write_stderr,
        poll: float = POLL_S,
        confirm: float | None = None,
    ) -> None:
        self.me, self.role, self.watch = me, role, watch
        self.is_dead, self.stage, self.timeout = is_dead, stage, timeout
        self.active, self.hint, self.waits_for = active, hint, waits_for
        self.clock, self.exit, self.write, self.poll = clock, exit, write, poll
        self.confirm = confirm_seconds() if confirm is None else confirm
        self._dead_since: dict[int, float] = {}  # node id -> first of the dead answers in a row
        self._seen_alive: set[int] = set()  # node ids ps-lite once reported alive
        self._started_at: float | None = None  # when ps-lite was first seen running
        self._last_beat: float | None = None  # None: the no-progress guard is not armed
        self._paused = 0
        self._finished = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def disabled(cls) -> FailureWatchdog:
        """A watchdog that watches nothing (standalone training)."""
        return cls("", "local", [], None, 0, 0.0)

    # --- the training loop's calls ----------------------------------------------------

    def beat(self) -> None:
        """A round finished (the first call arms the no-progress guard, if there is one)."""
        if self.waits_for is not None:
            self._last_beat = self.clock()

    def pause(self) -> None:
        """Evaluation or a checkpoint begins: the guard does not count the time until resume."""
        self._paused += 1

    def resume(self) -> None:
        self._paused = max(0, self._paused - 1)
        if self._last_beat is not None:
            self._last_beat = self.clock()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with watchdog.paused():`` around evaluation and checkpoints."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def finish(self) -> None:
        """Training ended: no more progress is expected (dead nodes are still watched)."""
        self._finished = True

    # --- decisions --------------------------------------------------------------------

    def check(self) -> str | None:
        """The failure message when the process must exit now, else None."""
        if self._may_ask():
            for node in self.watch:
                if self._confirmed_dead(node.node_id):
                    return self._dead_message(node)
        return self._progress_message()

    def _confirmed_dead(self, node_id: int) -> bool:
        """ps-lite has reported ``node_id`` dead at every poll for ``confirm`` s (a node never
        seen alive: for a whole stage more, as its first heartbeat may come late)."""
        now = self.clock()
        if not self.is_dead(node_id):
            self._dead_since.pop(node_id, None)
            self._seen_alive.add(node_id)
            return False
        since = self._dead_since.setdefault(node_id, now)
        needed = self.confirm if node_id in self._seen_alive else self.confirm + self.stage
        return now - since >= needed

    def _may_ask(self) -> bool:
        """Whether ps-lite can be asked now: it runs, the node ids exist, and not finalising."""
        if self.is_dead is None:
            return False
        if self.active is None:
            return True
        running = self.active()
        if self._started_at is None:
            if running:
                self._started_at = self.clock()
            return False
        if not running:  # ps-lite is finalising (its node table is about to be cleared)
            self.is_dead = None
            return False
        return self.clock() - self._started_at >= SETTLE_S

    def _dead_message(self, node: Node) -> str:
        if self.role == "scheduler":
            cause = "it died or its host is unreachable"
            after = (
                f" The server and the workers notice that the scheduler is gone within "
                f"{self.stage + 2} s and stop too."
            )
        else:
            cause = "it died, or it stopped because another node died (its output names which)"
            after = ""
        return (
            f"{self.me} FAILURE: {node} sent no heartbeat for {self.stage} s (and none in the "
            f"{self.confirm:g} s after): {cause}"
            f"{self._hint()}.{after} Exiting with code {EXIT_CODE}. To resume: {RESUME}."
        )

    def _progress_message(self) -> str | None:
        if self._last_beat is None or self._paused or self._finished:
            return None
        idle = self.clock() - self._last_beat
        if idle <= self.timeout:
            return None
        return (
            f"{self.me} FAILURE: no training round finished for {idle:.0f} s "
            f"(--failure-timeout {self.timeout:g}): this worker waits for {self.waits_for}, "
            f"so one of them died or hangs{self._hint()}. Exiting with code {EXIT_CODE}. "
            f"To resume: {RESUME}."
        )

    def _hint(self) -> str:
        if self.hint is None:
            return ""
        try:
            return self.hint()
        except Exception as exc:  # a hint must never stop the exit
            return f" (no hint: {exc})"

    # --- the thread -------------------------------------------------------------------

    def start(self) -> FailureWatchdog:
        if self.is_dead is None and self.role != "worker":
            return self
        self._thread = threading.Thread(target=self._run, name="failure-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                message = self.check()
            except Exception as exc:  # e.g. MXNetError: ps-lite cannot answer any more
                self.is_dead = None
                self.write(f"{self.me} warning: dead nodes are no longer detected: {exc}")
                continue
            if message is not None:
                self.fail(message)
                return

    def fail(self, message: str) -> None:
        """Print ``message`` and end the process at once (no KVStore destructor: it would wait
        in a barrier for the dead node)."""
        self.write(message)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        self.exit(EXIT_CODE)

    def stop(self) -> None:
        """Stop watching; returns when no question to ps-lite is under way any more."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread() or sys.is_finalizing():
            return  # a daemon thread cannot run again once the interpreter is finalising
        thread.join(timeout=10 * self.poll + 5.0)

    def release(self, barrier: Callable[[], None] | None) -> None:
        """The worker's KVStore is being freed: wait in ``barrier`` (a KVStore barrier of all
        workers) while still watching, then stop. The KVStore's destructor then waits in its
        own barriers, which every worker reaches at once, unwatched only for that moment."""
        self.finish()
        if barrier is not None:
            with contextlib.suppress(Exception):
                barrier()
        self.stop()


# --- MXNet ----------------------------------------------------------------------------


def dead_node_query(handle, stage: int) -> Callable[[int], bool]:
    """``is_dead(node_id)``: ``MXKVStoreGetNumDeadNode`` for one node id (``GetNodeIDs`` of an
    individual id is that id), counting a node dead after ``stage`` s without a heartbeat."""
    from mxnet.base import _LIB, check_call

    def is_dead(node_id: int) -> bool:
        number = ctypes.c_int(0)
        check_call(
            _LIB.MXKVStoreGetNumDeadNode(
                handle, ctypes.c_int(node_id), ctypes.byref(number), ctypes.c_int(stage)
            )
        )
        return number.value > 0

    return is_dead


def ps_running(handle) -> Callable[[], bool]:
    """True while ps-lite runs in this process: its worker count is set when it starts
    (before its node table) and reset first thing when it finalises (before clearing it)."""
    from mxnet.base import _LIB, check_call

    def running() -> bool:
        size = ctypes.c_int(0)
        check_call(_LIB.MXKVStoreGetGroupSize(handle, ctypes.byref(size)))
        return size.value > 0

    return running


def _dead_query_or_warn(me: str, handle, stage: int) -> Callable[[int], bool] | None:
    if parse_interval(os.environ.get("PS_HEARTBEAT_INTERVAL")) <= 0:
        _write_stderr(
            f"{me} warning: PS_HEARTBEAT_INTERVAL is 0 or unset (no ps-lite heartbeats): a "
            "dead node is not detected; unset it (main.py sets 1) or set it to 1 on every node"
        )
        return None
    return dead_node_query(handle, stage)


def watch_ps_node(role: str, handle, timeout: float) -> FailureWatchdog:
    """Start the watchdog of the scheduler or the server (before it serves)."""
    stage = stage_timeout(timeout, parse_interval(os.environ.get("PS_HEARTBEAT_INTERVAL")))
    me = f"[{role}]"
    query = _dead_query_or_warn(me, handle, stage)
    watchdog = FailureWatchdog(
        me, role, watched_nodes(role), query, stage, timeout, active=ps_running(handle)
    )
    return watchdog.start()


_current: FailureWatchdog | None = None


def worker_watchdog() -> FailureWatchdog:
    """This worker's watchdog (a disabled one when standalone): the training loop calls its
    ``beat()`` after every round and ``paused()`` around evaluation and checkpoints."""
    global _current
    if _current is None:
        _current = FailureWatchdog.disabled()
    return _current


def watch_worker_kvstore(kv) -> FailureWatchdog:
    """Start the watchdog of a worker's freshly joined KVStore.

    The KVStore gets a subclass whose ``__del__`` first waits for the other workers with the
    watchdog still on (``FailureWatchdog.release``), then stops it and frees the store: the
    watchdog must never ask ps-lite while the destructor finalises it.
    """
    global _current
    timeout = _settings.timeout
    stage = stage_timeout(timeout, parse_interval(os.environ.get("PS_HEARTBEAT_INTERVAL")))
    me = f"[worker {kv.rank}/{kv.num_workers}]"
    hint = None
    if _settings.state_url:
        hint = state_server_hint(_settings.state_url, kv.rank)
    query = _dead_query_or_warn(me, kv.handle, stage)
    watchdog = FailureWatchdog(
        me,
        "worker",
        watched_nodes("worker"),
        query,
        stage,
        timeout,
        hint=hint,
        waits_for=rounds_wait_for(kv.type, kv.rank),
    )
    kv._failure_watchdog = (watchdog, worker_barrier(kv.handle))
    kv.__class__ = _watched_class(type(kv))
    _current = watchdog
    return watchdog.start()


def rounds_wait_for(kv_type: str, rank: int) -> str | None:
    """What a worker's rounds wait for, or None when it has no no-progress guard.

    In the synchronous modes every worker's round also waits for rank 0's evaluation, which
    only rank 0 can leave out; rank 0's own rounds wait for every worker and the server, so
    rank 0 alone guards them, and its exit stops the others through the scheduler. In the
    asynchronous modes each worker waits only for the server and guards itself.
    """
    if "async" in kv_type:
        return "the parameter server"
    return "the other workers and the parameter server" if rank == 0 else None


_WATCHED: dict[type, type] = {}


def _watched_class(base: type) -> type:
    """``base`` with a ``__del__`` that releases the watchdog before the store is freed."""
    if base in _WATCHED.values():
        return base
    if base not in _WATCHED:

        def __del__(self) -> None:
            watched = self.__dict__.pop("_failure_watchdog", None)
            if watched is not None:
                watchdog, barrier = watched
                watchdog.release(barrier)
            base.__del__(self)

        _WATCHED[base] = type(f"Watched{base.__name__}", (base,), {"__del__": __del__})
    return _WATCHED[base]


def worker_barrier(handle) -> Callable[[], None]:
    """What the KVStore destructor does first: finish pending work, then a barrier of all
    workers (MXNet is bound now: the store may be freed while the interpreter shuts down)."""
    from mxnet.base import _LIB, check_call
    from mxnet.ndarray import waitall

    def barrier() -> None:
        waitall()
        check_call(_LIB.MXKVStoreBarrier(handle))

    return barrier


# --- State Server hints ---------------------------------------------------------------


def state_server_hint(url: str, rank: int) -> Callable[[], str]:
    """A hint function that asks the State Server which workers are not waiting to sync."""
    from trainer.state_client import StateClient

    def hint() -> str:
        try:
            with StateClient(url, timeout=2.0, retry_for=1.0) as client:
                status = client.status()
        except Exception as exc:
            return f"; the State Server at {url} did not answer ({exc})"
        return describe_status(status, rank)

    return hint


def describe_status(status: Mapping, me: int) -> str:
    """Which other workers the State Server saw last away from the synchronisation point.

    When a round is stuck, the live workers wait at its synchronisation (``ready``); one that
    is not there, silent the longest, is the likeliest dead one.
    """
    now = status.get("server_time")
    others = [w for w in status.get("workers") or [] if w.get("rank") != me]
    away = [w for w in others if not w.get("ready")]
    head = f"; State Server (round {status.get('round')})"
    if not away:
        return f"{head}: every other worker waits at the synchronisation point"

    def silent(w: Mapping) -> float | None:
        seen = w.get("last_seen")
        return None if not seen or now is None else float(now) - float(seen)

    def order(w: Mapping) -> float:
        age = silent(w)
        return float("inf") if age is None else age

    parts = []
    for w in sorted(away, key=order, reverse=True):
        age = silent(w)
        seen = "never seen" if age is None else f"last seen {age:.1f} s ago"
        parts.append(f"worker {w.get('rank')} ({seen}, in round {w.get('round')})")
    return f"{head}: not at the synchronisation point: {', '.join(parts)}"
