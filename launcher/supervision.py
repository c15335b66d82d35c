"""Process supervision shared by the launcher, the benchmarks and the tests.

One place for: the child-process environment, free ports, starting a process in its own
session with its output in a log file (optionally also echoed, line by line, to this terminal),
restarting one in place, stopping whole process groups (TERM, then KILL), waiting for an HTTP
server, and the State Server's command line and environment.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import config
from StateServer.scheduler import CLUSTER_SIZE_VAR
from trainer.layout import PIDS_NAME

ROOT = config.ROOT
PYTHON = sys.executable
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
STATE_SERVER_KINDS = ("runserver", "gunicorn")
GUNICORN_THREADS = "64"  # StateServer/gunicorn.conf.py's default (ESYNC_THREADS)
CLUSTER_VARS = ("DMLC_", "PS_", "ESYNC_")  # what a test's children must not inherit
TOKEN_VAR = "ESYNC_TOKEN"  # the run's secret: environment or a 0600 file only, never argv
# how a worker names its rank in its output: "[worker 3/4] ..." or "[worker 3] done ..."
WORKER_RANK_RE = re.compile(r"\[worker (\d+)(?:/\d+)?\]")
_ECHO_LOCK = threading.Lock()  # one echoed line at a time on this terminal


class LaunchError(Exception):
    """A process failed or did not come up; the message says which and why. ``exit_code``:
    the failed process's, when one exited."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def run_token() -> str:
    """The run's State Server token: the caller's ``ESYNC_TOKEN``, else a new random one, set
    in this process's environment so that every child gets it from :func:`child_env` (and
    every ssh host from a 0600 file, launcher/ssh.py): never on a command line, where ``ps``
    shows it to every user of the host."""
    token = os.environ.get(TOKEN_VAR) or secrets.token_urlsafe(32)
    os.environ[TOKEN_VAR] = token
    return token


def child_env(
    threads: int = config.NUM_THREADS,
    extra: dict[str, str] | None = None,
    drop: Iterable[str] = ("DMLC_",),
) -> dict[str, str]:
    """Environment of a child: thread limits, unbuffered output, no inherited cluster role.

    Variables starting with a prefix in ``drop`` are removed (tests also drop ``PS_`` and
    ``ESYNC_`` so that nothing of the caller's shell leaks into a run).
    """
    prefixes = tuple(drop)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update({name: str(threads) for name in THREAD_VARS}, PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group that may be gone already."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Proc:
    """One child process (the leader of its own session) and its log file."""

    name: str
    popen: subprocess.Popen
    log_path: str
    log_file: IO[bytes]
    role: str  # state-server | scheduler | server | worker | local | anything a test names
    cmd: list[str] = field(default_factory=list)  # what started it (Cluster.restart reruns it)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ROOT
    restarts: int = 0  # times Cluster.restart started it again
    echo: Callable[[str], str] | None = None  # see Cluster.start
    pump: threading.Thread | None = None  # copies an echoed process's output
    liveness: Liveness | None = None  # an HTTP probe: a hung process is restarted too

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 15) -> str:
        """The last lines of this process's output."""
        if self.pump is not None and self.poll() is not None:
            self.pump.join(2.0)  # the lines an echoed process wrote just before it ended
        if not self.log_file.closed:
            self.log_file.flush()
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def describe_exit(self) -> str:
        """Which process ended, with its rank when a worker printed it, and its last output."""
        tail = self.tail()
        rank = ""
        for line in tail.splitlines():
            match = WORKER_RANK_RE.search(line)
            if match:
                rank = f" (rank {match.group(1)})"
        return (
            f"{self.name}{rank}, pid {self.pid}, exited with code {self.popen.returncode}; "
            f"last output from {self.log_path}:\n{tail}"
        )


class Liveness:
    """Probes ``url`` every ``interval`` s from a thread of its own (each GET with
    ``timeout``): :meth:`silent_for` is how long it has not answered. A stopped
    (SIGSTOP) or wedged process still runs as far as ``poll`` can tell; this tells it."""

    def __init__(
        self,
        url: str,
        interval: float = config.LIVENESS_INTERVAL_S,
        timeout: float = config.LIVENESS_TIMEOUT_S,
    ) -> None:
        self.url, self.interval, self.timeout = url, interval, timeout
        self._answered = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True, name="liveness")
        self._thread.start()

    def _probe(self) -> None:
        while not self._stop.wait(self.interval):
            if http_answers(self.url, self.timeout):
                self._answered = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self._answered

    def reset(self) -> None:
        """A new process answers from now on (after a restart)."""
        self._answered = time.monotonic()

    def close(self) -> None:
        self._stop.set()


@dataclass
class Cluster:
    """The processes of one run; ``stop()`` ends them all (process groups, TERM then KILL).

    ``env_extra`` is added to every child's environment (tests put a marker there to find
    stray processes).
    """

    proc_dir: str | os.PathLike[str]
    procs: list[Proc] = field(default_factory=list)
    env_extra: dict[str, str] = field(default_factory=dict)

    def start(
        self,
        name: str,
        role: str,
        cmd: list[str],
        env: dict[str, str],
        cwd: str = ROOT,
        echo: Callable[[str], str] | None = None,
    ) -> Proc:
        """Start ``cmd`` in its own session, its output in ``<proc_dir>/<name>.log``.

        With ``echo``, each output line goes through ``echo`` (e.g. a prefix naming the host)
        and then both to the log file and to this process's stdout (launch.py's remote
        processes: their ssh clients are supervised here like any local process).
        """
        os.makedirs(self.proc_dir, exist_ok=True)
        path = os.path.join(self.proc_dir, f"{name}.log")
        log_file = open(path, "wb")
        env = {**env, **self.env_extra}
        popen, pump = self._spawn(cmd, env, cwd, log_file, echo)
        proc = Proc(name, popen, path, log_file, role, list(cmd), env, cwd, echo=echo, pump=pump)
        self.procs.append(proc)
        self._write_pids()
        return proc

    @staticmethod
    def _spawn(
        cmd: list[str],
        env: dict[str, str],
        cwd: str,
        log: IO[bytes],
        echo: Callable[[str], str] | None,
    ) -> tuple[subprocess.Popen, threading.Thread | None]:
        """Start ``cmd``; with ``echo``, its output goes to a pipe and a thread copies it."""
        popen = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE if echo else log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if echo is None:
            return popen, None
        pump = threading.Thread(target=_pump, args=(popen.stdout, log, echo), daemon=True)
        pump.start()
        return popen, pump

    @staticmethod
    def _close_log(proc: Proc, timeout: float = 5.0) -> None:
        """Close ``proc``'s log file once its echo thread has copied what is left."""
        if proc.pump is not None:
            proc.pump.join(timeout)
        proc.log_file.close()

    def restart(self, proc: Proc, grace: float = config.STOP_GRACE_S) -> Proc:
        """Start ``proc`` again in place: same command, environment and working directory,
        its output appended to the same log file, the new pid in ``pids.json``.

        Whatever is left of the old process group is killed first (a server that binds a
        port must find it free; both servers here bind with SO_REUSEADDR, so sockets left in
        TIME_WAIT do not matter). Returns the same ``Proc`` object, now for the new process.
        """
        old_pid = proc.pid
        if proc.poll() is None:
            signal_group(old_pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        signal_group(old_pid, signal.SIGKILL)  # what a dead leader left in its group
        proc.popen.wait()
        _wait_group_gone(old_pid, grace)
        self._close_log(proc)
        proc.log_file = open(proc.log_path, "ab")
        proc.log_file.write(
            f"\n--- {proc.name} (pid {old_pid}) exited with code {proc.popen.returncode}; "
            f"restarted with the same command ---\n".encode()
        )
        proc.log_file.flush()
        proc.popen, proc.pump = self._spawn(proc.cmd, proc.env, proc.cwd, proc.log_file, proc.echo)
        proc.restarts += 1
        if proc.liveness is not None:
            proc.liveness.reset()
        self._write_pids()
        return proc

    def _write_pids(self) -> None:
        """``pids.json``: name -> pid of every process started, for inspection and tests."""
        with open(os.path.join(self.proc_dir, PIDS_NAME), "w") as fh:
            json.dump({p.name: p.pid for p in self.procs}, fh)

    def of_role(self, *roles: str) -> list[Proc]:
        """The processes of these roles, in start order."""
        return [p for p in self.procs if p.role in roles]

    def stop(self, grace: float = config.STOP_GRACE_S) -> None:
        """Terminate every process group still alive, then kill what remains after ``grace``."""
        for p in self.procs:
            if p.liveness is not None:
                p.liveness.close()
        alive = [p for p in self.procs if p.poll() is None]
        for p in alive:
            signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in alive:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # children of a finished leader may still hold the group
            signal_group(p.pid, signal.SIGKILL)
            try:
                p.popen.wait(5.0)
            except subprocess.TimeoutExpired:
                print(f"warning: {p.name} (pid {p.pid}) did not die", file=sys.stderr)
            self._close_log(p)

    def wait_trainers(
        self,
        trainer_roles: tuple[str, ...],
        exit_roles: tuple[str, ...],
        timeout: float = 0.0,
        grace: float = config.PS_EXIT_GRACE_S,
        on_tick: Callable[[], None] = lambda: None,
        restart_roles: tuple[str, ...] = (),
        max_restarts_per_role: int = config.STATE_SERVER_MAX_RESTARTS,
    ) -> None:
        """Wait until every trainer has exited 0 and then every ``exit_roles`` process too.

        Fails fast (LaunchError naming the process) when any process exits non-zero or a
        State Server exits at all, when the ``exit_roles`` are still up ``grace`` s after the
        trainers finished, or after ``timeout`` s (0: no limit). ``on_tick`` runs every poll.

        A process of one of ``restart_roles`` that exits (with any code) is restarted in
        place instead (:meth:`restart`, one line on stderr), at most
        ``max_restarts_per_role`` times per role; one more exit is a LaunchError.
        """
        started = time.monotonic()
        finished_at: float | None = None
        restarts: dict[str, int] = {}
        while True:
            time.sleep(0.25)
            on_tick()
            self._kill_hung(restart_roles)
            self._restart_exited(restart_roles, max_restarts_per_role, restarts)
            self._raise_on_failure()
            if all(p.poll() == 0 for p in self.of_role(*trainer_roles)):
                finished_at = finished_at or time.monotonic()
                if all(p.poll() == 0 for p in self.of_role(*exit_roles)):
                    return
                if time.monotonic() - finished_at > grace:
                    raise LaunchError(
                        f"the trainers finished but {'/'.join(exit_roles)} did not exit "
                        f"within {grace:g} s"
                    )
            if timeout and time.monotonic() - started > timeout:
                raise LaunchError(f"the run took longer than --timeout {timeout:g} s")

    def _kill_hung(self, roles: tuple[str, ...], hang_s: float = config.HUNG_AFTER_S) -> None:
        """SIGKILL a process of ``roles`` whose liveness probe has had no answer for
        ``hang_s`` s, so that it is restarted in place like one that died."""
        for p in self.of_role(*roles):
            if p.liveness is None or p.poll() is not None:
                continue
            silent = p.liveness.silent_for()
            if silent > hang_s:
                print(
                    f"launch: {p.name} (pid {p.pid}) has not answered {p.liveness.url} for "
                    f"{silent:.0f} s: killing it, to restart it in place",
                    file=sys.stderr,
                    flush=True,
                )
                signal_group(p.pid, signal.SIGKILL)
                p.popen.wait()

    def _restart_exited(self, roles: tuple[str, ...], limit: int, counts: dict[str, int]) -> None:
        """Restart the exited processes of ``roles`` while ``counts[role] < limit``."""
        for p in self.of_role(*roles):
            code = p.poll()
            if code is None:
                continue
            done = counts.get(p.role, 0)
            if done >= limit:
                raise LaunchError(
                    f"{p.role} restarted {done} time(s) already (the limit), then "
                    f"{p.describe_exit()}"
                )
            old_pid = p.pid
            self.restart(p)
            counts[p.role] = done + 1
            print(
                f"launch: {p.name} (pid {old_pid}) exited with code {code}; restarted as pid "
                f"{p.pid} on the same port (restart {done + 1} of at most {limit})",
                file=sys.stderr,
                flush=True,
            )

    def _raise_on_failure(self) -> None:
        for p in self.procs:
            code = p.poll()
            if code not in (None, 0) or (code == 0 and p.role == "state-server"):
                raise LaunchError(p.describe_exit(), exit_code=code)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _pump(pipe: IO[bytes], log: IO[bytes], echo: Callable[[str], str]) -> None:
    """Copy a child's output line by line, through ``echo``, to its log file and to stdout
    (until the pipe closes; a pseudo-terminal's CR LF line ends become LF)."""
    for raw in iter(pipe.readline, b""):
        line = echo(raw.decode(errors="replace").rstrip("\r\n")) + "\n"
        try:
            log.write(line.encode())
            log.flush()
        except ValueError:  # the log was closed: the run is over
            break
        with _ECHO_LOCK:
            sys.stdout.write(line)
            sys.stdout.flush()
    pipe.close()


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait until no process is left in group ``pgid`` (at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)


def http_answers(url: str, timeout: float = 1.0) -> bool:
    """True when something answers HTTP at ``url`` (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def wait_http(url: str, proc: Proc, timeout: float) -> None:
    """Wait until ``url`` answers; LaunchError when ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(proc.describe_exit())
        if http_answers(url):
            return
        time.sleep(0.1)
    raise LaunchError(f"{proc.name} did not answer at {url} within {timeout:.0f} s")


def state_server_cmd(kind: str, host: str, port: int, workers: int = 0) -> list[str]:
    """The command that serves the State Server on ``host:port`` (run it from ROOT).

    ``workers``: the trainers that will use it. gunicorn's gthread worker serves one request
    per thread, and the non-blocking protocol keeps one request per worker held open, so it
    gets at least ``workers + 8`` threads (runserver has a thread per connection)."""
    if kind == "gunicorn":
        conf = str(Path(ROOT) / "StateServer" / "gunicorn.conf.py")
        cmd = [PYTHON, "-m", "gunicorn", "-c", conf, "--bind", f"{host}:{port}"]
        threads = int(os.environ.get("ESYNC_THREADS", GUNICORN_THREADS))
        if workers + 8 > threads:
            cmd += ["--threads", str(workers + 8)]
        return cmd
    if kind == "runserver":
        return [PYTHON, "-m", "StateServer", "runserver", f"{host}:{port}", "--noreload"]
    raise ValueError(f"unknown State Server kind {kind!r} (choose from runserver, gunicorn)")


def state_server_env(workers: int) -> dict[str, str]:
    """What a State Server for a run of ``workers`` trainers gets on top of the usual
    environment: its cluster size, so that an init of another size is refused (HTTP 409;
    docs/state-server.md, "Semantic bounds"). ``workers`` 0: none (any size may init)."""
    return {CLUSTER_SIZE_VAR: str(workers)} if workers > 0 else {}


def start_state_server(
    cluster: Cluster,
    kind: str = config.STATE_SERVER_KIND,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = config.STATE_SERVER_START_S,
    workers: int = 0,
) -> tuple[Proc, str]:
    """Start a State Server in ``cluster`` and wait until it answers; returns (proc, URL).

    ``workers`` > 0: the run's number of trainers, the server's cluster size
    (:func:`state_server_env`, added to ``env``)."""
    port = port or free_port(host)
    cmd = state_server_cmd(kind, host, port, workers)
    env = {**(env or child_env(1)), **state_server_env(workers)}
    proc = cluster.start("state-server", "state-server", cmd, env)
    url = f"http://{host}:{port}"
    wait_http(f"{url}/", proc, timeout)
    proc.liveness = Liveness(f"{url}/status.json")
    return proc, url
