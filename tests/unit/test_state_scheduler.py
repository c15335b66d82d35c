"""Alg. 2 (the State Server's decision) and message parsing, without Django or HTTP."""

from __future__ import annotations

import copy
import heapq
import random

import pytest

from StateServer.messages import (
    AckMsg,
    InitMsg,
    MessageError,
    QueryMsg,
    ReportMsg,
    ResetMsg,
    decode_json,
    message_to_dict,
    parse_ack,
    parse_fields,
    parse_message,
    parse_response,
)
from StateServer.scheduler import (
    COMPUTE,
    SYNC,
    NotInitializedError,
    Scheduler,
    SchedulerError,
)

# --- table-driven scenarios -----------------------------------------------------------
# Steps: ("init", n, eps) | ("rejoin", n, eps) | ("reset", rank, t, te, now)
#        | ("report", rank, k, c, te, now)
#        | ("query", rank, k, c, te, now, expected_action)
#        | ("state", rank, field, expected_value) | ("round", expected_round)

SCENARIOS: dict[str, list[tuple]] = {
    "k == 0 always computes, even for the slowest": [
        ("init", 2, 0.0),
        ("report", 1, 1, 0.1, 10.0, 10.0),
        ("query", 0, 0, 5.0, 10.0, 10.0, COMPUTE),
        ("query", 0, 1, 5.0, 15.0, 15.0, SYNC),
    ],
    "the slowest syncs after one iteration": [
        ("init", 3, 0.0),
        ("report", 0, 1, 0.1, 10.0, 10.0),
        ("report", 1, 1, 0.2, 10.0, 10.0),
        ("query", 2, 1, 1.0, 10.5, 10.5, SYNC),
        ("state", 2, "ready", True),
    ],
    "others sync once the slowest is ready": [
        ("init", 3, 0.0),
        ("report", 0, 1, 0.1, 10.0, 10.0),
        ("report", 1, 1, 0.2, 10.0, 10.0),
        ("query", 2, 1, 1.0, 10.0, 10.0, SYNC),
        ("query", 0, 2, 0.1, 10.1, 10.1, SYNC),
        ("query", 1, 2, 0.2, 10.2, 10.2, SYNC),
    ],
    "a fast worker computes while the slowest has time left": [
        ("init", 2, 0.0),
        ("report", 1, 0, 1.0, 10.0, 10.0),  # slowest started an iteration at 10.0
        ("query", 0, 1, 0.25, 10.25, 10.25, COMPUTE),  # rest 0.75 > 0.25
        ("query", 0, 2, 0.25, 10.5, 10.5, COMPUTE),  # rest 0.5 > 0.25
        ("query", 0, 3, 0.25, 10.75, 10.75, COMPUTE),  # rest 0.25 == 0.25: not greater
        ("query", 0, 4, 0.25, 10.8, 10.8, SYNC),  # rest 0.2 < 0.25
    ],
    "epsilon: c + eps == rest computes, just above syncs": [
        ("init", 2, 0.25),
        ("report", 1, 0, 1.0, 10.0, 10.0),
        ("query", 0, 1, 0.5, 10.25, 10.25, COMPUTE),  # 0.5 + 0.25 == 0.75 == rest
        ("query", 0, 2, 0.5, 10.25, 10.25 + 2**-20, SYNC),  # rest a hair below 0.75
    ],
    "epsilon large enough syncs at once": [
        ("init", 2, 2.0),
        ("report", 1, 0, 1.0, 10.0, 10.0),
        ("query", 0, 1, 0.01, 10.01, 10.01, SYNC),
    ],
    "unknown capability: a worker that never reported": [
        ("init", 3, 0.0),
        ("report", 0, 1, 0.1, 10.0, 10.0),
        ("query", 1, 1, 5.0, 10.0, 10.0, COMPUTE),  # rank 2 unknown: it may be slower
        ("report", 2, 1, 0.2, 10.0, 10.0),
        ("query", 1, 2, 5.0, 15.0, 15.0, SYNC),
    ],
    "unknown capability: reported with c == 0 (not measured yet)": [
        ("init", 2, 0.0),
        ("report", 1, 0, 0.0, 10.0, 10.0),
        ("query", 0, 1, 5.0, 15.0, 15.0, COMPUTE),
        ("state", 1, "c", 0.0),
        ("report", 1, 1, 0.5, 10.5, 10.5),
        ("query", 0, 2, 5.0, 20.0, 20.0, SYNC),
    ],
    "c == 0 in a later report keeps the known capability": [
        ("init", 1, 0.0),
        ("report", 0, 1, 0.5, 10.0, 10.0),
        ("report", 0, 2, 0.0, 10.5, 10.5),
        ("state", 0, "c", 0.5),
    ],
    "a new round clears every k and ready flag": [
        ("init", 2, 0.0),
        ("reset", 0, 1, 10.0, 10.0),
        ("reset", 1, 1, 10.0, 10.0),
        ("query", 0, 1, 0.1, 10.1, 10.1, COMPUTE),
        ("query", 1, 1, 1.0, 11.0, 11.0, SYNC),
        ("query", 0, 9, 0.1, 11.0, 11.0, SYNC),
        ("reset", 0, 2, 12.0, 12.0),
        ("round", 2),
        ("state", 0, "k", 0),
        ("state", 0, "ready", False),
        ("state", 0, "t", 2),
        ("state", 0, "te", 12.0),
        ("state", 1, "k", 0),
        ("state", 1, "ready", False),
        ("state", 1, "t", 1),
    ],
    "rounds numbered by the round just finished (1, 2, ...): the first reset clears": [
        ("init", 2, 0.0),
        ("round", 0),
        ("report", 0, 1, 0.1, 10.0, 10.0),
        ("query", 1, 1, 1.0, 11.0, 11.0, SYNC),
        ("query", 0, 3, 0.1, 11.0, 11.0, SYNC),
        ("reset", 0, 1, 12.0, 12.0),
        ("round", 1),
        ("state", 0, "ready", False),
        ("state", 1, "ready", False),
        ("reset", 1, 1, 12.0, 12.0),
        ("query", 0, 1, 0.1, 12.1, 12.1, COMPUTE),  # rest 0.9
    ],
    "upstream numbering (the round that starts: 2, 3, ...) clears as well": [
        ("init", 2, 0.0),
        ("report", 0, 1, 0.1, 10.0, 10.0),
        ("query", 1, 1, 1.0, 11.0, 11.0, SYNC),
        ("reset", 1, 2, 12.0, 12.0),
        ("round", 2),
        ("state", 1, "ready", False),
    ],
    "a reset into the same round keeps the others' ready flags": [
        ("init", 2, 0.0),
        ("report", 0, 0, 0.1, 10.0, 10.0),
        ("reset", 1, 2, 10.0, 10.0),
        ("query", 1, 1, 1.0, 11.0, 11.0, SYNC),
        ("reset", 0, 2, 10.5, 10.5),
        ("state", 1, "ready", True),
        ("query", 0, 1, 0.1, 10.6, 10.6, SYNC),
    ],
    "a slowest that has not reset into the round: others compute": [
        ("init", 2, 0.0),
        ("reset", 0, 1, 10.0, 10.0),
        ("reset", 1, 1, 10.0, 10.0),
        ("query", 0, 1, 0.1, 10.1, 10.1, COMPUTE),  # rank 1's capability is unknown
        ("query", 1, 1, 1.0, 11.0, 11.0, SYNC),
        ("query", 0, 5, 0.1, 11.0, 11.0, SYNC),
        ("reset", 0, 2, 12.0, 12.0),  # rank 0 is through the barrier first
        ("query", 0, 1, 0.1, 12.1, 12.1, COMPUTE),  # rest would be < 0, but 1 is in round 1
        ("reset", 1, 2, 12.2, 12.2),
        ("query", 0, 2, 0.1, 12.2, 12.25, COMPUTE),  # rest 0.95
        ("query", 1, 1, 1.0, 13.2, 13.2, SYNC),
        ("query", 0, 3, 0.1, 12.3, 13.2, SYNC),
    ],
    "the answer sync does not flip back in the same round": [
        ("init", 2, 0.0),
        ("report", 1, 0, 1.0, 10.0, 10.0),
        ("query", 0, 1, 0.5, 10.6, 10.6, SYNC),  # rest 0.4 < 0.5
        ("report", 1, 0, 1.0, 10.6, 10.6),  # the slowest restarted: rest back to 1.0
        ("query", 0, 1, 0.5, 10.6, 10.6, SYNC),
    ],
    "a query without reset places the worker in the current round": [
        ("init", 2, 0.0),
        ("reset", 0, 5, 10.0, 10.0),
        ("report", 0, 1, 0.1, 10.1, 10.1),
        ("query", 1, 1, 1.0, 11.0, 11.0, SYNC),
        ("state", 1, "t", 5),
    ],
    "a reset into an older round is recorded, the round stays": [
        ("init", 2, 0.0),
        ("reset", 0, 5, 10.0, 10.0),
        ("reset", 1, 3, 10.0, 10.0),
        ("round", 5),
        ("state", 1, "t", 3),
        ("report", 0, 1, 0.1, 10.1, 10.1),
        ("query", 1, 1, 1.0, 11.0, 11.0, SYNC),  # it computes, so it is in the current round
        ("state", 1, "t", 5),
    ],
    "paper 4.1: two equal stragglers, the second asks first": [
        ("init", 3, 0.0),
        ("reset", 0, 2, 100.0, 100.0),
        ("reset", 1, 2, 100.0, 100.0),
        ("reset", 2, 2, 100.0, 100.0),
        ("report", 0, 0, 0.25, 100.0, 100.0),
        ("report", 1, 0, 1.0, 100.0, 100.0),
        ("report", 2, 0, 1.0, 100.0, 100.0),
        ("query", 0, 1, 0.25, 100.25, 100.25, COMPUTE),  # rest 0.75
        ("query", 2, 1, 1.0, 101.0, 101.0, SYNC),  # not argmax by rank, still a straggler
        ("query", 0, 4, 0.25, 101.0, 101.0, SYNC),
        ("query", 1, 1, 1.0, 101.0, 101.0, SYNC),
    ],
    "paper 4.1: two equal stragglers finish at the same instant, epsilon 0": [
        # Plain argmax picks rank 1; rank 2 would see rest = c and, as c + 0 > c is false,
        # compute one more batch while everyone waits. Both are stragglers: both sync.
        ("init", 3, 0.0),
        ("reset", 0, 2, 100.0, 100.0),
        ("reset", 1, 2, 100.0, 100.0),
        ("reset", 2, 2, 100.0, 100.0),
        ("report", 0, 4, 0.25, 101.0, 101.0),
        ("report", 1, 1, 1.0, 101.0, 101.0),
        ("query", 2, 1, 1.0, 101.0, 101.0, SYNC),
        ("query", 1, 1, 1.0, 101.0, 101.0, SYNC),
        ("query", 0, 5, 0.25, 101.0, 101.0, SYNC),
    ],
    "paper 4.1: two equal stragglers, a fast worker waits for the one still busy": [
        ("init", 3, 0.0),
        ("reset", 0, 2, 100.0, 100.0),
        ("reset", 1, 2, 100.0, 100.0),
        ("reset", 2, 2, 100.5, 100.5),  # rank 2 started half a second later
        ("report", 0, 0, 0.25, 100.0, 100.0),
        ("report", 1, 0, 1.0, 100.0, 100.0),
        ("report", 2, 0, 1.0, 100.5, 100.5),
        ("query", 1, 1, 1.0, 101.0, 101.0, SYNC),
        # rank 1 is ready, but rank 2 will reach the barrier 0.5 s later: keep computing
        ("query", 0, 4, 0.25, 101.0, 101.0, COMPUTE),
        ("query", 0, 5, 0.25, 101.25, 101.26, SYNC),  # rest 0.24 < 0.25
        ("query", 2, 1, 1.0, 101.5, 101.5, SYNC),
    ],
    "after a restart a worker without a record may be at the barrier: k >= 1 syncs": [
        ("rejoin", 3, 0.0),  # the server restarted; rank 2 was told sync by the lost one
        ("reset", 0, 5, 10.0, 10.0),
        ("query", 0, 0, 0.1, 10.0, 10.0, COMPUTE),  # k == 0 still computes
        ("query", 0, 1, 0.1, 10.1, 10.1, SYNC),  # ranks 1, 2 have no record
        ("reset", 1, 5, 10.0, 10.15),
        ("query", 1, 1, 0.1, 10.2, 10.2, SYNC),  # rank 2 still has none
        ("reset", 2, 6, 10.3, 10.3),  # the barrier is passed: rank 2 starts round 6
        ("round", 6),
        ("reset", 0, 6, 10.3, 10.3),
        ("reset", 1, 6, 10.3, 10.3),
        # every worker has a record again: Alg. 2 as in a new run (rank 2's c is unknown)
        ("query", 0, 1, 0.1, 10.4, 10.4, COMPUTE),
        ("report", 2, 0, 1.0, 10.3, 10.4),
        ("query", 0, 2, 0.1, 10.5, 10.5, COMPUTE),  # rest 0.8 > 0.1
        ("query", 0, 9, 0.1, 11.25, 11.25, SYNC),  # rest 0.05 < 0.1
        ("query", 2, 1, 1.0, 11.3, 11.3, SYNC),
    ],
    "a plain init with a worker missing computes (it is not at a barrier yet)": [
        ("init", 3, 0.0),
        ("reset", 0, 5, 10.0, 10.0),
        ("query", 0, 1, 0.1, 10.1, 10.1, COMPUTE),
    ],
    "a rejoin into a run that never restarted is not recovering": [
        ("init", 3, 0.0),
        ("report", 0, 1, 0.1, 10.0, 10.0),
        ("rejoin", 3, 0.0),
        ("query", 0, 2, 0.1, 10.1, 10.1, COMPUTE),  # ranks 1, 2 unknown: compute as before
    ],
}


def run_steps(steps: list[tuple]) -> Scheduler:
    """Apply the steps to a fresh scheduler, asserting every expectation."""
    sched = Scheduler()
    for i, step in enumerate(steps):
        op, args = step[0], step[1:]
        where = f"step {i}: {step}"
        if op == "init":
            sched.init(*args)
        elif op == "rejoin":
            sched.rejoin(*args)
        elif op == "reset":
            sched.reset(*args)
        elif op == "report":
            sched.report(*args)
        elif op == "query":
            assert sched.query(*args[:-1]) == args[-1], where
        elif op == "state":
            rank, name, value = args
            assert getattr(sched.db.records[rank], name) == value, where
        elif op == "round":
            assert sched.db.round == args[0], where
        else:
            raise AssertionError(f"bad step {step}")
    return sched


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    run_steps(SCENARIOS[name])


def test_a_wrong_expectation_fails() -> None:
    """The runner really checks (guards against a vacuous table)."""
    with pytest.raises(AssertionError):
        run_steps([("init", 1, 0.0), ("query", 0, 0, 1.0, 1.0, 1.0, SYNC)])


def test_query_before_init_and_rank_range_leave_state_unchanged() -> None:
    sched = Scheduler()
    with pytest.raises(NotInitializedError):
        sched.query(0, 1, 0.1, 1.0, 1.0)
    with pytest.raises(NotInitializedError):
        sched.reset(0, 1, 1.0, 1.0)
    assert sched.db.records == {} and not sched.db.initialized
    sched.init(2, 0.0)
    with pytest.raises(SchedulerError, match="rank 2 out of range"):
        sched.query(2, 1, 0.1, 1.0, 1.0)
    assert sched.db.records == {}


def test_init_forgets_the_previous_run() -> None:
    sched = run_steps([("init", 2, 0.0), ("reset", 0, 7, 1.0, 1.0)])
    sched.init(3, 0.5)
    assert (sched.db.round, sched.db.records, sched.db.num_workers) == (0, {}, 3)


def test_rejoin_on_an_empty_server_initialises_it() -> None:
    sched = Scheduler()
    assert sched.rejoin(3, 0.5) is True
    db = sched.db
    assert (db.initialized, db.num_workers, db.epsilon, db.round) == (True, 3, 0.5, 0)
    assert db.records == {} and db.rejoined and db.recovering
    sched.reset(2, 7, 10.0, 10.0)  # worker messages are accepted now
    assert sched.db.round == 7 and sched.snapshot(10.0)["recovering"] is True


def test_rejoin_with_the_same_parameters_keeps_every_record() -> None:
    sched = run_steps(
        [
            ("init", 3, 0.5),
            ("reset", 0, 4, 10.0, 10.0),
            ("reset", 1, 4, 10.0, 10.0),
            ("query", 0, 2, 0.1, 10.2, 10.2, COMPUTE),
            ("query", 1, 1, 1.0, 11.0, 11.0, COMPUTE),  # rank 2 unknown
        ]
    )
    before = copy.deepcopy(sched.db)
    assert sched.rejoin(3, 0.5) is False
    assert sched.db == before and sched.db.records[1].c == 1.0
    assert not sched.db.rejoined  # initialised by a plain init: no recovery mode
    # after a restart: the second worker to re-register keeps what the first one sent
    sched = Scheduler()
    assert sched.rejoin(3, 0.0) is True
    sched.reset(0, 5, 9.0, 10.0)
    sched.report(0, 2, 0.1, 10.2, 10.2)
    assert sched.rejoin(3, 0.0) is False
    sched.reset(1, 5, 9.0, 10.3)
    assert sorted(sched.db.records) == [0, 1] and sched.db.round == 5
    assert (sched.db.records[0].k, sched.db.records[0].c) == (2, 0.1)


@pytest.mark.parametrize("num_workers,epsilon", [(2, 0.5), (4, 0.5), (3, 0.25)])
def test_rejoin_with_other_parameters_is_a_400_and_changes_nothing(
    num_workers: int, epsilon: float
) -> None:
    sched = run_steps([("init", 3, 0.5), ("reset", 1, 4, 10.0, 10.0)])
    before = copy.deepcopy(sched.db)
    with pytest.raises(SchedulerError, match="rejoin refused") as err:
        sched.rejoin(num_workers, epsilon)
    assert err.value.status == 400 and not isinstance(err.value, NotInitializedError)
    assert f"num_workers {num_workers} and epsilon {epsilon!r}" in str(err.value)
    assert sched.db == before


def test_plain_init_still_forgets_after_a_rejoin() -> None:
    sched = Scheduler()
    sched.rejoin(2, 0.0)
    sched.reset(0, 9, 1.0, 1.0)
    sched.init(2, 0.0)
    db = sched.db
    assert (db.round, db.records, db.rejoined, db.recovering) == (0, {}, False, False)


def test_snapshot_and_upstream_view() -> None:
    sched = run_steps(
        [("init", 2, 0.5), ("reset", 1, 1, 10.0, 10.0), ("report", 1, 3, 0.2, 10.6, 11.0)]
    )
    snap = sched.snapshot(12.0)
    assert snap["workers"][0]["reported"] is False and snap["workers"][0]["last_seen"] is None
    assert snap["workers"][1] | {} == {
        "rank": 1,
        "round": 1,
        "k": 3,
        "c": 0.2,
        "te": 10.6,
        "ready": False,
        "told": False,
        "last_seen": 11.0,
        "reported": True,
    }
    assert snap["slowest"] is None  # rank 0 unknown
    assert sched.upstream_view() == {
        "num_workers": 2,
        "t": 1,
        "epsilon": 0.5,
        "records": [[0, 0, 0.0, 0.0, False, 1], [1, 3, 0.2, 10.6, False, 1]],
    }


# --- liveness: simulated runs with a synchronisation barrier ----------------------------


class _SimulatedRun:
    """The state of :func:`simulate`'s workers and server between events."""

    def __init__(self, caps: list[float], eps: float, restarts: tuple[float, ...]) -> None:
        self.caps, self.eps, self.n = caps, eps, len(caps)
        self.sched = Scheduler()
        self.sched.init(self.n, eps)
        self.k, self.c_known, self.te = [0] * self.n, [0.0] * self.n, [0.0] * self.n
        self.round_of, self.round_start = [0] * self.n, [0.0] * self.n
        self.pending = sorted(restarts)

    def call(self, method: str, r: int, now: float, *args: object) -> object:
        """``method`` on the server; refused as not initialised, rank ``r`` re-registers as
        the ESync strategy does (rejoin, reset into its round) and repeats it."""
        if self.pending and now >= self.pending[0]:
            self.pending.pop(0)
            self.sched = Scheduler()  # the server lost its state
        try:
            return getattr(self.sched, method)(*args, now)
        except NotInitializedError:
            self.sched.rejoin(self.n, self.eps)
            self.sched.reset(r, self.round_of[r], self.round_start[r], now)
            return getattr(self.sched, method)(*args, now)

    def step(self, now: float, r: int, kind: str, t: int) -> tuple[float, int, str, int] | None:
        """Rank ``r``'s event: its next event, or None when it reached the barrier."""
        if kind == "reset":
            self.round_of[r], self.round_start[r] = t, now
            self.call("reset", r, now, r, t, now)
            self.k[r], self.te[r] = 0, now
            return (now, r, "query", t)
        if self.call("query", r, now, r, self.k[r], self.c_known[r], self.te[r]) == COMPUTE:
            self.k[r] += 1
            self.c_known[r] = self.caps[r]
            self.te[r] = now + self.caps[r]
            return (self.te[r], r, "query", t)
        return None


def simulate(
    caps: list[float],
    eps: float,
    rounds: int,
    start_lag: list[float],
    reset_lag: float,
    seed: int,
    restarts: tuple[float, ...] = (),
) -> list[list[int]]:
    """Discrete-event run of ESync workers; returns the k of every worker in every round.

    A worker queries before each batch; ``compute`` costs it ``caps[r]`` seconds, ``sync``
    sends it to a barrier; when all are there, each resets into the next round after a
    random lag. Fails if the run needs absurdly many events (a livelock).

    At each time in ``restarts`` the server loses its state (a new Scheduler); a worker
    whose message is refused as not initialised re-registers as the ESync strategy does
    (rejoin, reset into its round with the round's start time) and repeats the message.
    """
    rng = random.Random(seed)
    run = _SimulatedRun(caps, eps, restarts)
    n = run.n
    arrivals: dict[int, float] = {}
    per_round: list[list[int]] = []
    events = [(start_lag[r], r, "reset", 1) for r in range(n)]
    heapq.heapify(events)
    budget = 200 * rounds * n
    while events and len(per_round) < rounds:
        budget -= 1
        assert budget > 0, f"livelock: rounds done {per_round}"
        now, r, kind, t = heapq.heappop(events)
        following = run.step(now, r, kind, t)
        if following is not None:
            heapq.heappush(events, following)
            continue
        arrivals[r] = now
        if len(arrivals) == n:
            per_round.append(list(run.k))
            done = max(arrivals.values())
            arrivals.clear()
            for i in range(n):
                heapq.heappush(events, (done + rng.uniform(0, reset_lag), i, "reset", t + 1))
    assert len(per_round) == rounds
    return per_round


@pytest.mark.parametrize(
    "caps,eps",
    [
        ([0.01, 0.02, 0.05], 0.0),
        ([0.01, 0.05, 0.05], 0.0),  # two equal stragglers
        ([0.03, 0.03, 0.03, 0.03], 0.0),  # all equal
        ([0.002, 0.01, 0.011, 0.3], 0.005),
    ],
)
def test_runs_never_deadlock_and_the_slowest_does_one_iteration(
    caps: list[float], eps: float
) -> None:
    slow = max(caps)
    for seed in range(5):
        lag = [random.Random(seed).uniform(0, 0.05) for _ in caps]
        ks = simulate(caps, eps, rounds=30, start_lag=lag, reset_lag=0.004, seed=seed)
        for rnd in ks[1:]:  # round 1 may wait for capabilities to be known
            assert all(k >= 1 for k in rnd)
            for r, cap in enumerate(caps):
                if cap == slow:
                    assert rnd[r] == 1, (seed, ks)
                else:  # a fast worker fills the straggler's time, at most about one more
                    assert rnd[r] <= slow / cap + 2, (seed, ks)


@pytest.mark.parametrize(
    "caps,eps",
    [([0.01, 0.02, 0.05], 0.0), ([0.01, 0.05, 0.05], 0.0), ([0.002, 0.01, 0.011, 0.3], 0.005)],
)
def test_runs_survive_server_restarts(caps: list[float], eps: float) -> None:
    """The server loses its state at many instants (some while workers wait at the
    barrier): every run still ends all its rounds, and Alg. 2 is back to normal after."""
    slow = max(caps)
    for seed in range(8):
        rng = random.Random(seed)
        restarts = tuple(sorted(rng.uniform(0.2, 1.0) * slow * 30 for _ in range(3)))
        lag = [rng.uniform(0, 0.05) for _ in caps]
        ks = simulate(caps, eps, 40, lag, 0.004, seed, restarts=restarts)
        assert all(k >= 1 for rnd in ks for k in rnd)
        for rnd in ks[-3:]:  # the last rounds: a few after the last restart
            for r, cap in enumerate(caps):
                assert rnd[r] == 1 if cap == slow else rnd[r] <= slow / cap + 2, (seed, ks)


# --- message parsing ------------------------------------------------------------------

VALID = [
    ({"msg_type": "reset", "num_workers": 3, "epsilon": 0.5}, InitMsg(3, 0.5)),
    ({"msg_type": "init", "num_workers": 3, "epsilon": 0}, InitMsg(3, 0.0)),
    ({"msg_type": "init", "num_workers": 3, "epsilon": 0, "rejoin": True}, InitMsg(3, 0.0, True)),
    ({"msg_type": "reset", "num_workers": 2, "epsilon": 0.5, "rejoin": False}, InitMsg(2, 0.5)),
    ({"msg_type": "reset", "rank": 1, "t": 2, "te": 1.5}, ResetMsg(1, 2, 1.5)),
    ({"msg_type": "report", "rank": 0, "k": 0, "c": 0, "te": 0}, ReportMsg(0, 0, 0.0, 0.0)),
    ({"msg_type": "query", "rank": 2, "k": 4, "c": 0.01, "te": 1.7e9}, QueryMsg(2, 4, 0.01, 1.7e9)),
]


@pytest.mark.parametrize("obj,expected", VALID)
def test_parse_valid(obj: dict, expected: object) -> None:
    assert parse_message(obj) == expected


INVALID = [
    ([], "must be a JSON object"),
    ({}, "missing field 'msg_type'"),
    ({"msg_type": "hello"}, "unknown msg_type"),
    ({"msg_type": 3}, "unknown msg_type"),
    ({"msg_type": "response", "rank": 0, "round": 1, "action": "sync"}, "sent by the server"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": 0.1}, "missing field(s) 'te'"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": 1, "x": 1}, "unexpected"),
    ({"msg_type": "reset", "rank": 0, "t": 1, "te": 1, "epsilon": 1}, "init message"),
    ({"msg_type": "query", "rank": "0", "k": 1, "c": 0.1, "te": 1}, "'rank' must be an int"),
    ({"msg_type": "query", "rank": True, "k": 1, "c": 0.1, "te": 1}, "'rank' must be an int"),
    ({"msg_type": "query", "rank": 0, "k": 1.0, "c": 0.1, "te": 1}, "'k' must be an integer"),
    ({"msg_type": "query", "rank": 0, "k": -1, "c": 0.1, "te": 1}, "'k' must be in"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": -0.1, "te": 1}, "'c' must be in"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": float("nan"), "te": 1}, "'c' must be finite"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": float("inf"), "te": 1}, "'c' must be finite"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": "0.1", "te": 1}, "'c' must be a number"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": None}, "'te' must be a number"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": 1e12}, "'te' must be in"),
    ({"msg_type": "query", "rank": 10_000, "k": 1, "c": 0.1, "te": 1}, "'rank' must be in"),
    ({"msg_type": "reset", "num_workers": 10_001, "epsilon": 0}, "'num_workers' must be in"),
    ({"msg_type": "reset", "num_workers": 0, "epsilon": 0}, "'num_workers' must be in"),
    ({"msg_type": "reset", "num_workers": 2, "epsilon": -1}, "'epsilon' must be in"),
    ({"msg_type": "reset", "rank": 0, "t": -1, "te": 1}, "'t' must be in"),
    ({"msg_type": "init", "num_workers": 2, "epsilon": 0, "rejoin": 1}, "'rejoin' must be true"),
    ({"msg_type": "init", "num_workers": 2, "epsilon": 0, "rejoin": "true"}, "'rejoin' must be"),
    ({"msg_type": "init", "num_workers": 2, "epsilon": 0, "rejoin": None}, "'rejoin' must be"),
    ({"msg_type": "init", "rejoin": True}, "init message: missing field(s) 'num_workers'"),
    ({"msg_type": "reset", "rank": 0, "t": 1, "te": 1, "rejoin": True}, "unexpected field(s) 're"),
    ({"msg_type": "query", "rank": 0, "k": 1, "c": 0.1, "te": 1, "rejoin": True}, "unexpected"),
]


@pytest.mark.parametrize("obj,needle", INVALID)
def test_parse_invalid(obj: object, needle: str) -> None:
    with pytest.raises(MessageError) as err:
        parse_message(obj)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "body,needle",
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (b'{"c": NaN}', "NaN is not a number"),
        (b'{"c": Infinity}', "Infinity is not a number"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "exceeds"),
        (b"[" * 60_000, "nested too deeply"),
        (b'{"k": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_decode_json_rejects(body: bytes, needle: str) -> None:
    with pytest.raises(MessageError) as err:
        decode_json(body)
    assert needle in str(err.value)


def test_parse_fields_upstream_forms() -> None:
    assert parse_fields("query", {"r": "1", "k": "2", "c": "0.5", "te": "3"}) == QueryMsg(
        1, 2, 0.5, 3.0
    )
    assert parse_fields("init", {"num_workers": "4", "epsilon": "0.5"}) == InitMsg(4, 0.5)
    for value, rejoin in [("true", True), ("1", True), (" False ", False), ("0", False)]:
        init = {"num_workers": "4", "epsilon": "0.5", "rejoin": value}
        assert parse_fields("init", init) == InitMsg(4, 0.5, rejoin)
    for value in (True, 1, 0):  # an upstream JSON body
        init = {"num_workers": 4, "epsilon": 0.5, "rejoin": value}
        assert parse_fields("init", init) == InitMsg(4, 0.5, bool(value))
    for value in ("yes", "", 2, None):
        with pytest.raises(MessageError, match="'rejoin' must be true or false"):
            parse_fields("init", {"num_workers": "4", "epsilon": "0.5", "rejoin": value})
    assert parse_fields("reset", {"r": 0, "t": 2, "te": 1.0}) == ResetMsg(0, 2, 1.0)
    for fields, needle in [
        ({"r": "x", "k": "2", "c": "0.5", "te": "3"}, "'rank' must be an int"),
        ({"r": "1", "k": "2", "c": "nan", "te": "3"}, "'c' must be finite"),
        ({"r": "1", "k": "2", "c": "inf", "te": "3"}, "'c' must be finite"),
        ({"r": "1", "k": "2.5", "c": "1", "te": "3"}, "'k' must be an int"),
        ({"rank": "1", "k": "2", "c": "1", "te": "3"}, "names the rank 'r'"),
        ({"r": "1", "k": "2", "c": "1"}, "missing field(s) 'te'"),
    ]:
        with pytest.raises(MessageError) as err:
            parse_fields("query", fields)
        assert needle in str(err.value)


def test_parse_response() -> None:
    msg = parse_response({"msg_type": "response", "rank": 1, "round": 3, "action": "sync"})
    assert (msg.rank, msg.round, msg.action) == (1, 3, "sync")
    assert msg.to_dict() == {"msg_type": "response", "rank": 1, "round": 3, "action": "sync"}
    with pytest.raises(MessageError, match="action"):
        parse_response({"msg_type": "response", "rank": 1, "round": 3, "action": "wait"})


def test_parse_ack() -> None:
    for ack in (AckMsg(of="init", round=0), AckMsg(of="reset", round=3, rank=1)):
        assert parse_ack(ack.to_dict(), ack.of) == ack
    assert parse_ack({"msg_type": "ack", "of": "report", "round": 2, "rank": 0}).rank == 0
    for obj, of, needle in [
        ([], None, "expected an ack message, got array"),
        ({"msg_type": "response", "rank": 0, "round": 1}, None, 'msg_type "response"'),
        ({"of": "init", "round": 0}, None, "no msg_type"),
        ({"msg_type": "ack", "of": "query", "round": 0, "rank": 0}, None, "'of' must be"),
        ({"msg_type": "ack", "of": "reset", "round": 0, "rank": 0}, "report", "ack of report"),
        ({"msg_type": "ack", "of": "init", "round": -1}, "init", "'round' must be in"),
        ({"msg_type": "ack", "of": "init", "round": 0, "rank": 0}, "init", "'rank'"),
        ({"msg_type": "ack", "of": "reset", "round": 0}, "reset", "'rank' must be an integer"),
    ]:
        with pytest.raises(MessageError) as err:
            parse_ack(obj, of)
        assert needle in str(err.value), (obj, str(err.value))


@pytest.mark.parametrize(
    "msg",
    [
        InitMsg(3, 0.5),
        InitMsg(3, 0.5, rejoin=True),
        ResetMsg(1, 2, 3.0),
        ReportMsg(0, 4, 0.1, 5.0),
        QueryMsg(2, 1, 0.2, 6.0),
    ],
)
def test_message_to_dict_round_trip(msg: object) -> None:
    wire = message_to_dict(msg)
    assert next(iter(wire)) == "msg_type"
    assert parse_message(wire) == msg


def test_a_plain_init_is_sent_as_upstream_sends_it() -> None:
    """``rejoin`` goes on the wire only when true: a plain init stays the upstream message."""
    assert message_to_dict(InitMsg(3, 0.5)) == {
        "msg_type": "reset",
        "num_workers": 3,
        "epsilon": 0.5,
    }
    assert message_to_dict(InitMsg(3, 0.5, rejoin=True))["rejoin"] is True
