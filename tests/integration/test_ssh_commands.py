"""launcher/ssh.py's processes without ssh: the remote command (run here with ``sh``: process
group file, exit code), an echoed process with its prefix, and launch.py's exit code 2 for a
bad host file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from launcher import ssh as remote
from launcher.supervision import CLUSTER_VARS, PYTHON, Cluster, child_env
from tests.support.processes import run_py


def _env() -> dict[str, str]:
    return child_env(1, drop=CLUSTER_VARS)


def test_remote_command_keeps_its_group_id_while_it_runs_and_its_exit_code(tmp_path) -> None:
    pgid = tmp_path / "pg" / "w.pgid"
    code = "import os, sys; print(os.getpgid(0), os.environ['X_Y']); sys.exit(3)"
    cmd = remote.remote_command(str(tmp_path), [PYTHON, "-c", code], {"X_Y": "a b"}, str(pgid))
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, start_new_session=True)
    assert res.returncode == 3, res.stderr
    assert res.stdout.split()[1:] == ["a", "b"]
    assert not pgid.exists()  # removed by a process that ended by itself

    sleeper = remote.remote_command(str(tmp_path), ["sleep", "30"], {}, str(pgid))
    proc = subprocess.Popen(["sh", "-c", sleeper], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not pgid.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(pgid.read_text()) == os.getpgid(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_an_echoed_process_is_logged_and_shown_with_its_prefix(tmp_path, capsys) -> None:
    code = "print('[worker 3/4] joined'); print('bye', end='\\r\\n'); raise SystemExit(2)"
    with Cluster(tmp_path) as cluster:
        proc = cluster.start(
            "w", "worker", [PYTHON, "-c", code], _env(), echo=remote.LinePrefix("hostB")
        )
        proc.popen.wait(30)
        described = proc.describe_exit()
    assert "w (rank 3)" in described and "exited with code 2" in described
    lines = ["hostB: [worker 3/4] joined", "hostB: rank 3: bye"]
    assert Path(proc.log_path).read_text().splitlines() == lines
    assert capsys.readouterr().out.splitlines() == lines


def test_launcher_rejects_a_bad_host_file_with_its_line(tmp_path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\nb slots=two\n")
    res = run_py(["launch.py", "-H", str(hostfile), "--interface", "eth0"], timeout=60)
    assert res.returncode == 2 and f"{hostfile}:2: slots=two: not a whole number" in res.stderr
    res = run_py(["launch.py", "-H", str(hostfile), "-w", "3", "--interface", "eth0"], timeout=60)
    assert res.returncode == 2 and "has 2 slots" not in res.stderr  # the bad line comes first
    res = run_py(["launch.py", "--interface", "eth0"], timeout=60)
    assert res.returncode == 2 and "--interface: only with -H" in res.stderr
