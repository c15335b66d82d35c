"""The probes of issue #23 against a real State Server with a token (runserver and gunicorn):
each refused write is a 4xx JSON error and leaves the state as it was; a server bound to an
address other machines reach does not start without a token; the launcher's failure report
reaches a dashboard that has a token."""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from launcher import local
from launcher.supervision import (
    CLUSTER_VARS,
    ROOT,
    TOKEN_VAR,
    Cluster,
    LaunchError,
    child_env,
    start_state_server,
    state_server_cmd,
)

TOKEN = "http-probe-token"
INIT = {"msg_type": "init", "num_workers": 4, "epsilon": 0.0}


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 0

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.getheader("Content-Type", "").startswith("application/json"), data[:200]
            return resp.status, json.loads(data)
        finally:
            conn.close()

    def state(self) -> dict:
        status, snap = self.request("GET", "/status.json")
        assert status == 200, snap
        snap.pop("now", None)
        snap.pop("server_time", None)
        return snap


@pytest.fixture(scope="module", params=["runserver", "gunicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    cluster = Cluster(tmp_path_factory.mktemp(f"security-{request.param}"))
    try:
        env = child_env(1, {TOKEN_VAR: TOKEN}, drop=CLUSTER_VARS)
        _, url = start_state_server(cluster, request.param, env=env)
        yield Server(url)
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs)


def good(**extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-ESync-Token": TOKEN, **extra}


PROBES = {
    "no token": ("/msg/", json.dumps(INIT).encode(), {"Content-Type": "application/json"}),
    "wrong token": ("/msg/", json.dumps(INIT).encode(), good(**{"X-ESync-Token": "guess"})),
    "form post": (
        "/init/",
        b"num_workers=4&epsilon=0",
        good(**{"Content-Type": "application/x-www-form-urlencoded"}),
    ),
    "text/plain from a foreign page": (
        "/msg/",
        json.dumps(INIT).encode(),
        {"Content-Type": "text/plain", "Origin": "http://evil.example"},
    ),
    "JSON from a foreign page": (
        "/msg/",
        json.dumps(INIT).encode(),
        good(Origin="http://evil.example"),
    ),
    "fake hold without the token": (
        "/msg/",
        json.dumps({"msg_type": "hold", "rank": 0, "t": 1, "k": 0, "c": 0.0, "te": 1.0}).encode(),
        {"Content-Type": "application/json"},
    ),
    "rebound host name": ("/msg/", json.dumps(INIT).encode(), good(Host="evil.example")),
}


@pytest.mark.parametrize("probe", PROBES)
def test_a_refused_write_is_a_4xx_and_changes_nothing(server: Server, probe: str) -> None:
    path, body, headers = PROBES[probe]
    status, _ = server.request("POST", "/msg/", json.dumps(INIT).encode(), good())
    assert status == 200  # a run in progress: the probe would change it
    reset = {"msg_type": "reset", "rank": 0, "t": 1, "te": 1.0}
    assert server.request("POST", "/msg/", json.dumps(reset).encode(), good())[0] == 200
    before = server.state()
    assert before["num_workers"] == 4
    status, answer = server.request("POST", path, body, headers)
    assert 400 <= status < 500 and "error" in answer, (probe, status, answer)
    assert server.state() == before, probe


def test_the_same_write_with_the_token_and_json_is_taken(server: Server) -> None:
    init = {**INIT, "num_workers": 3}
    status, answer = server.request("POST", "/msg/", json.dumps(init).encode(), good())
    assert (status, answer["of"]) == (200, "init")
    assert server.state()["num_workers"] == 3


def test_a_loopback_reader_needs_no_token(server: Server) -> None:
    status, snap = server.request("GET", "/dashboard.json")
    assert status == 200 and "runs" in snap


def test_the_dashboard_shows_failed_with_a_token_set(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = "lenet/esync-failing"
    announce = {"msg_type": "run", "run": run, "mode": "esync", "num_workers": 2}
    status, _ = server.request("POST", "/progress/", json.dumps(announce).encode(), good())
    assert status == 200
    monkeypatch.setenv(TOKEN_VAR, TOKEN)
    local.report_failure(["--report-progress", server.url], run, LaunchError("worker0 died"))
    status, snap = server.request("GET", f"/dashboard.json?run={run.replace('/', '%2F')}")
    assert status == 200 and snap["state"] == "failed", snap
    assert "worker0 died" in snap["failed"]


@pytest.mark.parametrize("kind", ["runserver", "gunicorn"])
def test_an_exposed_server_without_a_token_does_not_start(kind: str) -> None:
    cmd = state_server_cmd(kind, "0.0.0.0", 1)  # refused before it binds anything
    res = subprocess.run(
        cmd,
        cwd=ROOT,
        env=child_env(1, drop=CLUSTER_VARS),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert "ESYNC_TOKEN is not set" in res.stderr, res.stderr[-2000:]
    assert ("--insecure" if kind == "runserver" else "ESYNC_INSECURE=1") in res.stderr
