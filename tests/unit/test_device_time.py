"""Device-time emulation: the device unit's arithmetic (how many workers of a mix fit). Real
runs are tests/e2e/test_device_time_runs.py's."""

from __future__ import annotations

import pytest

import config
from trainer.calibrate import UnitError, peak_inverse_sum, plan_unit
from trainer.slowdown import Schedule

DEFAULT_MIX = [Schedule.constant(s) for s in (1, 1, 4, 16)]
SIXTEEN = [Schedule.constant(s) for s in (1,) * 4 + (2,) * 4 + (4,) * 4 + (16,) * 4]


def test_the_unit_keeps_the_devices_at_the_configured_share_of_the_cores() -> None:
    plan = plan_unit(0.01, DEFAULT_MIX, cores=2, threads=1, share=0.5)
    # demand = busy x sum(1/S) / T0 = 0.5 x 2 cores: T0 = 0.01 x 2.3125 / 1.0
    assert plan.inverse_sum == pytest.approx(2.3125)
    assert plan.unit_s == pytest.approx(0.01 * 2.3125)
    assert plan.demand == pytest.approx(0.5)
    assert plan.workers_that_fit(4) == 4 and not plan.given
    default = plan_unit(0.01, DEFAULT_MIX, cores=2)
    assert default.demand == pytest.approx(config.DEVICE_CPU_SHARE)
    alone = plan_unit(0.01, [Schedule.constant(1)], cores=4, share=0.5, min_headroom=1.5)
    assert alone.unit_s == pytest.approx(0.015)  # never below the minimum headroom
    assert alone.workers_that_fit(1) == 3  # 3 lone devices at 2/3 of a core each in 2 cores
    threads = plan_unit(0.01, DEFAULT_MIX, cores=2, threads=2, share=0.5)
    assert threads.unit_s == pytest.approx(2 * plan.unit_s)  # twice the cores per device


def test_sixteen_workers_fit_on_two_cores() -> None:
    plan = plan_unit(0.01, SIXTEEN, cores=2)
    assert plan.inverse_sum == pytest.approx(7.25)
    assert plan.headroom == pytest.approx(7.25 / (2 * config.DEVICE_CPU_SHARE))
    assert plan.headroom <= config.DEVICE_MAX_HEADROOM and plan.workers_that_fit(16) == 16
    assert "16 workers of this mix fit" in plan.describe(16)


def test_a_mix_that_cannot_fit_is_refused_unless_the_unit_is_given() -> None:
    many = [Schedule.constant(1)] * 64
    with pytest.raises(UnitError, match="only 12 workers of this mix fit on 2 cores") as err:
        plan_unit(0.01, many, cores=2, share=0.75, max_headroom=8)
    assert "--device-unit" in str(err.value)
    given = plan_unit(0.01, many, cores=2, given=0.02)
    assert given.given and given.unit_s == 0.02 and given.demand == pytest.approx(16.0)


def test_schedules_count_at_their_busiest_moment() -> None:
    swap = [Schedule.parse("1/16@30"), Schedule.parse("4"), Schedule.parse("16/2@10")]
    # t=0: 1 + 1/4 + 1/16; t=10: 1 + 1/4 + 1/2 (the peak); t=30: 1/16 + 1/4 + 1/2
    assert peak_inverse_sum(swap) == pytest.approx(1.75)
