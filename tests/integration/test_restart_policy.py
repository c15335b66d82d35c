"""The supervision's restart policy (``Cluster.wait_trainers``) with stand-in processes: a
restartable role restarted in place, the limit, and a dead State Server failing a run
without one. Real runs whose State Server is killed are tests/e2e/test_state_restart.py's."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import config
from launcher.supervision import PYTHON, Cluster, LaunchError
from tests.support.processes import clean_env
from trainer import layout

DIES_SOON = "import os, time; print('up', os.getpid(), flush=True); time.sleep(0.3); exit(3)"


def _cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path / "procs")


def test_wait_trainers_restarts_a_restartable_role_in_place(tmp_path: Path, capfd) -> None:
    with _cluster(tmp_path) as cluster:
        srv = cluster.start("state-server", "state-server", [PYTHON, "-c", DIES_SOON], clean_env())
        first_pid = srv.pid
        cluster.start(
            "worker0", "worker", [PYTHON, "-c", "import time; time.sleep(2)"], clean_env()
        )
        cluster.wait_trainers(
            ("worker",), (), restart_roles=("state-server",), max_restarts_per_role=100
        )
        with open(Path(cluster.proc_dir) / layout.PIDS_NAME) as fh:
            recorded = json.load(fh)["state-server"]
    assert srv.restarts >= 2 and srv.pid != first_pid and recorded == srv.pid
    err = capfd.readouterr().err
    assert f"launch: state-server (pid {first_pid}) exited with code 3; restarted as pid " in err
    assert "on the same port (restart 1 of at most 100)" in err
    log = Path(srv.log_path).read_text()  # one log, appended to by every start
    assert log.count("restarted with the same command") == srv.restarts
    assert f"(pid {first_pid}) exited with code 3; restarted with the same command" in log
    assert f"up {first_pid}\n" in log
    assert log.count("up ") >= srv.restarts  # the last one may have been stopped before


def test_wait_trainers_gives_up_after_the_limit(tmp_path: Path) -> None:
    with _cluster(tmp_path) as cluster:
        srv = cluster.start("state-server", "state-server", [PYTHON, "-c", DIES_SOON], clean_env())
        cluster.start(
            "worker0", "worker", [PYTHON, "-c", "import time; time.sleep(60)"], clean_env()
        )
        started = time.monotonic()
        with pytest.raises(LaunchError, match=r"state-server restarted 2 time\(s\) already"):
            cluster.wait_trainers(
                ("worker",), (), restart_roles=("state-server",), max_restarts_per_role=2
            )
        assert srv.restarts == 2 and time.monotonic() - started < 30


def test_without_restart_roles_a_dead_state_server_fails_the_run(tmp_path: Path) -> None:
    with _cluster(tmp_path) as cluster:
        cluster.start("state-server", "state-server", [PYTHON, "-c", DIES_SOON], clean_env())
        cluster.start(
            "worker0", "worker", [PYTHON, "-c", "import time; time.sleep(60)"], clean_env()
        )
        with pytest.raises(LaunchError, match="state-server, pid .* exited with code 3"):
            cluster.wait_trainers(("worker",), ())


@pytest.mark.parametrize("code, attempts", [(5, 3), (1, 3), (2, 1), (6, 1)])
def test_max_restarts_skips_the_exit_codes_a_restart_cannot_fix(
    monkeypatch, capsys, code: int, attempts: int
) -> None:
    from launcher import local

    tried: list[list[str]] = []

    def failing_cluster(run, proc_dir, flags, last) -> None:
        tried.append(flags)
        raise LaunchError(f"worker1 exited with code {code}", exit_code=code)

    monkeypatch.setattr(local, "run_cluster", failing_cluster)
    monkeypatch.setattr(local, "announce_restart", lambda *args, **kwargs: None)
    run = SimpleNamespace(
        opts=SimpleNamespace(max_restarts=2), progress=SimpleNamespace(mode_dir="m"), plan=None
    )
    with pytest.raises(LaunchError, match=f"code {code}"):
        local.run_attempts(run, Path("procs"), ["-m", "sync"])
    assert len(tried) == attempts
    assert ("is not restarted" in capsys.readouterr().err) == (attempts == 1)
    assert code in config.EXIT_NOT_RETRIED or attempts == 3
