"""The failure watchdog (trainer/watchdog.py): its decisions with a fake ps-lite and a fake
clock, and its thread. main.py's flag is tests/integration/test_watchdog_flags.py's, a normal
cluster run with heartbeats tests/e2e/test_watchdog_run.py's and the multi-host kill test
tests/e2e/test_failures_netns.py's."""

from __future__ import annotations

import threading
import time

from trainer import watchdog
from trainer.watchdog import FailureWatchdog, Node

ENV = {
    "DMLC_NUM_WORKER": "4",
    "DMLC_NUM_SERVER": "1",
    "DMLC_PS_ROOT_URI": "127.0.0.1",
    "DMLC_PS_ROOT_PORT": "9091",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(role: str, dead: set[int], timeout: float = 20.0, **kw) -> FailureWatchdog:
    asked: list[int] = kw.pop("asked", [])

    def is_dead(node_id: int) -> bool:
        asked.append(node_id)
        return node_id in dead

    return FailureWatchdog(
        f"[{role}]",
        role,
        watchdog.watched_nodes(role, ENV),
        is_dead,
        watchdog.stage_timeout(timeout),
        timeout,
        **kw,
    )


def test_node_ids_follow_ps_lite() -> None:
    assert [n.node_id for n in watchdog.watched_nodes("scheduler", ENV)] == [9, 11, 13, 15, 8]
    assert str(Node("worker", 3)) == "worker rank 3 (ps-lite node 15)"
    assert str(Node("server", 0)) == "server rank 0 (ps-lite node 8)"
    (scheduler,) = watchdog.watched_nodes("worker", ENV)
    assert scheduler.node_id == 1 and str(scheduler) == "the scheduler at 127.0.0.1:9091"
    assert watchdog.watched_nodes("server", ENV) == [scheduler]


def test_two_stages_fit_in_the_timeout() -> None:
    for timeout in (10.0, 20.0, 30.0, 60.0, 120.0):
        stage = watchdog.stage_timeout(timeout)
        assert stage >= watchdog.MIN_STAGE_INTERVALS
        assert 2 * (stage + 1 + watchdog.POLL_S) <= timeout, timeout
    assert watchdog.stage_timeout(2.0) == watchdog.MIN_STAGE_INTERVALS  # never below 3 beats
    assert watchdog.stage_timeout(60.0, interval=5) == 28  # (60 - 3) // 2
    assert watchdog.stage_timeout(20.0, interval=5) == 15  # 3 intervals of 5 s


def test_heartbeats_are_configured_unless_set() -> None:
    env: dict[str, str] = {}
    stage = watchdog.configure_heartbeats(20.0, env)
    assert env == {"PS_HEARTBEAT_INTERVAL": "1", "PS_HEARTBEAT_TIMEOUT": str(stage)}
    env = {"PS_HEARTBEAT_INTERVAL": "4", "PS_HEARTBEAT_TIMEOUT": "99"}
    assert watchdog.configure_heartbeats(20.0, env) == 12
    assert env == {"PS_HEARTBEAT_INTERVAL": "4", "PS_HEARTBEAT_TIMEOUT": "99"}
    assert [watchdog.parse_interval(t) for t in ("1.5", " 2", "x", "", None)] == [1, 2, 0, 0, 0]


def test_scheduler_names_the_dead_worker() -> None:
    clock = Clock()
    assert make("scheduler", set(), clock=clock).check() is None
    message = make("scheduler", {15}, clock=clock).check()
    assert message is not None and message.startswith("[scheduler] FAILURE: worker rank 3")
    assert "Exiting with code 5" in message and "--resume" in message
    message = make("scheduler", {8}, clock=clock).check()
    assert message is not None and "server rank 0" in message


def test_worker_names_the_scheduler_and_adds_the_hint() -> None:
    message = make("worker", {1}, hint=lambda: "; State Server: worker 2 is away").check()
    assert message is not None and "the scheduler at 127.0.0.1:9091" in message
    assert "worker 2 is away" in message

    def broken() -> str:
        raise OSError("no route")

    message = make("worker", {1}, hint=broken).check()
    assert message is not None and "(no hint: no route)" in message


def test_ps_lite_is_asked_only_while_it_runs() -> None:
    clock, asked, running = Clock(), [], [False]
    dog = make("server", {1}, clock=clock, asked=asked, active=lambda: running[0])
    assert dog.check() is None and asked == []  # ps-lite not started
    running[0] = True
    assert dog.check() is None and asked == []  # just started: its node table may be filling
    clock.now += watchdog.SETTLE_S
    assert dog.check() is not None and asked == [1]
    running[0] = False  # finalising: never ask again, even once it looks alive
    assert dog.check() is None
    running[0] = True
    assert dog.check() is None and asked == [1]


def test_no_progress_guard() -> None:
    clock = Clock()
    dog = make("worker", set(), clock=clock)
    clock.now += 1000
    assert dog.check() is None  # not armed before the first beat
    dog.beat()
    clock.now += 19.9
    assert dog.check() is None
    clock.now += 0.2
    message = dog.check()
    assert message is not None and "no training round finished for 20 s" in message
    with dog.paused():  # evaluation does not count
        clock.now += 500
        assert dog.check() is None
    assert dog.check() is None  # the clock restarts after the pause
    clock.now += 20.1
    assert dog.check() is not None
    dog.beat()
    dog.finish()
    clock.now += 500
    assert dog.check() is None


def test_only_rank_0_guards_synchronous_rounds() -> None:
    # the other workers' rounds include rank 0's evaluation, which they cannot leave out
    assert watchdog.rounds_wait_for("dist_sync", 1) is None
    assert "other workers" in watchdog.rounds_wait_for("dist_sync", 0)
    assert watchdog.rounds_wait_for("dist_async", 3) == "the parameter server"
    clock = Clock()
    dog = make("worker", set(), clock=clock, waits_for=None)
    dog.beat()
    clock.now += 1000
    assert dog.check() is None


def test_state_server_hint_names_who_is_not_waiting() -> None:
    status = {
        "round": 7,
        "server_time": 500.0,
        "workers": [
            {"rank": 0, "ready": True, "last_seen": 499.0, "round": 7},
            {"rank": 1, "ready": False, "last_seen": 490.0, "round": 7},
            {"rank": 2, "ready": True, "last_seen": 498.0, "round": 7},
            {"rank": 3, "ready": False, "last_seen": None, "round": None},
        ],
    }
    text = watchdog.describe_status(status, me=0)
    assert text == (
        "; State Server (round 7): not at the synchronisation point: worker 3 (never seen, "
        "in round None), worker 1 (last seen 10.0 s ago, in round 7)"
    )
    for w in status["workers"]:
        w["ready"] = True
    assert "every other worker waits" in watchdog.describe_status(status, me=0)


def test_thread_exits_the_process_with_the_message() -> None:
    codes: list[int] = []
    lines: list[str] = []
    done = threading.Event()

    def fake_exit(code: int) -> None:
        codes.append(code)
        done.set()

    dog = make("scheduler", {11}, exit=fake_exit, write=lines.append, poll=0.01).start()
    assert done.wait(5)
    assert codes == [watchdog.EXIT_CODE] and "worker rank 1" in lines[0]
    dog.stop()


def test_release_waits_in_the_barrier_while_watching() -> None:
    seen: list[bool] = []
    dog = make("worker", set(), poll=0.01).start()
    dog.beat()

    def barrier() -> None:
        time.sleep(0.05)
        seen.append(dog._thread is not None and dog._thread.is_alive())

    dog.release(barrier)
    assert seen == [True] and not dog._thread.is_alive() and dog._finished
