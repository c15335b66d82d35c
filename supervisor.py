"""Process supervision shared by launch.py, the benchmarks and the tests.

One place for: the child-process environment, free ports, starting a process in its own
session with its output in a log file, stopping whole process groups (TERM, then KILL),
waiting for an HTTP server, and the State Server's command line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import config
from trainer.layout import PIDS_NAME

ROOT = config.ROOT
PYTHON = sys.executable
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
STATE_SERVER_KINDS = ("runserver", "gunicorn")
CLUSTER_VARS = ("DMLC_", "PS_", "ESYNC_")  # what a test's children must not inherit


class LaunchError(Exception):
    """A process failed or did not come up; the message says which and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 15) -> str:
        """The last lines of this process's output."""
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
            if line.startswith("[worker ") and "/" in line:
                rank = f" (rank {line.split()[1].split('/')[0]})"
        return (
            f"{self.name}{rank}, pid {self.pid}, exited with code {self.popen.returncode}; "
            f"last output from {self.log_path}:\n{tail}"
        )


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
        self, name: str, role: str, cmd: list[str], env: dict[str, str], cwd: str = ROOT
    ) -> Proc:
        """Start ``cmd`` in its own session, its output in ``<proc_dir>/<name>.log``."""
        os.makedirs(self.proc_dir, exist_ok=True)
        path = os.path.join(self.proc_dir, f"{name}.log")
        log_file = open(path, "wb")
        popen = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**env, **self.env_extra},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = Proc(name, popen, path, log_file, role)
        self.procs.append(proc)
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
            p.log_file.close()

    def wait_trainers(
        self,
        trainer_roles: tuple[str, ...],
        exit_roles: tuple[str, ...],
        timeout: float = 0.0,
        grace: float = config.PS_EXIT_GRACE_S,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        """Wait until every trainer has exited 0 and then every ``exit_roles`` process too.

        Fails fast (LaunchError naming the process) when any process exits non-zero or a
        State Server exits at all, when the ``exit_roles`` are still up ``grace`` s after the
        trainers finished, or after ``timeout`` s (0: no limit). ``on_tick`` runs every poll.
        """
        started = time.monotonic()
        finished_at: float | None = None
        while True:
            time.sleep(0.25)
            on_tick()
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

    def _raise_on_failure(self) -> None:
        for p in self.procs:
            code = p.poll()
            if code not in (None, 0) or (code == 0 and p.role == "state-server"):
                raise LaunchError(p.describe_exit())

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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


def state_server_cmd(kind: str, host: str, port: int) -> list[str]:
    """The command that serves the State Server on ``host:port`` (run it from ROOT)."""
    if kind == "gunicorn":
        conf = str(Path(ROOT) / "StateServer" / "gunicorn.conf.py")
        return [PYTHON, "-m", "gunicorn", "-c", conf, "--bind", f"{host}:{port}"]
    if kind == "runserver":
        return [PYTHON, "-m", "StateServer", "runserver", f"{host}:{port}", "--noreload"]
    raise ValueError(f"unknown State Server kind {kind!r} (choose from runserver, gunicorn)")


def start_state_server(
    cluster: Cluster,
    kind: str = config.STATE_SERVER_KIND,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = config.STATE_SERVER_START_S,
) -> tuple[Proc, str]:
    """Start a State Server in ``cluster`` and wait until it answers; returns (proc, URL)."""
    port = port or free_port(host)
    proc = cluster.start(
        "state-server", "state-server", state_server_cmd(kind, host, port), env or child_env(1)
    )
    url = f"http://{host}:{port}"
    wait_http(f"{url}/", proc, timeout)
    return proc, url
