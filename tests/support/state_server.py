"""Real State Server processes for the tests: what differs between them (``ServerSpec``), the
running server with its HTTP helpers (``RunningServer``), and the mark that gives a test the
``state_server`` fixture of tests/conftest.py with the specs it needs.

    @serves(RUNSERVER, GUNICORN)              # one server per spec, shared by the module
    def test_x(state_server: RunningServer): ...

    @serves(RUNSERVER, private=True)          # a server of its own (the test kills it)
    def test_y(state_server: RunningServer): ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from launcher.supervision import (
    CLUSTER_VARS,
    PYTHON,
    ROOT,
    Cluster,
    Proc,
    child_env,
    free_port,
    start_state_server,
    wait_http,
)
from tests.support.http import HttpClient

TOKEN = "s3cret-token"
START_TIMEOUT_S = 60.0  # manage.py's autoreloader serves from a second Python process


@dataclass(frozen=True)
class ServerSpec:
    """One kind of State Server the tests run."""

    kind: str = "runserver"  # runserver (Django with the fast path), gunicorn, or manage.py
    # (Django's own entry point, ``manage.py runserver`` with its autoreloader)
    token: str | None = None  # ESYNC_TOKEN: writes need it
    allowed_hosts: str | None = None  # ESYNC_ALLOWED_HOSTS
    env: tuple[tuple[str, str], ...] = ()  # other variables, e.g. ESYNC_MAX_HOLD_S
    private: bool = False  # the test stops, kills or restarts it: not shared
    cwd: str = ""  # manage.py: its working directory below the root (``cd StateServer``)
    name: str = ""  # the test id, when kind and token do not say it

    def __str__(self) -> str:
        return self.name or self.kind + ("+token" if self.token else "")

    def environment(self) -> dict[str, str]:
        extra = dict(self.env)
        if self.token:
            extra["ESYNC_TOKEN"] = self.token
        if self.allowed_hosts:
            extra["ESYNC_ALLOWED_HOSTS"] = self.allowed_hosts
        return child_env(1, extra, drop=CLUSTER_VARS)


RUNSERVER = ServerSpec("runserver")
GUNICORN = ServerSpec("gunicorn")


class RunningServer(HttpClient):
    """A State Server process on 127.0.0.1 and the requests the tests make to it."""

    def __init__(self, spec: ServerSpec, proc: Proc, url: str, cluster: Cluster) -> None:
        super().__init__(int(url.rsplit(":", 1)[1]))
        self.spec, self.proc, self.cluster = spec, proc, cluster

    @property
    def kind(self) -> str:
        return self.spec.kind

    def auth(self) -> dict[str, str]:
        """The header that carries the server's token (none without one)."""
        return {"X-ESync-Token": self.spec.token} if self.spec.token else {}

    def msg(self, **fields: object) -> dict:
        """POST ``fields`` to /msg/ with the token; the answer must be a 200."""
        status, obj = self.json("POST", "/msg/", fields, headers=self.auth())
        assert status == 200, (status, obj)
        return obj

    def state(self) -> dict:
        """The status JSON without the fields that change by themselves."""
        status, obj = self.json("GET", "/status.json")
        assert status == 200
        obj.pop("server_time")
        obj.pop("queue_depth")
        return obj

    def stop(self) -> None:
        """Stop the server (and whatever it started); it must be gone afterwards."""
        self.cluster.stop()
        assert all(p.poll() is not None for p in self.cluster.procs), "a server outlived stop"


def _start_manage_py(cluster: Cluster, spec: ServerSpec) -> tuple[Proc, str]:
    """``python [StateServer/]manage.py runserver 127.0.0.1:PORT`` from ``spec.cwd``."""
    cwd = os.path.join(ROOT, spec.cwd)
    script = os.path.relpath(os.path.join(ROOT, "StateServer", "manage.py"), cwd)
    port = free_port()
    cmd = [PYTHON, script, "runserver", f"127.0.0.1:{port}"]
    proc = cluster.start("manage", "state-server", cmd, spec.environment(), cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/status.json", proc, START_TIMEOUT_S)
    return proc, url


@contextmanager
def running_state_server(spec: ServerSpec, proc_dir: Path) -> Iterator[RunningServer]:
    """A State Server of ``spec`` on a free port, its output in ``proc_dir``, started as the
    launcher starts it and answering; stopped (and checked gone) on the way out."""
    cluster = Cluster(proc_dir)
    try:
        if spec.kind == "manage.py":
            proc, url = _start_manage_py(cluster, spec)
        else:
            proc, url = start_state_server(
                cluster, spec.kind, env=spec.environment(), timeout=START_TIMEOUT_S
            )
        server = RunningServer(spec, proc, url, cluster)
        assert server.request("GET", "/status.json")[0] == 200
        yield server
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs), "a State Server outlived its test"


def serves(*specs: ServerSpec, private: bool = False) -> pytest.MarkDecorator:
    """The test runs once against a State Server of each spec (the ``state_server``
    fixture). Shared servers live for the module; ``private`` gives each test run a server
    of its own, stopped after it."""
    if private:
        specs = tuple(replace(s, private=True) for s in specs)
    return pytest.mark.parametrize(
        "state_server",
        specs,
        indirect=True,
        ids=str,
        scope="function" if private else "module",
    )
