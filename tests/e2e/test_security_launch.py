"""A launched run hands its token to every process by environment: no process's command line
carries it (``ps`` shows command lines to every user), no log file holds it, and the run works
with the State Server refusing every write without it (issue #23)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from launcher.supervision import CLUSTER_VARS, PYTHON, ROOT, TOKEN_VAR, child_env

pytestmark = pytest.mark.slow
TOKEN = "launch-probe-token-6b1f"


class ArgvWatch:
    """Scans every process's command line until stopped: the ones that held ``secret``, and
    how many distinct main.py processes were seen (so an empty finding means something)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.leaks: list[str] = []
        self.trainers: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _scan(self) -> None:
        while not self._stop.wait(0.1):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                line = " ".join(proc.info["cmdline"] or [])
                if self.secret in line:
                    self.leaks.append(line)
                if "main.py" in line:
                    self.trainers.add(proc.info["pid"])


def test_the_token_is_on_no_command_line_and_in_no_log(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    argv = [PYTHON, "launch.py", "-m", "esync", "--workers", "3", "--slowdowns", "1,2,4"]
    argv += ["--rounds", "40", "--device-unit", "0.02", "--evaluator", "inline"]
    argv += ["-ld", str(log_dir)]
    env = child_env(1, {TOKEN_VAR: TOKEN}, drop=CLUSTER_VARS)
    with ArgvWatch(TOKEN) as watch:
        res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert watch.leaks == []
    assert len(watch.trainers) >= 5, watch.trainers  # scheduler, server, 3 workers were seen
    assert TOKEN not in res.stdout + res.stderr  # a loopback dashboard link needs none
    written = [
        p for p in log_dir.rglob("*") if p.is_file() and TOKEN in p.read_text(errors="ignore")
    ]
    assert written == []
