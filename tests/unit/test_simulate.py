"""bench/simulate.py: a tiny grid runs in seconds and prints its tables; the numbers behave."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from bench import simulate
from bench.simulate import Setup, capabilities, classes


def test_a_tiny_grid_prints_the_tables_and_draws_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figure = tmp_path / "sim.png"
    started = time.monotonic()
    code = simulate.main(
        ["--workers", "4,16", "--rounds", "4", "--figure", str(figure), "--capacity", "3000"]
    )
    assert code == 0 and time.monotonic() - started < 30
    out = capsys.readouterr().out
    assert "### mix" in out and "### lognormal" in out
    for protocol in simulate.PROTOCOLS:
        assert f"| 4 | {protocol} |" in out and f"| 16 | {protocol} |" in out
    assert "| mix | blocking | ~" in out and "| lognormal | nonblocking+fill | ~" in out
    assert figure.stat().st_size > 10_000


def test_unknown_protocol_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate.main(["--protocols", "blocking,carrier-pigeon", "--no-figure"]) == 2


def test_nonblocking_sends_fewer_messages_and_ssgd_idles_more() -> None:
    caps = capabilities("mix", 8, 1)
    runs = {p: simulate.simulate(Setup(caps, p, rounds=6)) for p in simulate.PROTOCOLS}
    fast = classes("mix", caps)["1x"]
    assert runs["nonblocking"].messages * 4 < runs["blocking"].messages
    assert runs["ssgd"].messages == 0
    idle = {p: sum(runs[p].idle(r) for r in fast) / len(fast) for p in runs}
    assert idle["ssgd"] > 0.8 > 0.2 > idle["nonblocking"]
    assert idle["nonblocking+fill"] <= idle["nonblocking"] + 0.01
    assert runs["nonblocking+fill"].partial_samples > 0 == runs["nonblocking"].partial_samples
    # the slowest workers do exactly one batch per round (after the first; with fill the
    # second-slowest may add a smaller one when the slowest's batch ran long)
    slow = classes("mix", caps)["16x"]
    for protocol in ("blocking", "nonblocking", "ssgd"):
        assert all(rnd[r] == 1 for rnd in runs[protocol].iterations[1:] for r in slow)


def test_a_slow_server_is_a_bottleneck_only_for_blocking() -> None:
    caps = capabilities("mix", 64, 2)
    slow_server = {
        p: simulate.simulate(Setup(caps, p, rounds=5, capacity=1500))
        for p in ("blocking", "nonblocking")
    }
    assert slow_server["blocking"].utilisation > 0.9 > 0.3 > slow_server["nonblocking"].utilisation
    ideal = simulate.simulate(Setup(caps, "blocking", rounds=5, capacity=math.inf))
    assert ideal.utilisation == 0.0 and ideal.messages > slow_server["blocking"].messages
    fast = classes("mix", caps)["1x"]
    mean_idle = lambda out: sum(out.idle(r) for r in fast) / len(fast)  # noqa: E731
    assert mean_idle(slow_server["blocking"]) > mean_idle(ideal) + 0.2
