"""Real clusters on this machine (State Server, scheduler, server, workers) via launch.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import time

import pytest

from tests.support.processes import (
    assert_all_gone,
    heterogeneous_device_unit,
    run_py,
    start_launcher,
)
from tests.support.run_logs import launched_pids, process_log_tails, read_rounds, worker_folders

pytestmark = pytest.mark.slow


def launch(
    log_dir: str,
    mode: str,
    workers: int,
    slowdowns: str,
    rounds: int,
    *extra: str,
    timeout: float = 240,
) -> subprocess.CompletedProcess:
    flags = ["-m", "async", "-dcasgd", "1"] if mode == "dcasgd" else ["-m", mode]
    return run_py(
        [
            "launch.py",
            "-w",
            str(workers),
            "--slowdowns",
            slowdowns,
            *flags,
            "-n",
            "lenet",
            "--rounds",
            str(rounds),
            "-ld",
            log_dir,
            "--timeout",
            str(timeout - 30),
            *extra,
        ],
        timeout=timeout,
    )


def accuracies(records: list[dict]) -> list[float]:
    return [r["test_acc"] for r in records if "test_acc" in r]


@pytest.mark.parametrize(
    ("mode", "rounds"), [("esync", 40), ("sync", 80), ("async", 160), ("dcasgd", 160)]
)
def test_mode_completes_and_learns(log_dir: str, mode: str, rounds: int) -> None:
    # ESync's learning in 40 rounds rests on the fast workers' extra local steps
    unit = ["--device-unit", heterogeneous_device_unit()] if mode == "esync" else []
    res = launch(log_dir, mode, 3, "1,1,2", rounds, "-e", str(rounds // 4), *unit)
    assert res.returncode == 0, res.stdout + res.stderr
    folders = worker_folders(log_dir, "lenet", mode)
    assert sorted(folders) == [0, 1, 2]
    records = {rank: read_rounds(folder) for rank, folder in folders.items()}
    accs = accuracies(records[0])
    assert len(accs) == 4, records[0][-1]
    # learned: a good last evaluation (on a loaded machine the first one may already be)
    assert accs[-1] >= 0.6 and accs[-1] >= accs[0] - 0.02, accs
    for rank, recs in records.items():
        if mode in ("esync", "sync"):  # lockstep rounds
            assert len(recs) == rounds, rank
        else:  # async: every worker stops after its own iterations
            assert len(recs) == rounds and all(r["local_iterations"] == 1 for r in recs)
        assert all(r["bytes_pushed"] > 0 and r["bytes_pulled"] > 0 for r in recs)
    if mode in ("esync", "sync"):
        for i in range(rounds):
            sums = {records[r][i]["checksum"] for r in records}
            assert len(sums) == 1, f"round {i + 1}: global parameters differ: {sums}"
    assert_all_gone(launched_pids(log_dir, "lenet", mode))


def test_esync_fast_workers_do_more_local_iterations(log_dir: str) -> None:
    res = launch(
        log_dir, "esync", 3, "1,1,8", 15, "-e", "5", "--device-unit", heterogeneous_device_unit()
    )
    assert res.returncode == 0, res.stdout + res.stderr
    folders = worker_folders(log_dir, "lenet", "esync")
    per_worker = {}
    for folder in folders.values():
        with open(os.path.join(folder, "meta.json")) as fh:
            slowdown = json.load(fh)["slowdown"]
        # the first round includes start-up skew; judge the steady state
        per_worker.setdefault(slowdown, []).append(
            [r["local_iterations"] for r in read_rounds(folder)][1:]
        )
    (slow,) = per_worker[8.0]
    assert statistics.median(slow) <= 2, slow
    for fast in per_worker[1.0]:
        assert statistics.median(fast) >= 3, (fast, slow)
    assert_all_gone(launched_pids(log_dir, "lenet", "esync"))


def _wait_for_rounds(log_dir: str, mode_dir: str, proc: subprocess.Popen) -> dict[str, int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"{process_log_tails(log_dir)}\n{err[-2000:]}\n{out[-2000:]}")
        folders = (
            worker_folders(log_dir, "lenet", mode_dir)
            if os.path.isdir(os.path.join(log_dir, "lenet", mode_dir))
            else {}
        )
        if folders and all(read_rounds(f) for f in folders.values()) and len(folders) == 3:
            return launched_pids(log_dir, "lenet", mode_dir)
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("the run did not start")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _endless_run(log_dir: str, mode: str, slowdowns: str) -> subprocess.Popen:
    """A 3-worker lenet run of ``mode`` that goes on until the test stops it."""
    flags = ["-n", "lenet", "-w", "3", "--slowdowns", slowdowns, "-m", mode]
    return start_launcher(log_dir, *flags, "--rounds", "100000")


def test_ctrl_c_stops_every_process(log_dir: str) -> None:
    proc = _endless_run(log_dir, "esync", "1,1,4")
    try:
        pids = _wait_for_rounds(log_dir, "esync", proc)
        ports = []
        state_log = os.path.join(log_dir, "processes", "lenet", "esync", "state-server.log")
        assert os.path.exists(state_log)
        cmdline = open(f"/proc/{pids['state-server']}/cmdline").read().split("\0")
        ports.append(int([a for a in cmdline if a.startswith("127.0.0.1:")][0].split(":")[1]))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert_all_gone(pids)
    assert all(_port_free(p) for p in ports)


def test_dead_worker_stops_the_run_and_names_its_rank(log_dir: str) -> None:
    proc = _endless_run(log_dir, "sync", "1,1,1")
    try:
        pids = _wait_for_rounds(log_dir, "sync", proc)
        os.kill(pids["worker1"], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert "worker1 (rank " in err and "exited with code -9" in err
    assert_all_gone(pids)


def test_failing_worker_at_start_is_reported(log_dir: str, tmp_path) -> None:
    res = launch(
        log_dir,
        "sync",
        2,
        "1",
        5,
        "--dataset",
        "fashion-mnist",
        "-dd",
        str(tmp_path / "nodata"),
        timeout=120,
    )
    assert res.returncode == 1
    assert "FAILED" in res.stderr and "exited with code 2" in res.stderr
    assert "train-images-idx3-ubyte" in res.stderr
    assert_all_gone(launched_pids(log_dir, "lenet", "sync"))


def test_unreachable_state_server_fails_with_its_url(log_dir: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = launch(
        log_dir,
        "esync",
        2,
        "1",
        5,
        "--state-server-at",
        f"127.0.0.1:{port}",
        "--state-retry",
        "2",
        timeout=120,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "(rank 0)" in res.stderr and "exited with code 4" in res.stderr
    assert f"http://127.0.0.1:{port}" in res.stderr and "State Server" in res.stderr
    assert_all_gone(launched_pids(log_dir, "lenet", "esync"))


def test_esync_with_batchnorm_network_keeps_workers_identical(log_dir: str) -> None:
    """resnet18-v1 has BatchNorm: its running statistics are averaged into the checksum too."""
    res = run_py(
        [
            *"launch.py -w 2 --slowdowns 1,2 -m esync -n resnet18-v1 -b 8 --rounds 3 -e 3".split(),
            *("-ld", log_dir, "--timeout", "200"),
        ],
        timeout=240,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    folders = worker_folders(log_dir, "resnet18-v1", "esync")
    records = {rank: read_rounds(folder) for rank, folder in folders.items()}
    assert sorted(records) == [0, 1]
    for i in range(3):
        assert records[0][i]["checksum"] == records[1][i]["checksum"], i
    assert "test_acc" in records[0][-1]
