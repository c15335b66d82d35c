"""Emulated device speed: a slowdown factor that may change during the run, plus jitter.

A schedule is ``S`` (constant), ``S0/S1@T1/S2@T2...`` (S0 from the start, S1 from T1 seconds
of training on, ...) or a CSV trace of ``seconds,slowdown`` rows (docs/slowdown.md). After a
batch whose measured compute time averages ``busy`` seconds, the worker waits
``(S(t) - 1) * busy * J`` where ``J`` is 1, or a log-normal factor exp(N(0, sigma^2)) with
``--jitter sigma`` (seeded) to emulate noisy co-tenants. The factor in force applies at the
next batch at once; nothing smooths it in. This module does not import MXNet.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
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


class Emulator:
    """The emulated wait after each batch: (S(t) - 1) x the typical compute time x jitter."""

    def __init__(self, schedule: Schedule, jitter: float, seed: int) -> None:
        self.schedule = schedule
        self.jitter = jitter
        self.rng = random.Random(seed)

    def wait(self, busy: float, seconds: float) -> tuple[float, float]:
        """(seconds to wait, factor in force) after a batch at ``seconds`` of training."""
        factor = self.schedule.at(seconds)
        if factor <= 1.0:
            return 0.0, factor
        noise = math.exp(self.rng.gauss(0.0, self.jitter)) if self.jitter > 0 else 1.0
        return (factor - 1.0) * busy * noise, factor
