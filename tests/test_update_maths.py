"""Every mode's update, fed known numbers, against values computed by hand (no cluster).

A strategy talks to its KVStore through ``init``/``push``/``pull`` (and ``set_optimizer`` for
the asynchronous modes). ``SumStore`` stands in for a dist_sync store without an optimizer seen
from one worker: a pull returns this worker's push plus what the other workers push in the same
round (given by the test). ``ServerStore`` stands in for a dist_async store: each push runs the
server optimizer at once. Expected values are plain numpy arithmetic written out in the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import mxnet as mx
import numpy as np
import pytest

from trainer import aggregate, registry
from trainer.modes import ASGD, DCASGD, SSGD, ESync, Standalone
from trainer.records import RoundStats
from trainer.strategy import Model, Progress

W0 = [np.array([[1.0, -2.0], [0.5, 4.0]]), np.array([0.25, -1.0])]
AUX0 = [np.array([1.0, 3.0])]  # a BatchNorm running statistic
BATCH = 4


class SumStore:
    """dist_sync without an optimizer, from worker ``rank``'s side."""

    def __init__(self, num_workers: int, others: Callable[[int], list[np.ndarray]] | None = None):
        self.rank, self.num_workers = 0, num_workers
        self.others = others or (lambda key: [])  # key -> what the other workers push
        self.stored: dict[int, np.ndarray] = {}
        self.pushes = 0

    def init(self, keys, values) -> None:
        for key, value in zip(keys, values, strict=True):
            self.stored[key] = value.asnumpy().copy()

    def push(self, keys, values) -> None:
        self.pushes += 1
        for key, value in zip(keys, values, strict=True):
            self.stored[key] = value.asnumpy() + sum(self.others(key), np.zeros(value.shape))

    def pull(self, keys, out) -> None:
        for key, target in zip(keys, out, strict=True):
            target[:] = self.stored[key]


class ServerStore(SumStore):
    """dist_async with a server optimizer: a push updates the stored weights at once."""

    def set_optimizer(self, optimizer: mx.optimizer.Optimizer) -> None:
        self.optimizer = optimizer
        self.updater = mx.optimizer.get_updater(optimizer)

    def _barrier(self) -> None:
        pass

    def push(self, keys, values) -> None:
        self.pushes += 1
        for key, grad in zip(keys, values, strict=True):
            weight = mx.nd.array(self.stored[key])
            self.updater(key, grad, weight)
            self.stored[key] = weight.asnumpy()


class FakeClient:
    """The State Server client as ESync uses it; answers from a list."""

    def __init__(self, answers: list[str] = ()) -> None:
        self.answers = list(answers)
        self.calls: list[tuple] = []

    def init(self, num_workers: int, epsilon: float) -> None:
        self.calls.append(("init", num_workers, epsilon))

    def query(self, rank: int, k: int, c: float, te: float) -> str:
        self.calls.append(("query", rank, k))
        return self.answers.pop(0)

    def reset(self, rank: int, t: int, te: float) -> None:
        self.calls.append(("reset", rank, t))


def make_model() -> Model:
    nd = [mx.nd.array(w) for w in W0]
    return Model(None, mx.cpu(), nd, [mx.nd.zeros(w.shape) for w in W0], [mx.nd.array(AUX0[0])])


def set_grads(model: Model, grads: list[np.ndarray]) -> None:
    for target, g in zip(model.grads, grads, strict=True):
        target[:] = g


def params(model: Model) -> list[np.ndarray]:
    return [w.asnumpy() for w in model.params]


def assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


G1 = [np.array([[4.0, 0.0], [-8.0, 2.0]]), np.array([1.0, 3.0])]
G2 = [np.array([[-4.0, 2.0], [1.0, 1.0]]), np.array([-2.0, 0.5])]


def test_sgd_step_is_w_minus_lr_times_mean_gradient() -> None:
    model = make_model()
    set_grads(model, G1)
    aggregate.sgd_step(model.params, model.grads, lr=0.5, rescale=1.0 / BATCH)
    assert_close(params(model), [w - 0.5 * g / BATCH for w, g in zip(W0, G1, strict=True)])


def test_standalone_steps_after_every_batch() -> None:
    mode, model = Standalone(0.1, BATCH), make_model()
    mode.setup(model, None)
    set_grads(model, G1)
    mode.local_update(model)
    assert_close(params(model), [w - 0.1 * g / BATCH for w, g in zip(W0, G1, strict=True)])
    assert mode.should_sync(Progress(k=1), RoundStats()) and not mode.should_sync(
        Progress(k=0), RoundStats()
    )
    assert mode.synchronise(model, RoundStats(), True) is True


def _other_worker(values: dict[int, np.ndarray]) -> Callable[[int], list[np.ndarray]]:
    return lambda key: [values[key]]


def test_ssgd_applies_lr_times_the_sum_of_mean_gradients_and_averages_batchnorm() -> None:
    other_aux, other_stop = np.array([3.0, 5.0]), np.array([0.0])
    kv = SumStore(2, _other_worker({0: G2[0], 1: G2[1], 2: other_aux, 3: other_stop}))
    mode, model = SSGD(0.1, BATCH), make_model()
    mode.setup(model, kv)
    set_grads(model, G1)
    stats = RoundStats()
    stop = mode.synchronise(model, stats, stop=False)
    want = [w - 0.1 * (g1 + g2) / BATCH for w, g1, g2 in zip(W0, G1, G2, strict=True)]
    assert_close(params(model), want)
    assert_close([model.aux[0].asnumpy()], [(AUX0[0] + other_aux) / 2])
    assert stop is False and stats.bytes_pushed == stats.bytes_pulled == 4 * (4 + 2 + 2 + 1)


def test_a_stop_vote_of_any_worker_stops_every_worker() -> None:
    kv = SumStore(2, _other_worker({0: G2[0], 1: G2[1], 2: AUX0[0], 3: np.array([1.0])}))
    mode, model = SSGD(0.1, BATCH), make_model()
    mode.setup(model, kv)
    assert mode.synchronise(model, RoundStats(), stop=False) is True


def _esync(num_workers: int, others, global_lr: float, answers: list[str]):
    client = FakeClient(answers)
    mode, model = ESync(0.2, BATCH, global_lr, client, epsilon=0.5), make_model()
    mode.setup(model, SumStore(num_workers, others))
    return mode, model, client


def test_esync_global_step_is_global_lr_times_the_mean_delta() -> None:
    other_delta = [np.array([[0.5, 0.5], [-1.0, 0.0]]), np.array([2.0, -2.0])]
    other_aux = np.array([5.0, 7.0])
    others = _other_worker({0: other_delta[0], 1: other_delta[1], 2: other_aux, 3: np.zeros(1)})
    mode, model, client = _esync(2, others, global_lr=0.5, answers=["compute", "sync"])
    assert client.calls == [("init", 2, 0.5)]
    replica = [w.copy() for w in W0]
    for grads in (G1, G2):  # two local steps on the replica
        set_grads(model, grads)
        mode.local_update(model)
        replica = [w - 0.2 * g / BATCH for w, g in zip(replica, grads, strict=True)]
    assert_close(params(model), replica)
    stop = mode.synchronise(model, RoundStats(), stop=False)
    mine = [r - w for r, w in zip(replica, W0, strict=True)]
    want = [w + 0.5 * (d1 + d2) / 2 for w, d1, d2 in zip(W0, mine, other_delta, strict=True)]
    assert_close(params(model), want)
    assert_close([g.asnumpy() for g in mode.global_params], want)  # replica restarts from w
    assert_close([model.aux[0].asnumpy()], [(AUX0[0] + other_aux) / 2])
    assert stop is False


def test_esync_asks_the_state_server_from_the_second_iteration_on() -> None:
    mode, model, client = _esync(1, None, 1.0, answers=["compute", "sync"])
    stats = RoundStats()
    assert mode.should_sync(Progress(k=0), stats) is False  # Alg. 2 says compute; no request
    assert mode.should_sync(Progress(k=1), stats) is False
    assert mode.should_sync(Progress(k=2), stats) is True
    mode.begin_round(7, stats)
    assert client.calls[1:] == [("query", 0, 1), ("query", 0, 2), ("reset", 0, 7)]
    assert stats.query_s > 0


def test_one_worker_esync_with_global_lr_1_equals_local_sgd() -> None:
    mode, model, _ = _esync(1, None, 1.0, answers=[])
    local, local_model = Standalone(0.2, BATCH), make_model()
    for grads in (G1, G2, G1):
        for m, strategy in ((model, mode), (local_model, local)):
            set_grads(m, grads)
            strategy.local_update(m)
    mode.synchronise(model, RoundStats(), stop=False)
    assert_close(params(model), params(local_model))


def _async_run(cls, grads_seq: list[list[np.ndarray]]) -> tuple[Model, ServerStore]:
    kv = ServerStore(1)
    mode, model = cls(0.1, BATCH), make_model()
    mode.setup(model, kv)
    for grads in grads_seq:
        set_grads(model, grads)
        mode.synchronise(model, RoundStats(), stop=False)
    return model, kv


def test_asgd_server_runs_sgd_on_every_push() -> None:
    model, kv = _async_run(ASGD, [G1, G2])
    want = [w - 0.1 * (g1 + g2) / BATCH for w, g1, g2 in zip(W0, G1, G2, strict=True)]
    assert_close(params(model), want)
    assert type(kv.optimizer) is mx.optimizer.SGD and kv.pushes == 2


def test_dcasgd_server_compensates_the_delay() -> None:
    model, kv = _async_run(DCASGD, [G1, G2])
    assert type(kv.optimizer) is mx.optimizer.DCASGD
    lamda = kv.optimizer.lamda
    # first push: no earlier weight, plain SGD; second: g + lamda * g * g * (w - w_prev)
    w1 = [w - 0.1 * g / BATCH for w, g in zip(W0, G1, strict=True)]
    want = []
    for w_prev, w, g in zip(W0, w1, G2, strict=True):
        g = g / BATCH
        want.append(w - 0.1 * (g + lamda * g * g * (w - w_prev)))
    assert_close(params(model), want)
    assert not np.allclose(want[0], [w - 0.1 * g / BATCH for w, g in zip(w1, G2, strict=True)][0])


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_mode_has_a_known_answer_test_here(name: str) -> None:
    """A new mode must come with its hand-computed update test in this module."""
    cls = registry.get(name).load()
    tested = {Standalone, SSGD, ESync, ASGD, DCASGD}
    assert cls in tested, f"add a known-answer test of {cls.__name__} to this module"
