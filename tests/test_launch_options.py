"""launch.py's command-line handling that needs no cluster."""

from __future__ import annotations

import config
import launch
import supervisor


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


def test_gunicorn_gets_a_thread_for_every_held_request(monkeypatch) -> None:
    """The non-blocking protocol holds one request per worker open; gunicorn's gthread
    worker serves one request per thread, so a large cluster must raise its thread count."""
    monkeypatch.delenv("ESYNC_THREADS", raising=False)

    def threads(workers: int) -> int | None:
        cmd = supervisor.state_server_cmd("gunicorn", "127.0.0.1", 1, workers)
        return int(cmd[cmd.index("--threads") + 1]) if "--threads" in cmd else None

    assert threads(4) is None  # the config file's 64 are enough
    assert threads(100) == 108
    monkeypatch.setenv("ESYNC_THREADS", "200")
    assert threads(100) is None  # a larger ESYNC_THREADS stays in force
    assert "--threads" not in supervisor.state_server_cmd("runserver", "127.0.0.1", 1, 500)
