"""Real clusters with several parameter servers (launch.py --servers): every mode, the same
parameters as with one server, the bytes each server carries, and a killed server."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.support.processes import assert_all_gone, run_py, start_launcher
from tests.support.run_logs import launched_pids, process_log_tails, read_rounds, worker_folders
from trainer import layout, registry, sharding

pytestmark = pytest.mark.slow


def _summary(log_dir: str, mode_dir: str) -> dict:
    path = layout.mode_dir(log_dir, "lenet", mode_dir) / layout.SUMMARY_NAME
    with open(path) as fh:
        return json.load(fh)


def test_every_mode_runs_with_two_servers(log_dir: str) -> None:
    modes = [m for m in registry.names() if registry.get(m).distributed]
    flags = ["--compare", ",".join(modes), "-w", "2", "--slowdowns", "1,2", "-n", "lenet"]
    flags += ["--servers", "2", "--max-time", "2", "--rounds", "100000", "-e", "0"]
    flags += ["--eval-interval", "1", "-ld", log_dir, "--timeout", "90"]
    res = run_py(["launch.py", *flags], timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 parameter servers" in res.stdout
    with open(os.path.join(log_dir, "lenet", "report.json")) as fh:
        report = json.load(fh)
    for mode in modes:
        summ = _summary(log_dir, mode)
        assert len(summ["server_bytes"]) == 2 and all(b > 0 for b in summ["server_bytes"]), mode
        assert sum(summ["server_bytes"]) == summ["total_bytes"], mode
        assert report["modes"][mode]["server_bytes"] == summ["server_bytes"], mode
        records = {r: read_rounds(f) for r, f in worker_folders(log_dir, "lenet", mode).items()}
        assert sorted(records) == [0, 1] and all(records.values()), mode
        if registry.get(mode).load().synchronous:
            for a, b in zip(records[0], records[1], strict=True):
                if "checksum" in a:  # every worker holds the same global parameters
                    assert a["checksum"] == b["checksum"], (mode, a["round"])
        pids = launched_pids(log_dir, "lenet", mode)
        assert {"server0", "server1"} <= set(pids), pids
        assert_all_gone(pids)
    with open(os.path.join(log_dir, "lenet", "report.md")) as fh:
        assert "## Parameter servers" in fh.read()


def _sync_run(log_dir: str, servers: int) -> list[dict]:
    flags = ["-w", "2", "--slowdowns", "1,2", "-m", "sync", "-n", "lenet", "--rounds", "15"]
    flags += ["-e", "0", "--servers", str(servers), "-ld", log_dir]
    res = run_py(["launch.py", *flags, "--timeout", "120"], timeout=200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return read_rounds(worker_folders(log_dir, "lenet", "sync")[0])


def test_two_and_four_servers_give_one_servers_parameters_bit_for_bit(tmp_path) -> None:
    # two workers: each key's sum is a + b on whichever server holds it, and a float sum of
    # two terms does not depend on their order, so the parameters agree exactly
    one = _sync_run(str(tmp_path / "one"), 1)
    two = _sync_run(str(tmp_path / "two"), 2)
    four = _sync_run(str(tmp_path / "four"), 4)
    assert [r["checksum"] for r in one] == [r["checksum"] for r in two]
    assert [r["checksum"] for r in one] == [r["checksum"] for r in four]
    assert len(four[0]["server_bytes"]) == 4
    # lenet's 8 weights plus the stop flag (key 8): the hand count of tests/unit/test_sharding
    expected = sharding.partition(
        [(k, n, 4) for k, n in enumerate((500, 20, 25_000, 50, 102_400, 128, 1_280, 10, 1))], 2
    )
    assert two[1]["server_bytes"] == [2 * b for b in expected.per_server]
    assert one[1]["server_bytes"] == [2 * expected.total]


def test_a_killed_server_is_found_and_the_cluster_resumes(log_dir: str) -> None:
    flags = ["-n", "lenet", "-w", "2", "--slowdowns", "1,2", "-m", "sync", "--servers", "2"]
    flags += ["--rounds", "200", "-e", "0", "--checkpoint-every", "5", "--max-restarts", "1"]
    flags += ["--failure-timeout", "10", "--timeout", "200"]
    proc = start_launcher(log_dir, *flags)
    try:
        deadline = time.monotonic() + 120
        rounds: list[dict] = []
        while time.monotonic() < deadline and proc.poll() is None:
            rounds = _rank0_rounds(log_dir)
            if len(rounds) >= 8:
                break
            time.sleep(0.3)
        assert len(rounds) >= 8 and proc.poll() is None, process_log_tails(log_dir)
        os.kill(launched_pids(log_dir, "lenet", "sync")["server1"], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (process_log_tails(log_dir), err[-3000:])
    assert "server1" in err and "restart 1 of 1" in err, err[-3000:]
    records = read_rounds(worker_folders(log_dir, "lenet", "sync")[0])
    assert [r["round"] for r in records] == list(range(1, 201))


def test_a_versioned_mode_with_split_keys_is_refused_and_not_retried(log_dir: str) -> None:
    # fedasync keeps a version in each key's last element; lenet's 102,401-element key would
    # be split over both servers at this bound
    flags = ["-w", "2", "--slowdowns", "1,2", "-m", "fedasync", "-n", "lenet", "--rounds", "5"]
    flags += ["--servers", "2", "--bigarray-bound", "20000", "--max-restarts", "1"]
    res = run_py(["launch.py", *flags, "-ld", log_dir, "--timeout", "120"], timeout=200)
    assert res.returncode != 0
    out = res.stdout + res.stderr + process_log_tails(log_dir, lines=20)
    assert "give launch.py --bigarray-bound 102402 or more" in out, out[-3000:]
    assert "restart 1 of 1" not in res.stderr


def _rank0_rounds(log_dir: str) -> list[dict]:
    """Rank 0's records so far ([] before its folder and file exist)."""
    try:
        return read_rounds(worker_folders(log_dir, "lenet", "sync")[0])
    except (OSError, KeyError, ValueError):
        return []
