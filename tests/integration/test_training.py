"""Standalone training on the bundled digits data, as a user runs it."""

from __future__ import annotations

import re

from tests.support.processes import run_py
from tests.support.run_logs import read_rounds, worker_folders


def test_local_lenet_reaches_90_percent(log_dir) -> None:
    flags = "-m local -n lenet --dataset digits --rounds 400 -e 100".split()
    res = run_py(["main.py", *flags, "-ld", log_dir], timeout=300)
    assert res.returncode == 0, res.stderr
    accs = [float(a) for a in re.findall(r"\[Iteration \d+\] Test Acc ([0-9.]+)", res.stdout)]
    assert len(accs) == 4, res.stdout
    assert accs[-1] >= 0.90, accs
    folders = worker_folders(log_dir, "lenet", "local")
    assert list(folders) == [0]
    records = read_rounds(folders[0])
    assert [r["round"] for r in records] == list(range(1, 401))
    assert [round(r["test_acc"], 3) for r in records if "test_acc" in r] == accs
    assert all(r["samples"] == 64 and r["local_iterations"] == 1 for r in records)


def test_max_time_stops_the_run(log_dir) -> None:
    flags = "-m local --rounds 1000000 --max-time 2 -e 1000000".split()
    res = run_py(["main.py", *flags, "-ld", log_dir], timeout=120)
    assert res.returncode == 0, res.stderr
    records = read_rounds(worker_folders(log_dir, "lenet", "local")[0])
    assert 10 < len(records) < 1000000
    assert 2.0 <= records[-1]["time"] < 6.0
    assert "test_acc" in records[-1]  # the last round is always evaluated


def test_split_by_class_goes_to_niid_folder(log_dir) -> None:
    res = run_py(
        ["main.py", "-m", "local", "--rounds", "3", "-s", "1", "-ld", log_dir], timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert list(worker_folders(log_dir, "lenet", "local-niid")) == [0]


def test_eval_interval_evaluates_by_time(log_dir) -> None:
    flags = "-m local --rounds 1000000 --max-time 3 -e 0 --eval-interval 0.5".split()
    res = run_py(["main.py", *flags, "-ld", log_dir], timeout=120)
    assert res.returncode == 0, res.stderr
    records = read_rounds(worker_folders(log_dir, "lenet", "local")[0])
    # when each evaluated parameter set was taken (a record gets its result when it is back)
    times = [r["eval_time"] for r in records if "test_acc" in r]
    assert 4 <= len(times) <= 8, times
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g >= 0.45 for g in gaps[:-1]), gaps  # the last one is the final evaluation
