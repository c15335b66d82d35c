"""A real 3-worker ESync cluster with the non-blocking protocol and --fill-last-batch."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from tests.support.processes import assert_all_gone, heterogeneous_device_unit, run_py
from tests.support.run_logs import launched_pids, read_rounds, worker_folders
from trainer import layout


@pytest.mark.slow
def test_nonblocking_fill_cluster_trains_in_lockstep(log_dir: str) -> None:
    res = run_py(
        ["launch.py", "-w", "3", "--slowdowns", "1,1,4", "-m", "esync", "-n", "lenet"]
        + ["--state-protocol", "nonblocking", "--fill-last-batch", "1"]
        + ["--rounds", "100000", "--max-time", "10", "-e", "0", "--eval-interval", "2"]
        + ["-ld", log_dir, "--timeout", "120", "--device-unit", heterogeneous_device_unit()],
        timeout=200,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    folders = worker_folders(log_dir, "lenet", "esync")
    assert sorted(folders) == [0, 1, 2]
    runs = {}
    for rank, folder in folders.items():
        with open(os.path.join(folder, layout.META_NAME)) as fh:
            meta = json.load(fh)
        assert meta["state_protocol"] == "nonblocking" and meta["fill_last_batch"] == 1
        runs[rank] = (meta["slowdown"], read_rounds(folder))
    lengths = {len(records) for _, records in runs.values()}
    assert len(lengths) == 1 and lengths.pop() >= 8
    for i, rnd in enumerate(zip(*(records for _, records in runs.values()), strict=True)):
        assert {r["round"] for r in rnd} == {i + 1}
        assert len({r["checksum"] for r in rnd}) == 1, f"round {i + 1}: the workers differ"
    fast = [records for s, records in runs.values() if s == 1.0]
    slow = [records for s, records in runs.values() if s == 4.0][0]
    assert len(fast) == 2
    for records in fast:
        assert statistics.median(r["local_iterations"] for r in records[1:]) >= 2.5
        # the hand-over costs microseconds per local iteration, not a round trip
        per_iteration = sum(r["query_s"] for r in records) / sum(
            r["local_iterations"] for r in records
        )
        assert per_iteration < 0.0005, per_iteration
    assert all(r["local_iterations"] == 1 for r in slow[1:]), "the slowest computes once"
    partial = sum(r.get("partial_samples", 0) for records in fast for r in records)
    assert partial > 0, "no smaller last batch in any round"
    for records in fast:
        for r in records:
            assert r["samples"] % 8 == 0 and r.get("partial_samples", 0) % 8 == 0
    assert_all_gone(launched_pids(log_dir, "lenet", "esync"))
