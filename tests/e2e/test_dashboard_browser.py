"""The dashboard in a real browser: headless Chromium opens ``/dashboard/`` of a real State
Server while real ``ProgressReporter``s replay a short 4-worker ESync run (slowdowns 1, 1, 4,
16, as ``make run``), then again after their final reports.

The screenshot goes to a temporary folder; with ``ESYNC_UPDATE_SCREENSHOT=1`` it replaces
``docs/figures/dashboard.png``. Without Chromium (Debian package ``chromium``) the test skips
with a reason naming it (``ESYNC_REQUIRE_ALL=1`` turns that skip into a failure).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import config
from launcher.supervision import signal_group
from tests.support.processes import kill_session, start_launcher
from tests.support.state_server import RunningServer
from trainer.progress import ProgressReporter

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
    ),
]
SCREENSHOT_VAR = "ESYNC_UPDATE_SCREENSHOT"
DOCS_SCREENSHOT = Path(config.ROOT) / "docs" / "figures" / "dashboard.png"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_TIMEOUT_S = 90
# rank -> (host, slowdown): ranks are not the launch order, which is why the rows name both
WORKERS = {0: ("node-c", 4.0), 1: ("node-a", 1.0), 2: ("node-d", 16.0), 3: ("node-b", 1.0)}
BATCH_S = 0.015  # a fast worker's seconds per batch (lenet on digits, batch 64)
ROUNDS_DURING, ROUNDS_AFTER = 100, 40


def esync_rounds(rounds: int, seed: int = 3) -> Iterator[dict[int, dict]]:
    """Records of an emulated ESync run, one dict rank -> record per round.

    Per round the slowest worker computes one batch; the others as many as fit meanwhile
    (Alg. 2), then all meet at the barrier (waiting inside the KVStore pull: comm_s). Rank 0
    evaluates about every 0.5 s of training.
    """
    rng = random.Random(seed)
    t, next_eval = 0.0, 0.5
    for rnd in range(1, rounds + 1):
        c = {r: BATCH_S * s * rng.uniform(0.92, 1.1) for r, (_, s) in WORKERS.items()}
        slowest = max(c.values())
        compute = {r: max(1, int(slowest // c[r])) * c[r] for r in WORKERS}
        eval_s = 0.03 if t + slowest + 0.01 >= next_eval else 0.0
        duration = slowest + rng.uniform(0.008, 0.014) + eval_s
        t += duration
        out = {}
        for r, (_, slowdown) in WORKERS.items():
            steps = max(1, int(slowest // c[r]))
            query = 0.0003 * steps
            rec = {
                "round": rnd,
                "time": round(t, 6),
                "local_iterations": steps,
                "samples": 64 * steps,
                "compute_s": round(compute[r], 6),
                "wait_s": 0.0004,
                "query_s": round(query, 6),
                "comm_s": round(max(0.0, duration - compute[r] - query - 0.0004), 6),
                "eval_s": eval_s if r == 0 else 0.0,
                "slowdown": slowdown,
            }
            if r == 0 and eval_s:
                rec["test_acc"] = round(0.98 - 0.88 * math.exp(-t / 2.5) - rng.uniform(0, 0.006), 6)
                rec["test_loss"] = round(0.06 + 2.24 * math.exp(-t / 2.2) + rng.uniform(0, 0.02), 6)
                next_eval += 0.5
            out[r] = rec
        yield out


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def _wait_for_round(url: str, rnd: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = _get_json(f"{url}/dashboard.json")
        workers = snap.get("workers") or []
        if len(workers) == len(WORKERS) and all(w["round"] >= rnd for w in workers):
            return snap
        time.sleep(0.1)
    raise AssertionError(f"the reports of round {rnd} did not arrive: {snap}")


def chromium(tmp: Path, *args: str) -> str:
    """Run headless Chromium in its own session (killed whole on a time-out); its stdout."""
    assert CHROMIUM is not None
    profile = tmp / f"profile-{time.monotonic_ns()}"
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "HOME": str(tmp)},
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish in {CHROMIUM_TIMEOUT_S} s") from None
    finally:
        signal_group(proc.pid, signal.SIGKILL)  # helpers it may have left in its group
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}:\n{err[-2000:]}"
    return out


def worker_rows(dom: str) -> dict[int, str]:
    """rank -> the HTML of its row in the rendered page."""
    rows = re.findall(r'<tr class="([^"]*)" data-rank="(\d+)">(.*?)</tr>', dom, re.S)
    return {int(rank): f"{classes}|{cells}" for classes, rank, cells in rows}


def check_running_page(dom: str) -> None:
    assert 'data-state="running"' in dom and ">RUNNING<" in dom, dom[:2000]
    rows = worker_rows(dom)
    assert sorted(rows) == sorted(WORKERS)
    for rank, (host, slowdown) in WORKERS.items():
        assert f">{host}<" in rows[rank], rows[rank]
        assert f"\N{MULTIPLICATION SIGN}{slowdown:g}<" in rows[rank], rows[rank]
        assert rows[rank].startswith("running")
    assert "straggler" in rows[2].split("|")[0]  # the 16x slower worker
    curve = re.search(r'<polyline class="curve acc"[^>]*points="([^"]+)"', dom)
    assert curve and len(curve.group(1).split()) >= 5, "no accuracy curve"
    assert "<script" not in dom


def test_dashboard_in_chromium_during_and_after_a_run(
    state_server: RunningServer, tmp_path: Path
) -> None:
    server = state_server.url
    reporters = {
        rank: ProgressReporter(
            server,
            {
                "mode": "esync",
                "network": "lenet",
                "split": "iid",
                "rank": rank,
                "num_workers": len(WORKERS),
                "host": host,
                "device": "cpu",
                "slowdown": slowdown,
                "rounds": 100_000,
                "max_time": 60.0,
                "epsilon": 0.0,
            },
        )
        for rank, (host, slowdown) in WORKERS.items()
    }
    rounds = esync_rounds(ROUNDS_DURING + ROUNDS_AFTER)
    try:
        for _, records in zip(range(ROUNDS_DURING), rounds, strict=False):
            for rank, rec in records.items():
                reporters[rank].report(rec)
            time.sleep(0.005)
        snap = _wait_for_round(server, ROUNDS_DURING)
        assert snap["state"] == "running" and snap["straggler"] == 2
        check_running_page(chromium(tmp_path, "--dump-dom", f"{server}/dashboard/"))
        wanted = os.environ.get(SCREENSHOT_VAR, "") not in ("", "0")
        shot = DOCS_SCREENSHOT if wanted else tmp_path / "dashboard.png"
        chromium(
            tmp_path, f"--screenshot={shot}", "--window-size=1280,1000", f"{server}/dashboard/"
        )
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        for records in rounds:
            for rank, rec in records.items():
                reporters[rank].report(rec)
    finally:
        for rep in reporters.values():
            rep.finish(True)
    assert all(rep.sent == ROUNDS_DURING + ROUNDS_AFTER for rep in reporters.values())
    dom = chromium(tmp_path, "--dump-dom", f"{server}/dashboard/")
    assert 'data-state="finished"' in dom and ">FINISHED<" in dom
    assert ">RUNNING<" not in dom
    assert all(row.startswith("finished") for row in worker_rows(dom).values())


def _dashboard_url(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The ``dashboard: URL`` line a launcher prints when its State Server is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("dashboard: http"):
            return line.split()[1].removesuffix("/dashboard/")
        assert line or proc.poll() is None, proc.communicate()
    raise AssertionError("the launcher printed no dashboard URL")


@pytest.mark.parametrize("mode", ["esync", "sync"])
def test_dashboard_of_a_real_launcher_run(mode: str, log_dir: str, tmp_path: Path) -> None:
    """launch.py starts the State Server for every mode and its workers report to it."""
    flags = f"-w 2 --slowdowns 1,4 -m {mode} -n lenet --rounds 100000 --max-time 8 -e 0"
    flags += " --eval-interval 1 --dashboard-linger 15 --timeout 120"
    proc = start_launcher(log_dir, *flags.split())
    try:
        url = _dashboard_url(proc)
        deadline = time.monotonic() + 60
        while not _get_json(f"{url}/dashboard.json").get("accuracy"):
            assert time.monotonic() < deadline, "no evaluation reached the dashboard"
            time.sleep(0.5)
        dom = chromium(tmp_path, "--dump-dom", f"{url}/dashboard/")
        assert 'data-state="running"' in dom and f">{mode}<" in dom
        rows = worker_rows(dom)
        assert sorted(rows) == [0, 1]
        assert {"\N{MULTIPLICATION SIGN}1<", "\N{MULTIPLICATION SIGN}4<"} == {
            next(s for s in ("\N{MULTIPLICATION SIGN}1<", "\N{MULTIPLICATION SIGN}4<") if s in r)
            for r in rows.values()
        }
        assert all(f">{socket.gethostname()}<" in r for r in rows.values())
        assert re.search(r'<polyline class="curve acc"[^>]*points="[^"]+"', dom)
        while _get_json(f"{url}/dashboard.json")["state"] != "finished":
            assert time.monotonic() < deadline + 60 and proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        dom = chromium(tmp_path, "--dump-dom", f"{url}/dashboard/")
        assert ">FINISHED<" in dom and ">RUNNING<" not in dom
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
            proc.communicate()
