"""#24's false alarm: a cluster starting while CPU-bound neighbours fill this 2-core machine
was judged dead by the watchdog (a starved scheduler's first heartbeats came late). With two
burners spinning, a 4-worker cluster with a short --failure-timeout starts, trains and exits
0, and no process prints a watchdog FAILURE. (bench/startup_alarms.py repeats it 20 times.)"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from bench.startup_alarms import FAILURE, burn
from tests.support.processes import run_py


@pytest.mark.slow
def test_a_starved_start_up_is_not_a_death(log_dir: str) -> None:
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(2)]
    for burner in burners:
        burner.start()
    try:
        res = run_py(
            ["launch.py", "-w", "4", "--slowdowns", "1,1,4,16", "-m", "esync", "-n", "lenet"]
            + ["--rounds", "3", "-e", "0", "--failure-timeout", "10", "-ld", log_dir],
            timeout=300,
        )
    finally:
        for burner in burners:
            burner.terminate()
            burner.join()
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    logs = list(Path(log_dir).rglob("*.log"))
    assert len(logs) >= 7  # State Server, scheduler, server and every worker
    text += "".join(log.read_text(errors="replace") for log in logs)
    assert not FAILURE.findall(text), FAILURE.findall(text)
    assert all(not b.is_alive() for b in burners)
