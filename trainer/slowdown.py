"""Emulated device speed: a slowdown factor that may change during the run, plus jitter.

A schedule is ``S`` (constant), ``S0/S1@T1/S2@T2...`` (S0 from the start, S1 from T1 seconds
of training on, ...) or a CSV trace of ``seconds,slowdown`` rows (docs/slowdown.md). ``J`` is
1, or a log-normal factor exp(N(0, sigma^2)) with ``--jitter sigma`` (seeded) to emulate noisy
co-tenants. The factor in force applies at the next batch at once; nothing smooths it in.

Three emulations (``--emulation``, docs/slowdown.md):

* ``device`` (the default): every batch takes exactly ``S(t) * T0 * J`` seconds of wall time,
  T0 being the *device unit* (calibrated by launch.py, or ``--device-unit``): the worker
  computes, then sleeps until the batch's deadline. A batch that is not done by then is an
  *overrun*; the next batch of the same run of local iterations catches up from the missed
  deadline, so one hiccup of the host does not shift the device's schedule.
* ``share``: after a batch whose measured compute time averages ``busy`` seconds, the worker
  waits ``(S(t) - 1) * busy * J`` (the emulated devices are shares of the host's cores).
* ``none``: no emulation (real devices).

This module does not import MXNet.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ScheduleError(ValueError):
    """A schedule or trace that cannot be used; the text names the value or the row."""


@dataclass(frozen=True)
class Schedule:
    """Slowdown factors from given moments of training time on (the first from 0 s)."""

    starts: tuple[float, ...]  # seconds, strictly increasing, starts[0] == 0
    factors: tuple[float, ...]  # each >= 1

    def __post_init__(self) -> None:
        if not self.starts or self.starts[0] != 0.0 or len(self.starts) != len(self.factors):
            raise ScheduleError("a schedule starts at 0 s with one factor per start")
        if any(b <= a for a, b in zip(self.starts, self.starts[1:], strict=False)):
            raise ScheduleError(f"change times must increase strictly, got {list(self.starts)}")
        bad = [f for f in self.factors if not (f >= 1.0 and math.isfinite(f))]
        if bad:
            raise ScheduleError(f"slowdowns must be finite numbers >= 1, got {bad[0]:g}")

    @classmethod
    def constant(cls, factor: float) -> Schedule:
        return cls((0.0,), (float(factor),))

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """``S`` or ``S0/S1@T1/...``; ScheduleError naming the part that is wrong."""
        parts = text.strip().split("/")
        starts, factors = [0.0], [_number(parts[0], text, "slowdown")]
        for part in parts[1:]:
            factor, at, when = part.partition("@")
            if not at:
                raise ScheduleError(f"{text!r}: {part!r} is not SLOWDOWN@SECONDS")
            starts.append(_number(when, text, "time"))
            factors.append(_number(factor, text, "slowdown"))
        try:
            return cls(tuple(starts), tuple(factors))
        except ScheduleError as exc:
            raise ScheduleError(f"{text!r}: {exc}") from None

    @classmethod
    def from_trace(cls, path: str | Path) -> Schedule:
        """A CSV of ``seconds,slowdown`` rows (a header row and ``#`` comments allowed)."""
        try:
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
        except OSError as exc:
            raise ScheduleError(f"slowdown trace {path}: {exc.strerror}") from None
        starts, factors = [], []
        for number, row in enumerate(rows, 1):
            if not row or row[0].strip().startswith("#") or (number == 1 and _is_header(row)):
                continue
            if len(row) != 2:
                raise ScheduleError(f"{path}:{number}: expected 'seconds,slowdown', got {row}")
            starts.append(_number(row[0], f"{path}:{number}", "time"))
            factors.append(_number(row[1], f"{path}:{number}", "slowdown"))
        if not starts or starts[0] != 0.0:
            raise ScheduleError(f"{path}: the first row must be at 0 seconds")
        try:
            return cls(tuple(starts), tuple(factors))
        except ScheduleError as exc:
            raise ScheduleError(f"{path}: {exc}") from None

    def at(self, seconds: float) -> float:
        """The factor in force at ``seconds`` of training."""
        return self.factors[bisect.bisect_right(self.starts, seconds) - 1]

    def describe(self) -> list[list[float]]:
        """``[[start, factor], ...]`` for meta.json."""
        return [[s, f] for s, f in zip(self.starts, self.factors, strict=True)]

    def __str__(self) -> str:
        changes = zip(self.starts[1:], self.factors[1:], strict=True)
        rest = "".join(f"/{f:g}@{s:g}" for s, f in changes)
        return f"{self.factors[0]:g}{rest}"


def _number(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScheduleError(f"{where}: {what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ScheduleError(f"{where}: {what} must be a finite number >= 0, got {text.strip()}")
    return value


def _is_header(row: list[str]) -> bool:
    try:
        float(row[0])
    except ValueError:
        return True
    return False


def schedule_arg(text: str) -> Schedule:
    """argparse type of ``--slowdown``: the message names the value (argparse adds the flag)."""
    import argparse

    try:
        return Schedule.parse(text)
    except ScheduleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


EMULATIONS = ("device", "share", "none")
BUSY_SMOOTHING = 0.1  # share: weight of the newest batch in the average compute time


@dataclass(frozen=True)
class BatchTiming:
    """How long one batch took, and what the emulated device made of it."""

    seconds: float  # wall seconds from the batch's start to its end (the wait included)
    device_s: float  # the emulated device's seconds for this batch: the capability c it shows
    wait: float  # seconds slept to emulate the device
    factor: float  # the slowdown in force
    overrun_s: float = 0.0  # device emulation: how late the batch finished (0: on time)


class Emulation:
    """The emulated device of one worker. ``start()`` before a batch, ``finish()`` after it,
    ``interrupt()`` when local iterations stop for a synchronisation."""

    name = "none"

    def __init__(
        self,
        schedule: Schedule,
        jitter: float = 0.0,
        seed: int = 0,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.schedule = schedule
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.clock, self.sleep = clock, sleep
        self._started = 0.0

    def noise(self) -> float:
        """The jitter factor J of one batch (1 without --jitter)."""
        return math.exp(self.rng.gauss(0.0, self.jitter)) if self.jitter > 0 else 1.0

    def state(self) -> list:
        """The jitter generator's state, as JSON (checkpoints: a resumed run draws on)."""
        version, internal, gauss_next = self.rng.getstate()
        return [version, list(internal), gauss_next]

    def restore(self, state: list) -> None:
        """Continue the jitter draws from ``state`` (:meth:`state`)."""
        version, internal, gauss_next = state
        self.rng.setstate((version, tuple(internal), gauss_next))

    def start(self) -> None:
        self._started = self.clock()

    def finish(self, training_s: float, share: float = 1.0) -> BatchTiming:
        """End the batch that ``start`` began; ``training_s``: seconds of training so far,
        ``share``: the batch's size as a share of a full batch (a smaller last batch)."""
        seconds = self.clock() - self._started
        return BatchTiming(seconds, seconds, 0.0, self.schedule.at(training_s))

    def interrupt(self) -> None:
        """Local iterations pause (a synchronisation): nothing to catch up after it."""
        return None

    def expected_s(self, training_s: float) -> float:
        """The device's seconds per full batch known before it computes one (0: unknown,
        measured as it goes)."""
        return 0.0

    def sleep_until(self, deadline: float) -> float:
        """Sleep until ``deadline`` on this emulation's clock; the seconds slept."""
        left = deadline - self.clock()
        if left > 0.0:
            self.sleep(left)
        return max(0.0, left)


class DeviceEmulation(Emulation):
    """Each batch takes ``S(t) * unit * J * share`` seconds of wall time (module docstring)."""

    name = "device"

    def __init__(self, schedule: Schedule, unit: float, **kwargs) -> None:
        super().__init__(schedule, **kwargs)
        if not (unit > 0.0 and math.isfinite(unit)):
            raise ValueError(f"the device unit must be a positive number of seconds, got {unit}")
        self.unit = unit
        self._missed: float | None = None  # the deadline the previous batch missed

    def start(self) -> None:
        super().start()
        # catch up from a missed deadline (within one run of local iterations)
        self._base = self._missed if self._missed is not None else self._started

    def finish(self, training_s: float, share: float = 1.0) -> BatchTiming:
        factor = self.schedule.at(training_s)
        device_s = factor * self.unit * self.noise() * share
        deadline = self._base + device_s
        late = self.clock() - deadline
        if late > 0.0:
            self._missed, wait = deadline, 0.0
        else:
            self._missed, wait = None, self.sleep_until(deadline)
        seconds = self.clock() - self._started
        return BatchTiming(seconds, device_s, wait, factor, max(0.0, late))

    def interrupt(self) -> None:
        self._missed = None

    def expected_s(self, training_s: float) -> float:
        return self.schedule.at(training_s) * self.unit


class ShareEmulation(Emulation):
    """After a batch, wait ``(S(t) - 1)`` x the typical measured compute time x J.

    The typical time is a moving average rather than the last batch alone: on a shared 2-core
    host one batch can take 5x longer than the next, and multiplying that noise by S would
    emulate an erratic device instead of a slower one. A smaller batch is emulated as the same
    device (its wait scales with its share) and leaves the average alone.
    """

    name = "share"

    def __init__(self, schedule: Schedule, **kwargs) -> None:
        super().__init__(schedule, **kwargs)
        self.busy_avg = 0.0

    def typical(self, busy: float, share: float) -> float:
        """The compute time the emulated device takes for this batch."""
        if share < 1.0:
            return busy if self.busy_avg == 0.0 else self.busy_avg * share
        self.busy_avg = (
            busy
            if self.busy_avg == 0.0
            else BUSY_SMOOTHING * busy + (1.0 - BUSY_SMOOTHING) * self.busy_avg
        )
        return self.busy_avg

    def finish(self, training_s: float, share: float = 1.0) -> BatchTiming:
        busy = self.clock() - self._started
        factor = self.schedule.at(training_s)
        wait = 0.0
        if factor > 1.0:
            wait = (factor - 1.0) * self.typical(busy, share) * self.noise()
            self.sleep(wait)
        else:
            self.typical(busy, share)
        seconds = self.clock() - self._started
        return BatchTiming(seconds, seconds, wait, factor)


def make_emulation(
    kind: str, schedule: Schedule, jitter: float, seed: int, unit: float | None
) -> Emulation:
    """The emulation of ``--emulation`` (``unit``: the device unit T0, device emulation only)."""
    if kind == "device":
        if unit is None:
            raise ValueError("device emulation needs a device unit (--device-unit)")
        return DeviceEmulation(schedule, unit, jitter=jitter, seed=seed)
    if kind == "share":
        return ShareEmulation(schedule, jitter=jitter, seed=seed)
    if kind == "none":
        return Emulation(schedule, jitter=jitter, seed=seed)
    raise ValueError(f"--emulation must be one of {', '.join(EMULATIONS)}, got {kind!r}")
