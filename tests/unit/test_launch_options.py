"""launch.py's command-line handling (launcher/) that needs no cluster."""

from __future__ import annotations

import config
from launcher import cli, devices, supervision
from trainer import options


def test_compare_without_budget_flags_gets_the_same_time_and_timed_evaluation() -> None:
    flags, note = cli.fair_compare_flags(["--slowdown-seed", "3"])
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
        flags, note = cli.fair_compare_flags(given)
        assert flags == given and "as given on the command line" in note


def test_slowdown_entries_become_main_py_flags() -> None:
    assert devices.parse_slowdowns("1/16@30", 2) == ["1/16@30", "1/16@30"]
    assert devices.slowdown_flags("4") == ["--slowdown", "4"]
    assert devices.slowdown_flags("t.csv") == ["--slowdown-trace", "t.csv"]


def test_gunicorn_gets_a_thread_for_every_held_request(monkeypatch) -> None:
    """The non-blocking protocol holds one request per worker open; gunicorn's gthread
    worker serves one request per thread, so a large cluster must raise its thread count."""
    monkeypatch.delenv("ESYNC_THREADS", raising=False)

    def threads(workers: int) -> int | None:
        cmd = supervision.state_server_cmd("gunicorn", "127.0.0.1", 1, workers)
        return int(cmd[cmd.index("--threads") + 1]) if "--threads" in cmd else None

    assert threads(4) is None  # the config file's 64 are enough
    assert threads(100) == 108
    monkeypatch.setenv("ESYNC_THREADS", "200")
    assert threads(100) is None  # a larger ESYNC_THREADS stays in force
    assert "--threads" not in supervision.state_server_cmd("runserver", "127.0.0.1", 1, 500)


UPSTREAM_SHORT = {  # upstream ESync's short flags and a valid value of each
    "-m": "sync",
    "-g": "0",
    "-c": "1",
    "-n": "lenet",
    "-l": "0.2",
    "-ll": "0.3",
    "-gl": "0.4",
    "-b": "16",
    "-dd": "data",
    "-ld": "somewhere",
    "-e": "3",
    "-dcasgd": "1",
    "-s": "1",
    "-ip": "10.0.0.9",
    "-port": "10011",
}


def test_upstream_short_flags_mean_the_same_to_launch_py_and_main_py() -> None:
    """A short flag launch.py does not read itself reaches main.py untouched (no prefix
    matching: ``-l`` is not ``-ld``); the ones both read give the same value to both."""
    main_parser = options.build_parser()
    for flag, value in UPSTREAM_SHORT.items():
        launched, forwarded = cli.build_parser().parse_known_args([flag, value])
        direct = main_parser.parse_args([flag, value])
        if forwarded:
            assert forwarded == [flag, value], flag
            rebuilt = main_parser.parse_args(forwarded)
        else:
            rebuilt = launched
        dest = next(a.dest for a in main_parser._actions if flag in a.option_strings)
        assert getattr(rebuilt, dest) == getattr(direct, dest), flag


def test_flags_shared_with_main_py_are_defined_once() -> None:
    shared = {a.dest for a in options.shared_parser()._actions}
    launcher = {a.dest: a for a in cli.build_parser()._actions}
    main = {a.dest: a for a in options.build_parser()._actions}
    assert {"network", "log_dir", "split_by_class", "threads", "emulation"} <= shared
    for dest in shared:
        assert (
            launcher[dest].type is main[dest].type and launcher[dest].default == main[dest].default
        )


def test_the_scheduler_and_server_get_the_workers_failure_timeout() -> None:
    from launcher.local import failure_timeout_flag

    assert failure_timeout_flag(["-m", "sync", "--failure-timeout", "20", "-e", "0"]) == [
        "--failure-timeout",
        "20",
    ]
    assert failure_timeout_flag(["--failure-timeout=12.5"]) == ["--failure-timeout=12.5"]
    assert failure_timeout_flag(["-m", "sync"]) == []  # their default is the workers' default
