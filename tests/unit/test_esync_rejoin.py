"""ESync's State Server protocol (trainer.pacing.StateServerPacing) re-registers with a
State Server that lost its state (no cluster)."""

from __future__ import annotations

import time

import pytest

from trainer.pacing import StateServerPacing
from trainer.state_client import StateServerError, StateServerNotInitialised
from trainer.types import LocalProgress, RoundStats


class FakeClient:
    """Records every call; ``fail[name]`` calls of ``name`` answer "not initialised" (409)."""

    def __init__(self, fail: dict[str, int] | None = None, rejoin_s: float = 0.0) -> None:
        self.calls: list[tuple] = []
        self.fail = dict(fail or {})
        self.rejoin_s = rejoin_s

    def _call(self, name: str, *args: object) -> None:
        self.calls.append((name, *args))
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise StateServerNotInitialised(
                "POST http://x/msg/ -> HTTP 409: not initialised", status=409
            )

    def init(self, num_workers: int, epsilon: float) -> None:
        self._call("init", num_workers, epsilon)

    def rejoin(self, num_workers: int, epsilon: float) -> None:
        time.sleep(self.rejoin_s)
        self._call("rejoin", num_workers, epsilon)

    def reset(self, rank: int, t: int, te: float) -> None:
        self._call("reset", rank, t, te)

    def query(self, rank: int, k: int, c: float, te: float) -> str:
        self._call("query", rank, k, c, te)
        return "sync"


def make(client: FakeClient) -> StateServerPacing:
    """ESync's State Server protocol (its pacing policy) as worker 2 of 3 uses it."""
    pacing = StateServerPacing(client, 64, epsilon=0.25, protocol="blocking", fill_last_batch=False)
    pacing.rank, pacing.num_workers = 2, 3  # what setup() takes from the KVStore
    return pacing


def test_a_query_refused_as_not_initialised_re_registers_and_is_repeated() -> None:
    client = FakeClient({"query": 1}, rejoin_s=0.02)
    strategy = make(client)
    start_te = strategy.round_te
    stats = RoundStats()
    progress = LocalProgress(k=3, c=0.1, te=123.0)
    assert strategy.should_sync(progress, stats) is True
    assert client.calls == [
        ("query", 2, 3, 0.1, 123.0),
        ("rejoin", 3, 0.25),
        ("reset", 2, 1, start_te),  # round 1, started when the strategy was set up
        ("query", 2, 3, 0.1, 123.0),
    ]
    assert stats.extra == {"state_rejoins": 1}
    assert stats.query_s >= 0.02  # the re-registration is State Server time
    # the next query goes through at once: no second re-registration
    assert strategy.should_sync(LocalProgress(k=4, c=0.1, te=124.0), stats) is True
    assert len(client.calls) == 5 and stats.extra == {"state_rejoins": 1}


def test_a_reset_refused_re_registers_into_the_round_it_starts() -> None:
    client = FakeClient({"reset": 1})
    strategy = make(client)
    stats = RoundStats()
    strategy.begin_round(7, stats)
    te = strategy.round_te
    assert strategy.round_no == 7 and te > 0
    assert client.calls == [
        ("reset", 2, 7, te),
        ("rejoin", 3, 0.25),
        ("reset", 2, 7, te),
        ("reset", 2, 7, te),
    ]
    assert stats.extra["state_rejoins"] == 1
    # a later restart in the same round re-registers with that round and its start time
    client.fail["query"] = 1
    client.calls.clear()
    strategy.should_sync(LocalProgress(k=1, c=0.1, te=te + 1), stats)
    assert client.calls[1:3] == [("rejoin", 3, 0.25), ("reset", 2, 7, te)]
    assert stats.extra["state_rejoins"] == 2


def test_k_zero_asks_nothing() -> None:
    client = FakeClient({"query": 5})
    assert make(client).should_sync(LocalProgress(k=0), RoundStats()) is False
    assert client.calls == []


def test_a_server_that_keeps_losing_its_state_fails_after_a_few_attempts() -> None:
    client = FakeClient({"query": 100})
    strategy = make(client)
    stats = RoundStats()
    with pytest.raises(StateServerNotInitialised):
        strategy.should_sync(LocalProgress(k=1, c=0.1, te=1.0), stats)
    assert [c[0] for c in client.calls].count("query") == StateServerPacing.MAX_REJOINS_PER_CALL + 1


def test_a_refused_rejoin_and_other_errors_are_not_retried() -> None:
    class Refusing(FakeClient):
        def rejoin(self, num_workers: int, epsilon: float) -> None:
            self.calls.append(("rejoin", num_workers, epsilon))
            raise StateServerError("HTTP 400: rejoin refused", status=400)

    client = Refusing({"query": 1})
    with pytest.raises(StateServerError, match="rejoin refused"):
        make(client).should_sync(LocalProgress(k=1, c=0.1, te=1.0), RoundStats())
    assert [c[0] for c in client.calls] == ["query", "rejoin"]

    class Forbidden(FakeClient):
        def query(self, rank: int, k: int, c: float, te: float) -> str:
            self.calls.append(("query",))
            raise StateServerError("HTTP 403: token", status=403)

    client = Forbidden()
    with pytest.raises(StateServerError, match="403"):
        make(client).should_sync(LocalProgress(k=1, c=0.1, te=1.0), RoundStats())
    assert client.calls == [("query",)]
