"""The non-blocking protocol's server side without HTTP: the deadline, the held requests, and
a differential test of its decisions against blocking Alg. 2 (bench/simulate.py's engine)."""

from __future__ import annotations

import copy
import random

import pytest

from bench.simulate import Setup, simulate
from StateServer.dispatcher import Engine
from StateServer.messages import HoldMsg, InitMsg, QueryMsg, ReportMsg, ResetMsg, ResponseMsg
from StateServer.router import Router
from StateServer.scheduler import (
    COMPUTE,
    DUE,
    SYNC,
    UNKNOWN,
    Scheduler,
    _key,
    sync_deadline,
)
from StateServer.state import WorkerRecord
from tests.support.engine import Job, send

TICK = 1 / 64  # dyadic times: the comparisons below are exact in floating point


# --- the deadline -------------------------------------------------------------------------


def test_sync_deadline_is_step_7_solved_for_the_time() -> None:
    # slowest: 1 s per batch, its batch started at 100; asker: 0.25 s, epsilon 0.125
    t = sync_deadline(0.25, 1.0, 100.0, 0.125)
    assert t == 100.625
    rest = lambda now: 1.0 - (now - 100.0)  # noqa: E731
    assert not 0.25 + 0.125 > rest(t)  # at the deadline itself: compute (c + eps == rest)
    assert 0.25 + 0.125 > rest(t + TICK)  # just after it: sync


def _random_state(rng: random.Random) -> tuple[Scheduler, WorkerRecord]:
    """A scheduler with 1-5 workers in random states, and one asker with k >= 1."""
    sched = Scheduler()
    p = rng.randint(1, 5)
    sched.init(p, rng.choice((0.0, TICK, 4 * TICK)))
    if rng.random() < 0.15:
        sched.db.rejoined = True  # a restarted server (recovering while records are missing)
    round_no = rng.randint(1, 3)
    for rank in range(p):
        if rng.random() < 0.15:
            continue  # no record yet
        t = round_no if rng.random() < 0.85 else round_no - 1
        sched.reset(rank, t, TICK * rng.randint(0, 64), 0.0)
        c = 0.0 if rng.random() < 0.1 else TICK * rng.choice((1, 2, 4, 8, 8, 16, 64))
        sched.report(rank, rng.randint(0, 4), c, TICK * rng.randint(0, 128), 0.0)
        rec = sched.db.records[rank]
        if rng.random() < 0.2:
            sched.mark_synced(rec)
    asker = rng.choice(list(sched.db.records.values()) or [None])
    if asker is None:
        sched.reset(0, round_no, 0.0, 0.0)
        asker = sched.db.records[0]
    old = _key(asker, sched.db.round)
    asker.k = max(asker.k, 1)
    sched._changed(asker, old)
    return sched, asker


def test_deadline_agrees_with_decide_for_every_state_and_time() -> None:
    """decide(asker, now) == SYNC  <=>  now > deadline(asker), over random states."""
    rng = random.Random(7)
    kinds = {"due": 0, "unknown": 0, "finite": 0}
    for _ in range(3000):
        sched, asker = _random_state(rng)
        deadline = sched.deadline(asker)
        kind = "due" if deadline == DUE else "unknown" if deadline == UNKNOWN else "finite"
        kinds[kind] += 1
        for now in [TICK * i for i in range(-8, 200, 3)] + ([deadline] if kind == "finite" else []):
            assert (sched.decide(asker, now) == SYNC) == (now > deadline), (
                sched.db,
                asker,
                now,
                deadline,
            )
    assert min(kinds.values()) > 200, kinds  # every branch is exercised


def test_the_agreement_check_can_fail() -> None:
    class Shifted(Scheduler):
        def deadline(self, asker: WorkerRecord) -> float:
            d = super().deadline(asker)
            return d - self.db.epsilon - TICK if d not in (DUE, UNKNOWN) else d

    rng = random.Random(7)
    with pytest.raises(AssertionError):
        for _ in range(300):
            sched, asker = _random_state(rng)
            sched.__class__ = Shifted
            d = sched.deadline(asker)
            for now in (d, d + TICK / 2):
                assert (sched.decide(asker, now) == SYNC) == (now > d)


def test_the_incremental_slowest_is_the_brute_force_argmax() -> None:
    rng = random.Random(3)
    for case in range(300):
        sched = Scheduler()
        p = rng.randint(1, 6)
        sched.init(p, 0.0)
        for step in range(60):
            rank, op = rng.randrange(p), rng.random()
            c = TICK * rng.choice((0, 1, 2, 4, 4, 8))
            te = TICK * rng.randint(0, 64)
            if op < 0.2:
                sched.reset(rank, rng.randint(1, 4), te, 0.0)
            elif op < 0.5:
                sched.report(rank, rng.randint(0, 3), c, te, 0.0)
            elif op < 0.8:
                sched.query(rank, rng.randint(0, 3), c, te, te)
            else:
                sched.hold(rank, rng.randint(1, 4), rng.randint(0, 3), c, te, te)
            db = sched.db
            brute = None
            if len(db.records) == p and all(r.c > 0 for r in db.records.values()):
                brute = max(db.records.values(), key=lambda r: _key(r, db.round))
            assert sched.slowest() is brute, (case, step, db)


# --- hold semantics -----------------------------------------------------------------------


def started(caps: list[float], eps: float = 0.0, t0: float = 100.0) -> Engine:
    """An engine whose workers know each other's capabilities, in round 2 from t0."""
    engine = Engine(Router(), max_hold_s=5.0)
    send(engine, InitMsg(len(caps), eps), 0.0)
    for rank, c in enumerate(caps):
        send(engine, ReportMsg(rank, 1, c, 1.0), 1.0)
    return engine


def test_a_first_hold_of_a_round_is_the_reset_and_a_stale_one_is_sync() -> None:
    engine = started([0.25, 1.0])
    sched = engine.router.scheduler
    send(engine, HoldMsg(1, 2, 0, 1.0, 100.0), 100.0)
    rec = sched.db.records[1]
    assert (sched.db.round, rec.t, rec.k, rec.te, rec.told) == (2, 2, 0, 100.0, True)
    before = copy.deepcopy(sched.db)
    stale = send(engine, HoldMsg(0, 1, 7, 0.25, 99.0), 100.0)  # round 1 is over
    assert stale.done and stale.result.action == SYNC and sched.db == before


def test_a_hold_is_answered_at_its_deadline_not_before() -> None:
    engine = started([0.25, 1.0], eps=TICK)
    send(engine, HoldMsg(1, 2, 0, 1.0, 100.0), 100.0)  # the slowest starts round 2
    fast = send(engine, HoldMsg(0, 2, 0, 0.25, 100.0), 100.0)
    deadline = sync_deadline(0.25, 1.0, 100.0, TICK)
    assert not fast.done and engine.next_time() == deadline
    engine.tick(deadline - TICK)
    assert not fast.done
    engine.tick(deadline + 0.001)
    assert fast.done and fast.result.action == SYNC
    assert fast.result.left == pytest.approx(0.25 + TICK - 0.001)
    assert fast.result.held == pytest.approx(deadline + 0.001 - 100.0)
    assert fast.result.late == pytest.approx(0.001) and not fast.result.final
    # the fast worker's blocking query agrees: sync after the deadline
    assert engine.router.scheduler.decide(engine.router.scheduler.db.records[0], deadline + 0.001)


def test_the_slowest_is_answered_at_once_and_asked_for_its_final_hold() -> None:
    engine = started([0.25, 1.0])
    slow = send(engine, HoldMsg(1, 2, 0, 1.0, 100.0), 100.0)
    assert slow.done and slow.result.action == SYNC and slow.result.final
    fast = send(engine, HoldMsg(0, 2, 0, 0.25, 100.0), 100.0)
    assert not fast.done
    # the slowest reaches the barrier early: the others are told at once
    final = send(engine, HoldMsg(1, 2, 1, 1.0, 100.5), 100.5)
    assert final.done and final.result.action == SYNC
    assert engine.router.scheduler.db.records[1].ready
    assert fast.done and fast.result.action == SYNC and fast.result.late == 0.0


def test_a_hold_without_the_askers_capability_is_answered_compute_at_once() -> None:
    engine = Engine(Router())
    send(engine, InitMsg(2, 0.0), 0.0)
    job = send(engine, HoldMsg(0, 1, 0, 0.0, 1.0), 1.0)
    assert job.done and job.result.action == COMPUTE
    held = send(engine, HoldMsg(0, 1, 1, 0.1, 1.1), 1.1)  # rank 1 unknown: held
    assert not held.done and engine.next_time() == pytest.approx(1.1 + engine.holds.max_hold_s)


def test_a_hold_expires_is_superseded_and_released_by_a_new_run() -> None:
    engine = started([0.25, 1.0])
    first = send(engine, HoldMsg(0, 2, 0, 0.25, 100.0), 100.0)  # the slowest has not reset
    engine.tick(100.0 + 5.0)
    assert first.done and first.result.action == COMPUTE and first.result.held == 5.0
    second = send(engine, HoldMsg(0, 2, 3, 0.25, 105.0), 105.0)
    third = send(engine, HoldMsg(0, 2, 4, 0.25, 105.1), 105.1)
    assert second.done and second.result.action == COMPUTE and not third.done
    send(engine, InitMsg(2, 0.0), 105.2)  # a plain init: the run is over
    assert third.done and third.result.action == COMPUTE and len(engine.holds) == 0


def test_a_blocking_query_of_a_held_worker_answers_its_hold_too() -> None:
    engine = started([0.25, 1.0])
    send(engine, HoldMsg(1, 2, 0, 1.0, 100.0), 100.0)
    held = send(engine, HoldMsg(0, 2, 0, 0.25, 100.0), 100.0)
    q = send(engine, QueryMsg(0, 3, 0.25, 100.8), 100.8)  # the fallback: a blocking query
    assert q.result.action == SYNC and held.done and held.result.action == SYNC


def test_recovering_server_answers_holds_sync() -> None:
    engine = Engine(Router())
    job = Job(InitMsg(3, 0.0, rejoin=True))
    engine.handle(job, 0.0)
    hold = send(engine, HoldMsg(0, 5, 1, 0.1, 10.0), 10.0)
    assert hold.done and hold.result.action == SYNC


def test_a_reset_and_a_query_still_work_beside_holds() -> None:
    engine = started([0.25, 1.0])
    assert send(engine, ResetMsg(1, 2, 100.0), 100.0).result.round == 2
    job = send(engine, QueryMsg(1, 1, 1.0, 101.0), 101.0)
    assert isinstance(job.result, ResponseMsg) and job.result.action == SYNC


# --- differential: blocking vs nonblocking decisions --------------------------------------


def _caps(rng: random.Random) -> list[float]:
    p = rng.randint(2, 6)
    return [TICK * rng.choice((1, 2, 3, 5, 8, 16, 64)) for _ in range(p)]


@pytest.mark.parametrize("jitter,warm", [(0.0, False), (0.0, True), (0.05, True)])
def test_nonblocking_decides_as_blocking_within_one_iteration(jitter: float, warm: bool) -> None:
    """Same workers, the same time for the same batch (seeded by worker, round and k), no
    network and an instant server: the local iterations of every worker in every round
    after the first differ by at most one. (Cold, the first round differs: capabilities are
    unknown and the hold of the slowest is answered after its first batch only, so it may
    do one batch more; with jitter that changes its c, hence every later deadline a little,
    so the jittered runs start warm: capabilities known.)"""
    rng = random.Random(11)
    for case in range(60):
        caps, eps = _caps(rng), rng.choice((0.0, TICK / 4))
        runs = {
            protocol: simulate(
                Setup(
                    caps,
                    protocol,
                    rounds=6,
                    rtt=0.0,
                    capacity=float("inf"),
                    epsilon=eps,
                    sync_s=0.0,
                    jitter=jitter,
                    seed=case,
                    warm=warm,
                )
            )
            for protocol in ("blocking", "nonblocking")
        }
        block, nonblock = runs["blocking"].iterations, runs["nonblocking"].iterations
        assert len(block) == len(nonblock) == 6
        for t in range(1, 6):
            diff = [abs(a - b) for a, b in zip(block[t], nonblock[t], strict=True)]
            assert max(diff) <= 1, (case, caps, eps, t, block[t], nonblock[t])
        if jitter == 0.0:  # constant batch times: exactly the same decisions
            assert block[1:] == nonblock[1:], (case, caps, eps)


def test_the_differential_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline one batch early (a plausible bug) makes the decisions differ."""
    real = Scheduler.deadline

    def early(self: Scheduler, asker: WorkerRecord) -> float:
        d = real(self, asker)
        return d - 2 * asker.c if d not in (DUE, UNKNOWN) else d

    caps = [TICK, 16 * TICK]
    block = simulate(Setup(caps, "blocking", rounds=4, rtt=0.0, capacity=float("inf")))
    monkeypatch.setattr(Scheduler, "deadline", early)
    nonblock = simulate(Setup(caps, "nonblocking", rounds=4, rtt=0.0, capacity=float("inf")))
    assert (
        max(abs(a - b) for a, b in zip(block.iterations[2], nonblock.iterations[2], strict=True))
        > 1
    )
