"""``StateServer/manage.py``, Django's usual entry point, in both of its spellings: a real
runserver (with its autoreloader, as the paper's ``cd StateServer && python manage.py
runserver 0.0.0.0:10010``; here on a free loopback port) answers an init and a query on
``/msg/``, is this project's low-latency runserver, and leaves no process behind."""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path

import psutil
import pytest

from launcher.supervision import (
    CLUSTER_VARS,
    PYTHON,
    ROOT,
    Cluster,
    child_env,
    free_port,
    wait_http,
)

START_TIMEOUT_S = 60  # the autoreloader starts the server in a second Python process
STATE_SERVER = os.path.join(ROOT, "StateServer")
SPELLINGS = {  # id: (working directory, the manage.py argument)
    "from-root": (ROOT, "StateServer/manage.py"),
    "cd-StateServer": (STATE_SERVER, "manage.py"),
}


def _post(port: int, path: str, obj: object) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps(obj).encode()
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _raw(port: int, data: bytes) -> bytes:
    """What the server answers to ``data`` sent as is, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _session(pid: int) -> list[psutil.Process]:
    """The live processes of session ``pid`` (the server and its autoreloader's child)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == pid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_manage_py_runserver_answers_msg_and_stops(spelling: str, tmp_path: Path) -> None:
    cwd, script = SPELLINGS[spelling]
    port = free_port()
    cluster = Cluster(str(tmp_path))
    env = child_env(extra={}, drop=CLUSTER_VARS)
    cmd = [PYTHON, script, "runserver", f"127.0.0.1:{port}"]
    proc = cluster.start("manage", "state-server", cmd, env, cwd=cwd)
    try:
        wait_http(f"http://127.0.0.1:{port}/status.json", proc, START_TIMEOUT_S)
        assert len(_session(proc.pid)) == 2, "the autoreloader serves from a child process"
        init = {"msg_type": "init", "num_workers": 2, "epsilon": 0.5}
        assert _post(port, "/msg/", init) == (200, {"msg_type": "ack", "of": "init", "round": 0})
        query = {"msg_type": "query", "rank": 1, "k": 3, "c": 0.25, "te": 1.0}
        status, answer = _post(port, "/msg/", query)
        assert status == 200, answer
        assert (answer["msg_type"], answer["rank"]) == ("response", 1)
        assert answer["action"] in ("compute", "sync")
        # Only this project's runserver (FastRequestHandler) answers protocol errors in JSON.
        head, _, body = _raw(port, b"GARBAGE\r\n\r\n").partition(b"\r\n\r\n")
        assert b"application/json" in head and "error" in json.loads(body)
    finally:
        cluster.stop()
    assert _session(proc.pid) == [], "a process of the server outlived it"
    with socket.socket() as sock:  # nobody listens on the port any more
        assert sock.connect_ex(("127.0.0.1", port)) != 0
