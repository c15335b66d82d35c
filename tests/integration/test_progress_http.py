"""``POST /progress/`` and the dashboard's pages over a real State Server (runserver, and
gunicorn with a token)."""

from __future__ import annotations

import json

import pytest

from StateServer.dashboard.reports import FAILED, FINISHED, STARTING
from tests.support.progress_messages import MALFORMED, META, message, record
from tests.support.state_server import RUNSERVER, RunningServer, ServerSpec, serves
from trainer.progress import ProgressReporter

TOKEN = "progress-token"
GUNICORN_WITH_TOKEN = ServerSpec("gunicorn", token=TOKEN)  # no host list: the default hosts


def post(server: RunningServer, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """POST ``body`` to /progress/; the answer must be JSON."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    status, resp_headers, data = server.request("POST", "/progress/", body, hdrs)
    assert resp_headers["content-type"] == "application/json", (status, data[:200])
    return status, json.loads(data)


@serves(RUNSERVER)
def test_route_takes_progress_and_serves_the_dashboard(state_server: RunningServer) -> None:
    status, ack = post(state_server, json.dumps(message(run="http/esync", host="gpu-<1>")).encode())
    assert (status, ack) == (
        200,
        {"msg_type": "ack", "of": "progress", "run": "http/esync", "state": "running"},
    )
    status, headers, body = state_server.request("GET", "/dashboard.json?run=http%2Fesync")
    snap = json.loads(body)
    assert status == 200 and snap["workers"][0]["host"] == "gpu-<1>"
    status, headers, body = state_server.request("GET", "/dashboard/?run=http%2Fesync")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b"gpu-&lt;1&gt;" in body and b"gpu-<1>" not in body
    status, _, body = state_server.request("GET", "/dashboard.json?run=nope")
    assert status == 404 and "no run 'nope'" in json.loads(body)["error"]
    status, _, body = state_server.request("GET", "/dashboard/?refresh=-1")
    assert status == 400 and "refresh" in json.loads(body)["error"]
    for path in ("/status.json", "/status/", "/"):  # the State Server's routes are untouched
        assert state_server.request("GET", path)[0] == 200
    status, _, body = state_server.request("GET", "/dashboard/nope")
    assert status == 404 and "no route" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
@serves(RUNSERVER)
def test_route_answers_every_malformed_message_with_a_4xx_json_error(
    state_server: RunningServer, body: bytes, status: int, fragment: str
) -> None:
    got, obj = post(state_server, body)
    assert got == status and fragment in obj["error"], obj


@serves(RUNSERVER)
def test_route_methods_lengths_and_launcher_messages(state_server: RunningServer) -> None:
    status, headers, body = state_server.request("GET", "/progress/")
    assert status == 405 and headers["allow"] == "POST" and b"error" in body
    status, _, body = state_server.request("POST", "/dashboard.json", b"{}")
    assert 400 <= status < 500 and b"error" in body  # a page, not an API route (CSRF)
    got = state_server.request("POST", "/progress/", b"{}", {"Content-Length": "999999999"})
    assert got[0] == 413 and b"error" in got[2]
    run = {"msg_type": "run", "run": "http/sync", "mode": "sync", "num_workers": 2}
    assert post(state_server, json.dumps(run).encode())[1]["state"] == STARTING
    failed = {"msg_type": "run", "run": "http/sync", "failed": "worker 1 exited with code 1"}
    assert post(state_server, json.dumps(failed).encode())[1]["state"] == FAILED
    html = state_server.request("GET", "/dashboard/?run=http%2Fsync")[2].decode()
    assert "FAILED" in html and "worker 1 exited with code 1" in html


@serves(GUNICORN_WITH_TOKEN)
def test_token_is_required_for_progress_but_not_for_the_page(state_server: RunningServer) -> None:
    body = json.dumps(message(run="tok/esync")).encode()
    status, obj = post(state_server, body)
    assert status == 403 and "token" in obj["error"]
    assert post(state_server, body, {"X-ESync-Token": TOKEN})[0] == 200
    assert post(state_server, body, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert post(state_server, body, {"X-ESync-Token": "wrong"})[0] == 403
    assert state_server.request("GET", "/dashboard/")[0] == 200
    rep = ProgressReporter(state_server.url, {**META, "run": "tok/rep"}, token=TOKEN)
    rep.report(record(1))
    rep.finish(True)
    assert rep.sent == 1 and rep.rejected == 0
    snap = json.loads(state_server.request("GET", "/dashboard.json?run=tok%2Frep")[2])
    assert snap["workers"][0]["state"] == FINISHED
