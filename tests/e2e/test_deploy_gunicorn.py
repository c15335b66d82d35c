"""The docs' gunicorn command, verbatim, serving in a private network namespace (its fixed
port cannot clash there)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from launcher.supervision import CLUSTER_VARS, PYTHON, child_env
from tests.support.deploy_files import ROOT, flag_value, gunicorn_command


@functools.cache
def _netns_available() -> tuple[bool, str]:
    from tests.support.netns import available

    return available()


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(
    not _netns_available()[0],
    reason="runs the docs' gunicorn command in a private network namespace "
    f"so that its fixed port cannot clash: {_netns_available()[1]}",
)
def test_docs_gunicorn_command_serves(tmp_path: Path) -> None:
    """The docs' gunicorn command, verbatim, in a namespace with only ``lo``."""
    from tests.support.netns import Network, Processes

    cmd = gunicorn_command()
    url = f"http://127.0.0.1:{flag_value(cmd, '--bind').rsplit(':', 1)[1]}/status.json"
    procs = Processes(tmp_path / "processes")
    try:
        with Network(["gunicorn"]) as net:
            host = net.hosts["gunicorn"]
            argv = host.wrap([PYTHON, *cmd[1:]])
            env = child_env(1, drop=CLUSTER_VARS)
            proc = procs.start("gunicorn", "state-server", argv, env, ROOT)
            host.wait_http(url, proc, timeout=60)
            status, body = host.http_get(url) or (0, "")
            assert status == 200 and isinstance(json.loads(body), dict), (status, body)
            assert proc.poll() is None, proc.describe_exit()
    finally:
        procs.stop_all()
    assert "gthread" in proc.tail(50), proc.tail(50)
    assert not procs.leftovers()
