"""Devices whose speed changes during a real cluster run: ESync re-balancing after a swap,
and jitter spreading the emulated waits. The schedules themselves are
tests/unit/test_slowdown.py's."""

from __future__ import annotations

import json
import math
import os
import statistics

import pytest

from tests.support.processes import heterogeneous_device_unit, run_py
from tests.support.run_logs import read_rounds, worker_folders
from trainer.slowdown import Schedule


def _rounds(log_dir: str) -> dict[str, list[dict]]:
    """Records per starting schedule, e.g. '1/16@8'."""
    found = {}
    for folder in worker_folders(log_dir, "lenet", "esync").values():
        with open(os.path.join(folder, "meta.json")) as fh:
            sched = Schedule(*zip(*json.load(fh)["slowdown_schedule"], strict=True))
        found[str(sched)] = read_rounds(folder)
    return found


def _mean_k(records: list[dict], start: float, end: float) -> float:
    ks = [r["local_iterations"] for r in records if start <= r["time"] < end]
    return statistics.mean(ks)


@pytest.mark.slow
def test_esync_rebalances_when_two_devices_swap_speed(log_dir: str) -> None:
    res = run_py(
        ["launch.py", "-w", "3", "--slowdowns", "1/16@8,1,16/1@8", "-m", "esync"]
        + "--rounds 100000 --max-time 16 -e 0 --eval-interval 4 --timeout 150".split()
        + ["-ld", log_dir],
        timeout=240,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    runs = _rounds(log_dir)
    was_fast, was_slow = runs["1/16@8"], runs["16/1@8"]
    assert _mean_k(was_fast, 2, 8) >= 4 * _mean_k(was_slow, 2, 8)
    assert {r["slowdown"] for r in was_fast if r["time"] < 7.5} == {1.0}
    assert {r["slowdown"] for r in was_fast if r["time"] > 8.5} == {16.0}
    after = [i for i, r in enumerate(was_slow) if r["time"] >= 8.0]
    swapped = [
        i for i in after if was_slow[i]["local_iterations"] >= 4 * was_fast[i]["local_iterations"]
    ]
    # Within 4 rounds of the swap. The non-blocking protocol (the default) tells the server a
    # worker's capability c with its hold, once per round, so the server sees a changed c a
    # round later than blocking queries would (3 rounds with them); c itself is a moving
    # average and needs a few batches to follow the new speed.
    assert swapped and swapped[0] - after[0] <= 4, [
        (r["time"], r["local_iterations"], s["local_iterations"])
        for r, s in zip(was_fast, was_slow, strict=False)
    ]


@pytest.mark.slow
def test_jitter_spreads_the_emulated_waits(log_dir: str) -> None:
    flags = "-w 2 --slowdowns 1,6 -m sync --rounds 40 -e 0 --jitter 0.3 --timeout 100".split()
    # a waiting slow device needs its device time above the batch's real cost here
    flags += ["--device-unit", heterogeneous_device_unit()]
    res = run_py(["launch.py", *flags, "-ld", log_dir], timeout=200)
    assert res.returncode == 0, res.stderr[-2000:]
    (slow,) = [
        read_rounds(f)
        for f in worker_folders(log_dir, "lenet", "sync").values()
        if read_rounds(f)[0]["slowdown"] == 6.0
    ]
    # an overrun batch waits 0 s (no log-ratio); most must have waited
    waits = [r["emulated_wait_s"] for r in slow[5:] if r["emulated_wait_s"] > 0]
    assert len(waits) >= 25, slow
    # without jitter a wait is 5 x a slow moving average: consecutive waits differ by a few %;
    # with sigma 0.3 their log-ratio has a spread of about sqrt(2) x 0.3
    steps = [math.log(b / a) for a, b in zip(waits, waits[1:], strict=False)]
    assert statistics.pstdev(steps) > 0.2, waits
