"""Properties of Alg. 2 (``StateServer.scheduler.Scheduler``) over random capability mixes.

A small discrete-event simulation drives the pure scheduler the way the trainers do
(trainer/loop.py with trainer.modes.ESync): p workers, worker i needs ``caps[i]`` seconds per
batch. In a round every worker computes a batch, then asks ``query(rank, k, c, te, now)``
(k >= 1: the answer for k == 0 is always compute, so ESync does not ask) and computes again
until it is told ``sync``; the round ends when all are ready, and every worker announces the
next round with ``reset(rank, t, te, now)`` (the first round has no reset, as in the loop).

Capabilities and epsilon are multiples of 1/64 s and 1/256 s, so every time in the simulation
is exact in floating point and the boundaries (a straggler exactly 2x slower) are really hit.
Several hundred seeded random cases; the properties, for every round after the first (in the
first one the capabilities are still unknown):

* no round deadlocks: every worker is told sync after a bounded number of batches;
* the slowest worker (every worker with the largest c) does exactly one iteration;
* a worker at least 2x faster than the slowest (c_slow >= 2 c_i + epsilon) does more than one;
* no worker starts a batch after the slowest finished (beyond its round's first batch); with
  aligned round starts every extra batch ends at least epsilon before the slowest finishes,
  and no worker stops more than one batch (plus epsilon) before the slowest finishes.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from StateServer.scheduler import COMPUTE, SYNC, Scheduler
from StateServer.state import WorkerRecord

CASES = 300
ROUNDS = 5
TICK = 1 / 64  # capabilities are multiples of this (seconds)
EPS_TICK = 1 / 256


@dataclass
class Round:
    """What happened in one simulated round."""

    start: float
    batch_starts: dict[int, list[float]] = field(default_factory=dict)  # rank -> start times
    ready: dict[int, float] = field(default_factory=dict)  # rank -> time it was told sync

    def k(self, rank: int) -> int:
        return len(self.batch_starts[rank])


def simulate(
    caps: list[float],
    eps: float,
    rounds: int,
    rng: random.Random,
    lag: float = 0.0,
    scheduler: Scheduler | None = None,
) -> list[Round]:
    """Run ``rounds`` rounds; each worker starts a round up to ``lag`` s after the barrier.

    Simultaneous events are taken in a random order. Raises AssertionError when a worker is
    never told to synchronise (a deadlock of the round).
    """
    p = len(caps)
    sched = scheduler or Scheduler()
    sched.init(p, eps)
    slowest = max(caps)
    limit = [int(8 * slowest / c) + 8 for c in caps]  # batches a worker may do in one round
    done: list[Round] = []
    start = 0.0
    for t in range(1, rounds + 1):
        rnd = Round(start, {r: [] for r in range(p)})
        events: list[tuple[float, float, int, str]] = []
        for r in range(p):
            delay = rng.uniform(0, lag) if lag else 0.0
            heapq.heappush(events, (start + delay, rng.random(), r, "start"))
        k = [0] * p
        while events:
            now, _, r, kind = heapq.heappop(events)
            if kind == "start":
                if t > 1:  # the loop announces round t >= 2 (begin_round); round 1 has none
                    sched.reset(r, t, now, now)
                action = COMPUTE
            else:
                k[r] += 1
                action = sched.query(r, k[r], caps[r], now, now)
            if action == SYNC:
                rnd.ready[r] = now
                continue
            assert action == COMPUTE, action
            assert k[r] < limit[r], (
                f"deadlock: rank {r} (c={caps[r]}) still told compute after {k[r]} batches "
                f"in round {t}; caps={caps} eps={eps}"
            )
            rnd.batch_starts[r].append(now)
            heapq.heappush(events, (now + caps[r], rng.random(), r, "done"))
        assert sorted(rnd.ready) == list(range(p)), f"round {t} never ended: {rnd}"
        done.append(rnd)
        start = max(rnd.ready.values())
    return done


def check_round(caps: list[float], eps: float, rnd: Round, aligned: bool) -> None:
    """The properties of one round after the first (``aligned``: all started together)."""
    slowest = max(caps)
    stragglers = [r for r, c in enumerate(caps) if c == slowest]
    slow_done = max(rnd.ready[r] for r in stragglers)
    ks = [rnd.k(r) for r in range(len(caps))]
    where = f"caps={caps} eps={eps} k={ks}"
    for r, c in enumerate(caps):
        assert rnd.k(r) >= 1, where
        if c == slowest:
            assert rnd.k(r) == 1, f"the slowest (rank {r}) did {rnd.k(r)} iterations; {where}"
            continue
        late = [s for s in rnd.batch_starts[r][1:] if s > slow_done]
        assert not late, (
            f"rank {r} started batches at {late} after the slowest finished at {slow_done}; {where}"
        )
        if not aligned:
            continue
        short = [s for s in rnd.batch_starts[r][1:] if s + c + eps > slow_done]
        assert not short, (
            f"rank {r} started batches at {short} that end less than epsilon before the slowest "
            f"finishes at {slow_done}; {where}"
        )
        if slowest >= 2 * c + eps:
            assert rnd.k(r) >= 2, f"rank {r} is >= 2x faster but did one iteration; {where}"
        idle = slow_done - rnd.ready[r]
        assert idle <= c + eps, f"rank {r} waited {idle} s for the slowest; {where}"


def random_case(rng: random.Random) -> tuple[list[float], float]:
    """A capability mix (some with ties, some with an exactly 2x slower straggler) and eps."""
    p = rng.randint(1, 6)
    ticks = [rng.choice((rng.randint(1, 16), rng.randint(1, 512))) for _ in range(p)]
    shape = rng.random()
    if shape < 0.2 and p > 1:  # the straggler exactly 2x slower than some worker
        ticks[-1] = 2 * ticks[0]
        ticks = [min(x, ticks[-1]) for x in ticks]
    elif shape < 0.35 and p > 2:  # tied stragglers
        ticks[1] = ticks[0] = max(ticks)
    elif shape < 0.45:  # all equal
        ticks = [ticks[0]] * p
    eps = 0.0 if rng.random() < 0.5 else EPS_TICK * rng.randint(1, 128)
    return [x * TICK for x in ticks], eps


def cases() -> list[tuple[int, list[float], float]]:
    rng = random.Random(20240611)
    return [(seed, *random_case(rng)) for seed in range(CASES)]


def test_random_cases_cover_the_interesting_mixes() -> None:
    """The generator hits the boundaries the properties are about (guards a vacuous loop)."""
    all_cases = cases()
    assert sum(1 for _, caps, e in all_cases if e == 0 and max(caps) == 2 * min(caps)) >= 10
    assert sum(1 for _, caps, _ in all_cases if len(caps) > 2 and caps.count(max(caps)) > 1) >= 10
    assert sum(1 for _, caps, e in all_cases if max(caps) >= 2 * min(caps) + e) >= 100


def test_aligned_rounds_fast_workers_fill_the_stragglers_time() -> None:
    for seed, caps, eps in cases():
        rounds = simulate(caps, eps, ROUNDS, random.Random(seed))
        for rnd in rounds[1:]:
            check_round(caps, eps, rnd, aligned=True)


def test_staggered_round_starts_still_end_and_the_slowest_does_one() -> None:
    for seed, caps, eps in cases()[: CASES // 2]:
        lag = min(caps) / 2
        rounds = simulate(caps, eps, ROUNDS, random.Random(seed), lag=lag)
        for rnd in rounds[1:]:
            check_round(caps, eps, rnd, aligned=False)


def test_first_round_ends_although_capabilities_are_unknown() -> None:
    for seed, caps, eps in cases():
        first = simulate(caps, eps, 1, random.Random(seed))[0]
        slow_done = max(first.ready[r] for r, c in enumerate(caps) if c == max(caps))
        for r in range(len(caps)):  # no batch but the first begins after the stragglers finished
            assert sum(s > slow_done for s in first.batch_starts[r][1:]) == 0, (caps, eps)


class _SyncAtOnce(Scheduler):
    """Plain SSGD: sync as soon as one batch is done."""

    def decide(self, asker: WorkerRecord, now: float) -> str:
        return SYNC if asker.k >= 1 else COMPUTE


class _NeverSync(Scheduler):
    """Never lets anyone synchronise."""

    def decide(self, asker: WorkerRecord, now: float) -> str:
        return COMPUTE


def test_the_checks_catch_a_wrong_scheduler() -> None:
    caps, eps = [0.25, 1.0], 0.0
    rounds = simulate(caps, eps, 3, random.Random(1), scheduler=_SyncAtOnce())
    with pytest.raises(AssertionError, match="did one iteration"):
        check_round(caps, eps, rounds[1], aligned=True)
    with pytest.raises(AssertionError, match="deadlock"):
        simulate(caps, eps, 3, random.Random(1), scheduler=_NeverSync())
