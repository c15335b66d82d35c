"""``StateServer/manage.py``, Django's usual entry point, in both of its spellings: a real
runserver (with its autoreloader, as the paper's ``cd StateServer && python manage.py
runserver 0.0.0.0:10010``; here on a free loopback port) answers an init and a query on
``/msg/``, is this project's low-latency runserver, and leaves no process behind."""

from __future__ import annotations

import json
import os
import socket

import psutil

from tests.support.state_server import RunningServer, ServerSpec, serves

MANAGE_PY = (  # both spellings: from the root, and as the paper says, cd StateServer first
    ServerSpec("manage.py", name="from-root"),
    ServerSpec("manage.py", cwd="StateServer", name="cd-StateServer"),
)


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


@serves(*MANAGE_PY, private=True)
def test_manage_py_runserver_answers_msg_and_stops(state_server: RunningServer) -> None:
    proc, port = state_server.proc, state_server.port
    assert len(_session(proc.pid)) == 2, "the autoreloader serves from a child process"
    init = {"msg_type": "init", "num_workers": 2, "epsilon": 0.5}
    assert state_server.json("POST", "/msg/", init) == (
        200,
        {"msg_type": "ack", "of": "init", "round": 0},
    )
    query = {"msg_type": "query", "rank": 1, "k": 3, "c": 0.25, "te": 1.0}
    status, answer = state_server.json("POST", "/msg/", query)
    assert status == 200, answer
    assert (answer["msg_type"], answer["rank"]) == ("response", 1)
    assert answer["action"] in ("compute", "sync")
    # Only this project's runserver (FastRequestHandler) answers protocol errors in JSON.
    head, _, body = _raw(port, b"GARBAGE\r\n\r\n").partition(b"\r\n\r\n")
    assert b"application/json" in head and "error" in json.loads(body)
    state_server.stop()
    assert _session(proc.pid) == [], "a process of the server outlived it"
    with socket.socket() as sock:  # nobody listens on the port any more
        assert sock.connect_ex(("127.0.0.1", port)) != 0
