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


def judged(dog: FailureWatchdog, clock: Clock) -> str | None:
    """The verdict once ps-lite has said the same for the whole confirmation of a node never
    seen alive (a stage and the confirmation); the first answer alone is never a failure."""
    assert dog.check() is None, "one dead answer of ps-lite is not yet a death"
    clock.now += dog.stage + dog.confirm
    return dog.check()


def test_node_ids_follow_ps_lite() -> None:
    assert [n.node_id for n in watchdog.watched_nodes("scheduler", ENV)] == [9, 11, 13, 15, 8]
    assert str(Node("worker", 3)) == "worker rank 3 (ps-lite node 15)"
    assert str(Node("server", 0)) == "server rank 0 (ps-lite node 8)"
    (scheduler,) = watchdog.watched_nodes("worker", ENV)
    assert scheduler.node_id == 1 and str(scheduler) == "the scheduler at 127.0.0.1:9091"
    assert watchdog.watched_nodes("server", ENV) == [scheduler]


def test_two_stages_fit_in_the_timeout() -> None:
    assert watchdog.confirm_seconds() == 3.0 and watchdog.confirm_seconds(5) == 11.0
    for timeout in (20.0, 30.0, 60.0, 120.0):
        stage = watchdog.stage_timeout(timeout)
        assert stage >= watchdog.MIN_STAGE_INTERVALS
        assert 2 * (stage + 1 + watchdog.POLL_S + watchdog.confirm_seconds()) <= timeout, timeout
    assert watchdog.stage_timeout(30.0) == 10  # (30 - 2 * (1 + 0.5 + 3)) // 2
    assert watchdog.stage_timeout(10.0) == watchdog.MIN_STAGE_INTERVALS  # the floor wins
    assert watchdog.stage_timeout(2.0) == watchdog.MIN_STAGE_INTERVALS  # never below 3 beats
    assert watchdog.stage_timeout(60.0, interval=5) == 17  # (60 - 2 * (1 + 0.5 + 11)) // 2
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
    message = judged(make("scheduler", {15}, clock=clock), clock)
    assert message is not None and message.startswith("[scheduler] FAILURE: worker rank 3")
    assert "Exiting with code 5" in message and "--resume" in message
    message = judged(make("scheduler", {8}, clock=clock), clock)
    assert message is not None and "server rank 0" in message


def test_worker_names_the_scheduler_and_adds_the_hint() -> None:
    clock = Clock()
    dog = make("worker", {1}, clock=clock, hint=lambda: "; State Server: worker 2 is away")
    message = judged(dog, clock)
    assert message is not None and "the scheduler at 127.0.0.1:9091" in message
    assert "worker 2 is away" in message

    def broken() -> str:
        raise OSError("no route")

    message = judged(make("worker", {1}, clock=clock, hint=broken), clock)
    assert message is not None and "(no hint: no route)" in message


def test_ps_lite_is_asked_only_while_it_runs() -> None:
    clock, asked, running = Clock(), [], [False]
    dog = make("server", {1}, clock=clock, asked=asked, active=lambda: running[0])
    assert dog.check() is None and asked == []  # ps-lite not started
    running[0] = True
    assert dog.check() is None and asked == []  # just started: its node table may be filling
    clock.now += watchdog.SETTLE_S
    assert judged(dog, clock) is not None and asked == [1, 1]
    running[0] = False  # finalising: never ask again, even once it looks alive
    assert dog.check() is None
    running[0] = True
    assert dog.check() is None and asked == [1, 1]


def test_a_slow_start_up_is_not_a_death() -> None:
    """#24: after a slow join ps-lite reports the scheduler dead until its first heartbeat
    comes back (it counts from its own start); that answer is not believed at once."""
    clock, dead = Clock(), {1}
    dog = make("server", dead, timeout=30.0, clock=clock)
    for _ in range(int((dog.stage + dog.confirm) / 0.5) - 1):  # polls while never seen alive
        assert dog.check() is None
        clock.now += 0.5
    dead.clear()  # the first heartbeat's answer arrived
    assert dog.check() is None
    clock.now += 1000
    assert dog.check() is None


def test_a_starved_node_is_not_dead_until_the_confirmation_ends() -> None:
    clock, dead = Clock(), set()
    dog = make("scheduler", dead, timeout=30.0, clock=clock)
    assert dog.check() is None  # every node seen alive
    dead.add(11)  # worker 1 misses heartbeats (its host is starved)
    for _ in range(int(dog.confirm / 0.5)):
        assert dog.check() is None
        clock.now += 0.5
    dead.clear()  # ...and beats again: the count starts afresh next time
    assert dog.check() is None
    dead.add(11)
    assert dog.check() is None
    clock.now += dog.confirm - 0.01
    assert dog.check() is None
    clock.now += 0.01
    message = dog.check()
    assert message is not None and "worker rank 1" in message
    assert f"none in the {dog.confirm:g} s after" in message


def test_a_real_death_is_found_within_the_failure_timeout() -> None:
    """Two stages (the scheduler, then everyone noticing it is gone), each with its poll and
    confirmation, fit in --failure-timeout for nodes seen alive."""
    timeout = 30.0
    clock, dead = Clock(), set()
    scheduler = make("scheduler", dead, timeout=timeout, clock=clock)
    assert scheduler.check() is None
    killed = clock.now
    found = None
    while found is None:
        clock.now += 0.5
        if clock.now - killed > scheduler.stage + 1:  # ps-lite's view of the killed node
            dead.add(15)
        found = scheduler.check()
    first_stage = clock.now - killed
    assert first_stage <= scheduler.stage + 1 + watchdog.POLL_S + scheduler.confirm + 0.5
    assert 2 * first_stage <= timeout


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

    dead: set[int] = set()
    dog = make("scheduler", dead, exit=fake_exit, write=lines.append, poll=0.01, confirm=0.05)
    dog.start()
    time.sleep(0.1)  # every node seen alive
    dead.add(11)
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
