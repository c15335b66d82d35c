"""launch.py's command-line handling that needs no cluster."""

from __future__ import annotations

import config
import launch


def test_compare_without_budget_flags_gets_the_same_time_and_timed_evaluation() -> None:
    flags, note = launch.fair_compare_flags(["--slowdown-seed", "3"])
    assert flags[:8] == [
        "--max-time",
        f"{config.COMPARE_SECONDS:g}",
        "--rounds",
        str(config.COMPARE_ROUNDS),
        "-e",
        "0",
        "--eval-interval",
        f"{config.COMPARE_EVAL_INTERVAL_S:g}",
    ]
    assert flags[8:] == ["--slowdown-seed", "3"]
    assert f"every mode trains for {config.COMPARE_SECONDS:g} s" in note


def test_compare_keeps_a_budget_the_user_gave() -> None:
    for given in (["--max-time", "10"], ["--rounds=50"], ["-e", "5"], ["--eval-interval", "2"]):
        flags, note = launch.fair_compare_flags(given)
        assert flags == given and "as given on the command line" in note


def test_slowdown_entries_become_main_py_flags() -> None:
    assert launch.parse_slowdowns("1/16@30", 2) == ["1/16@30", "1/16@30"]
    assert launch.slowdown_flags("4") == ["--slowdown", "4"]
    assert launch.slowdown_flags("t.csv") == ["--slowdown-trace", "t.csv"]
