"""Devices whose speed changes during a run: schedules, traces, jitter, and ESync adapting."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from trainer.slowdown import DeviceEmulation, Schedule, ScheduleError, ShareEmulation


def test_schedule_parses_and_switches_at_once() -> None:
    s = Schedule.parse("1/16@30/2@45.5")
    assert s.starts == (0.0, 30.0, 45.5) and s.factors == (1.0, 16.0, 2.0)
    assert [s.at(t) for t in (0, 29.999, 30, 45.4, 45.5, 1e9)] == [1, 1, 16, 16, 2, 2]
    assert str(s) == "1/16@30/2@45.5" and Schedule.parse("4").describe() == [[0.0, 4.0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5", "slowdowns must be finite numbers >= 1, got 0.5"),
        ("1/16@30/2@20", "change times must increase strictly"),
        ("1/16@-3", "time must be a finite number >= 0, got -3"),
        ("1/16", "'16' is not SLOWDOWN@SECONDS"),
        ("x", "slowdown 'x' is not a number"),
        ("1/inf@3", "slowdown must be a finite number"),
    ],
)
def test_bad_schedules_name_the_value(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("(", r"\(")) as err:
        Schedule.parse(text)
    assert text in str(err.value)


def test_trace_file_rows_and_errors(tmp_path) -> None:
    good = tmp_path / "trace.csv"
    good.write_text("seconds,slowdown\n# a co-tenant arrives\n0,1\n10,8\n20,1.5\n")
    assert Schedule.from_trace(good).describe() == [[0, 1], [10, 8], [20, 1.5]]
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1\n10,8,3\n")
    with pytest.raises(ScheduleError, match=f"{bad}:2: expected 'seconds,slowdown'"):
        Schedule.from_trace(bad)
    late = tmp_path / "late.csv"
    late.write_text("5,2\n")
    with pytest.raises(ScheduleError, match="first row must be at 0 seconds"):
        Schedule.from_trace(late)
    with pytest.raises(ScheduleError, match="No such file"):
        Schedule.from_trace(tmp_path / "missing.csv")


class FakeClock:
    """A clock that moves only when told to: by ``advance`` (compute) or by ``sleep``."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _batch(emulation, clock: FakeClock, busy: float, training_s: float = 0.0, share=1.0):
    emulation.start()
    clock.advance(busy)
    return emulation.finish(training_s, share)


def test_share_emulation_multiplies_the_typical_batch_and_jitters_reproducibly() -> None:
    clock = FakeClock()
    plain = ShareEmulation(Schedule.parse("3/1@10"), clock=clock, sleep=clock.sleep)
    first = _batch(plain, clock, 0.02, 5.0)
    assert (first.wait, first.factor) == (pytest.approx(0.04), 3.0)
    assert first.seconds == pytest.approx(0.06) and first.device_s == first.seconds
    after = _batch(plain, clock, 0.02, 10.0)
    assert (after.wait, after.factor) == (0.0, 1.0)

    def waits(seed: int, n: int) -> list[float]:
        c = FakeClock()
        emu = ShareEmulation(Schedule.constant(5), jitter=0.3, seed=seed, clock=c, sleep=c.sleep)
        return [_batch(emu, c, 0.01).wait for _ in range(n)]

    assert waits(7, 3) == waits(7, 3)  # seeded
    ratios = [w / 0.04 for w in waits(7, 2000)]
    assert statistics.pstdev([math.log(r) for r in ratios]) == pytest.approx(0.3, 0.1)


def test_device_batches_take_exactly_their_device_time() -> None:
    clock = FakeClock()
    emu = DeviceEmulation(Schedule.constant(4), 0.01, clock=clock, sleep=clock.sleep)
    for busy in (0.003, 0.021, 0.0399):  # however long the host computes, within 4 x T0
        timing = _batch(emu, clock, busy)
        assert timing.seconds == pytest.approx(0.04) and timing.device_s == pytest.approx(0.04)
        assert timing.wait == pytest.approx(0.04 - busy) and timing.overrun_s == 0.0
    smaller = _batch(emu, clock, 0.001, share=0.25)  # a quarter batch: a quarter of the time
    assert smaller.seconds == pytest.approx(0.01) and smaller.factor == 4.0


def test_an_overrun_is_counted_and_the_next_batch_catches_up() -> None:
    clock = FakeClock()
    emu = DeviceEmulation(Schedule.constant(1), 0.01, clock=clock, sleep=clock.sleep)
    late = _batch(emu, clock, 0.013)
    assert late.overrun_s == pytest.approx(0.003) and late.wait == 0.0
    assert late.seconds == pytest.approx(0.013) and late.device_s == pytest.approx(0.01)
    # the next deadline counts from the missed one: 2 x T0 after the first batch started
    caught_up = _batch(emu, clock, 0.004)
    assert caught_up.overrun_s == 0.0 and caught_up.seconds == pytest.approx(0.007)
    assert clock.now == pytest.approx(100.02)
    # a synchronisation in between drops the backlog: the next batch has its full T0
    _batch(emu, clock, 0.015)
    emu.interrupt()
    clock.advance(0.5)
    fresh = _batch(emu, clock, 0.002)
    assert fresh.overrun_s == 0.0 and fresh.seconds == pytest.approx(0.01)


def test_device_schedules_and_jitter_change_s_not_the_unit() -> None:
    clock = FakeClock()
    emu = DeviceEmulation(Schedule.parse("1/16@30"), 0.005, clock=clock, sleep=clock.sleep)
    assert _batch(emu, clock, 0.001, training_s=29.9).seconds == pytest.approx(0.005)
    switched = _batch(emu, clock, 0.001, training_s=30.0)
    assert switched.seconds == pytest.approx(0.08) and switched.factor == 16.0

    def times(seed: int) -> list[float]:
        c = FakeClock()
        noisy = DeviceEmulation(
            Schedule.constant(2), 0.01, jitter=0.2, seed=seed, clock=c, sleep=c.sleep
        )
        return [_batch(noisy, c, 0.0001).device_s for _ in range(2000)]

    assert times(3) == times(3) and times(3) != times(4)
    logs = [math.log(t / 0.02) for t in times(3)]
    assert statistics.pstdev(logs) == pytest.approx(0.2, 0.1)
    assert abs(statistics.mean(logs)) < 0.02  # centred on S x T0


def test_a_device_unit_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="device unit must be a positive number"):
            DeviceEmulation(Schedule.constant(1), bad)


def test_rebalance_rounds_counts_from_the_change() -> None:
    from summary import rebalance_rounds

    def worker(schedule, ks, factors):
        times = [float(t) for t in range(1, len(ks) + 1)]
        timeline = list(zip(times, ks, factors, strict=True))
        return {"slowdown_schedule": schedule, "timeline": timeline}

    swap_a = worker([[0, 1], [3, 16]], [9, 9, 9, 9, 5, 1], [1, 1, 1, 16, 16, 16])
    swap_b = worker([[0, 16], [3, 1]], [1, 1, 1, 1, 3, 9], [16, 16, 16, 1, 1, 1])
    summary = {"workers": [swap_a, swap_b]}
    # the change at 3 s: the round ending at 3 s is before it; at 4 and 5 s A is still ahead
    assert rebalance_rounds(summary) == [{"at_s": 3, "rounds": 3}]
    never = {"workers": [swap_a, worker([[0, 16], [3, 1]], [1] * 6, [16, 16, 16, 1, 1, 1])]}
    assert rebalance_rounds(never) == [{"at_s": 3, "rounds": None}]
    assert rebalance_rounds({"workers": [worker([[0, 1]], [1, 1], [1, 1])]}) == []


def test_the_jitter_generator_resumes_where_its_checkpoint_left_it() -> None:
    def emulation() -> DeviceEmulation:
        return DeviceEmulation(Schedule.constant(2), 0.01, jitter=0.3, seed=11)

    straight = emulation()
    draws = [straight.noise() for _ in range(6)]
    stopped = emulation()
    _ = [stopped.noise() for _ in range(3)]
    saved = json.loads(json.dumps(stopped.state()))  # as a checkpoint's JSON holds it
    resumed = emulation()
    resumed.restore(saved)
    assert [resumed.noise() for _ in range(3)] == draws[3:]
    assert draws[3:] != draws[:3]
