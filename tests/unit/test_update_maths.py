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
from trainer.fedbuff import FedBuff
from trainer.federated import (
    ESyncM,
    ESyncNova,
    ESyncProx,
    ESyncScaffold,
    FedAsync,
    FedAvg,
    ServerRule,
)
from trainer.modes import ASGD, DCASGD, SSGD, ESync, Standalone
from trainer.pacing import FixedSteps, StateServerPacing
from trainer.strategy import Model, Strategy
from trainer.types import LocalProgress, RoundStats

COVERED: set[type[Strategy]] = set()  # the strategies a known-answer test below checks


def covers(*classes: type[Strategy]) -> Callable:
    """Mark a test as the known-answer test of ``classes`` (see the registry test)."""

    def mark(test: Callable) -> Callable:
        COVERED.update(classes)
        return test

    return mark


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
        self.pushed = dict(zip(keys, values, strict=True))
        for key, value in zip(keys, values, strict=True):
            self.stored[key] = value.asnumpy() + sum(self.others(key), np.zeros(value.shape))

    def pull(self, keys, out) -> None:
        # As MXNet's KVStoreDist on CPU: the pushed array is the key's buffer, so a pull
        # overwrites it too (trainer.modes.KVExchange).
        for key, target in zip(keys, out, strict=True):
            target[:] = self.stored[key]
            if key in getattr(self, "pushed", {}):
                self.pushed[key][:] = self.stored[key]


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


@covers(Standalone)
def test_standalone_steps_after_every_batch() -> None:
    mode, model = Standalone(0.1, BATCH), make_model()
    mode.setup(model, None)
    set_grads(model, G1)
    mode.local_update(model)
    assert_close(params(model), [w - 0.1 * g / BATCH for w, g in zip(W0, G1, strict=True)])
    assert mode.should_sync(LocalProgress(k=1), RoundStats()) and not mode.should_sync(
        LocalProgress(k=0), RoundStats()
    )
    assert mode.synchronise(model, RoundStats(), True) is True


def _other_worker(values: dict[int, np.ndarray]) -> Callable[[int], list[np.ndarray]]:
    return lambda key: [values[key]]


@covers(SSGD)
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
    pacing = StateServerPacing(
        client, BATCH, epsilon=0.5, protocol="blocking", fill_last_batch=False
    )
    mode, model = ESync(0.2, BATCH, pacing, global_lr=global_lr), make_model()
    mode.setup(model, SumStore(num_workers, others))
    return mode, model, client


@covers(ESync)
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
    assert mode.should_sync(LocalProgress(k=0), stats) is False  # Alg. 2 says compute; no request
    assert mode.should_sync(LocalProgress(k=1), stats) is False
    assert mode.should_sync(LocalProgress(k=2), stats) is True
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


@covers(ASGD)
def test_asgd_server_runs_sgd_on_every_push() -> None:
    model, kv = _async_run(ASGD, [G1, G2])
    want = [w - 0.1 * (g1 + g2) / BATCH for w, g1, g2 in zip(W0, G1, G2, strict=True)]
    assert_close(params(model), want)
    assert type(kv.optimizer) is mx.optimizer.SGD and kv.pushes == 2


@covers(DCASGD)
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
    assert cls in COVERED, f"add a known-answer test of {cls.__name__} to this module (@covers)"


# --- trainer/federated.py: the journal paper's baselines and ESync variants ------------------

OTHER_DELTA = [np.array([[0.5, 0.5], [-1.0, 0.0]]), np.array([2.0, -2.0])]
OTHER_AUX = np.array([5.0, 7.0])


def _prox_steps(lr: float, mu: float, grads_seq) -> list[np.ndarray]:
    """Local steps w -= lr * (g / B + mu * (w - W0)) from W0, by hand."""
    replica = [w.copy() for w in W0]
    for grads in grads_seq:
        replica = [
            w - lr * (g / BATCH + mu * (w - w0))
            for w, g, w0 in zip(replica, grads, W0, strict=True)
        ]
    return replica


def _local_steps(mode, model: Model, grads_seq) -> None:
    for grads in grads_seq:
        set_grads(model, grads)
        mode.local_update(model)


def test_prox_sgd_step_adds_mu_times_the_distance_to_the_anchor() -> None:
    model, anchor = make_model(), [mx.nd.array(w) - 1.0 for w in W0]
    set_grads(model, G1)
    aggregate.prox_sgd_step(model.params, model.grads, anchor, 0.5, 1.0 / BATCH, 0.1)
    want = [w - 0.5 * (g / BATCH + 0.1 * 1.0) for w, g in zip(W0, G1, strict=True)]
    assert_close(params(model), want)


@covers(FedAvg)
@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_fedavg_averages_the_local_models_after_e_steps(mu: float) -> None:
    others = _other_worker({0: OTHER_DELTA[0], 1: OTHER_DELTA[1], 2: OTHER_AUX, 3: np.zeros(1)})
    mode, model = FedAvg(0.2, BATCH, FixedSteps(BATCH, local_steps=2), mu=mu), make_model()
    mode.setup(model, SumStore(2, others))
    assert [mode.should_sync(LocalProgress(k=k), RoundStats()) for k in (0, 1, 2)] == [0, 0, 1]
    _local_steps(mode, model, (G1, G2))
    replica = _prox_steps(0.2, mu, (G1, G2))  # mu = 0: plain SGD
    assert_close(params(model), replica)
    stop = mode.synchronise(model, RoundStats(), stop=False)
    # w + (Δ_mine + Δ_other) / 2 = the mean of the two local models
    want = [w + ((r - w) + d) / 2 for w, r, d in zip(W0, replica, OTHER_DELTA, strict=True)]
    assert_close(params(model), want)
    assert_close([g.asnumpy() for g in mode.global_params], want)
    assert_close([model.aux[0].asnumpy()], [(AUX0[0] + OTHER_AUX) / 2])
    assert stop is False and mode.describe() == {"local_steps": 2, "mu": mu}


def _esync_variant(cls, others, global_lr: float):
    pacing = StateServerPacing(FakeClient(), BATCH, protocol="blocking", fill_last_batch=False)
    mode, model = cls(0.2, BATCH, pacing, global_lr=global_lr), make_model()
    mode.setup(model, SumStore(2, others))
    return mode, model


@covers(ESyncProx)
def test_esync_prox_local_steps_are_pulled_toward_the_global_weights() -> None:
    others = _other_worker({0: OTHER_DELTA[0], 1: OTHER_DELTA[1], 2: OTHER_AUX, 3: np.ones(1)})
    mode, model = _esync_variant(ESyncProx, others, global_lr=0.5)
    mode.mu = 0.3
    _local_steps(mode, model, (G1, G2, G1))
    replica = _prox_steps(0.2, 0.3, (G1, G2, G1))
    assert not np.allclose(replica[0], _prox_steps(0.2, 0.0, (G1, G2, G1))[0])
    assert_close(params(model), replica)
    stop = mode.synchronise(model, RoundStats(), stop=False)
    mine = [r - w for r, w in zip(replica, W0, strict=True)]
    want = [w + 0.5 * (d1 + d2) / 2 for w, d1, d2 in zip(W0, mine, OTHER_DELTA, strict=True)]
    assert_close(params(model), want)
    assert stop is True  # the other worker voted to stop


@covers(ESyncNova)
def test_esync_nova_steps_by_the_mean_direction_times_the_mean_local_steps() -> None:
    other_dir, other_k = [d / 5 for d in OTHER_DELTA], np.array([5.0])  # 5 steps on the other
    # keys (SumExchange): 0, 1 weights; 2 the local-step count k_i; 3 BatchNorm; 4 stop flag
    values = {0: other_dir[0], 1: other_dir[1], 2: other_k, 3: OTHER_AUX, 4: np.zeros(1)}
    mode, model = _esync_variant(ESyncNova, _other_worker(values), global_lr=0.5)
    _local_steps(mode, model, (G1, G2))  # k = 2 here
    replica = _prox_steps(0.2, 0.0, (G1, G2))
    stats = RoundStats()
    stop = mode.synchronise(model, stats, stop=False)
    mine = [(r - w) / 2 for r, w in zip(replica, W0, strict=True)]
    mean_k = (2 + 5) / 2
    want = [w + 0.5 * (d1 + d2) / 2 * mean_k for w, d1, d2 in zip(W0, mine, other_dir, strict=True)]
    assert_close(params(model), want)
    assert_close([g.asnumpy() for g in mode.global_params], want)
    assert_close([model.aux[0].asnumpy()], [(AUX0[0] + OTHER_AUX) / 2])
    assert stop is False and stats.bytes_pushed == 4 * (4 + 2 + 1 + 2 + 1)
    # the count restarts: a round of one step sends k = 1
    _local_steps(mode, model, (G1,))
    mode.synchronise(model, RoundStats(), stop=False)
    assert mode.exchange.sums[2].asscalar() == 1.0 + 5.0


def test_esync_nova_equals_esync_when_every_worker_did_the_same_steps() -> None:
    values = {0: OTHER_DELTA[0] / 3, 1: OTHER_DELTA[1] / 3, 3: AUX0[0], 4: np.zeros(1)}
    nova, nova_model = _esync_variant(ESyncNova, _other_worker({**values, 2: np.ones(1) * 3}), 0.5)
    plain_values = {0: OTHER_DELTA[0], 1: OTHER_DELTA[1], 2: AUX0[0], 3: np.zeros(1)}
    plain, plain_model = _esync_variant(ESync, _other_worker(plain_values), 0.5)
    for mode, model in ((nova, nova_model), (plain, plain_model)):
        _local_steps(mode, model, (G1, G2, G1))
        mode.synchronise(model, RoundStats(), stop=False)
    assert_close(params(nova_model), params(plain_model))


@pytest.mark.parametrize(
    ("kind", "a", "b", "by_staleness"),
    [
        ("constant", 0.5, 4.0, {0: 1.0, 1: 1.0, 3: 1.0, 10: 1.0}),
        ("polynomial", 0.5, 4.0, {0: 1.0, 1: 2**-0.5, 3: 0.5, 8: 1 / 3}),
        ("polynomial", 1.0, 4.0, {0: 1.0, 1: 0.5, 3: 0.25}),
        ("hinge", 0.5, 2.0, {0: 1.0, 2: 1.0, 3: 1 / 1.5, 6: 1 / 3}),
        ("hinge", 2.0, 0.0, {0: 1.0, 1: 1 / 3, 2: 1 / 5}),
    ],
)
def test_staleness_functions_match_fedasync_paper(kind, a, b, by_staleness) -> None:
    for t, want in by_staleness.items():
        assert aggregate.staleness_weight(kind, t, a, b) == pytest.approx(want, rel=1e-12)


def _server_push(kv: ServerStore, weights: list[np.ndarray], version: int) -> None:
    """What another FedAsync worker's push looks like: flattened weights + its pulled version."""
    kv.push(range(len(weights)), [mx.nd.array(np.append(w.ravel(), version)) for w in weights])


@pytest.mark.parametrize(
    ("kind", "a", "b", "s3"),
    [("constant", 0.5, 4.0, 1.0), ("polynomial", 0.5, 4.0, 0.5)]
    + [("hinge", 0.5, 2.0, 1 / 1.5), ("hinge", 0.5, 3.0, 1.0)],
)
@covers(FedAsync)
def test_fedasync_server_mixes_by_alpha_times_staleness_weight(kind, a, b, s3) -> None:
    kv, alpha = ServerStore(1), 0.6
    hyper = {"alpha": alpha, "staleness": kind, "staleness_a": a, "staleness_b": b}
    mode, model = FedAsync(0.2, BATCH, FixedSteps(BATCH, 2), **hyper), make_model()
    mode.setup(model, kv)
    assert type(kv.optimizer) is ServerRule and mode.describe()["server_optimizer"] == (
        "ServerRule(fedasync_mix)"
    )
    arrays = W0 + AUX0  # weights and BatchNorm statistics are keys 0, 1, 2
    # round 1: nobody else pushed, staleness 0, a_t = alpha
    _local_steps(mode, model, (G1, G2))
    x1 = _prox_steps(0.2, 0.0, (G1, G2)) + AUX0
    mode.synchronise(model, RoundStats(), stop=False)
    server = [(1 - alpha) * w + alpha * x for w, x in zip(arrays, x1, strict=True)]
    assert_close(params(model), server[:2])
    assert mode.version() == 1
    assert kv.optimizer.last[0] == (0, pytest.approx(alpha))
    # three other pushes (pulled at version 1: staleness 0, 1, 2 when they arrive)
    other = [np.full(w.shape, 2.0) for w in arrays]
    for t in range(3):
        a_t = alpha * aggregate.staleness_weight(kind, t, a, b)
        server = [(1 - a_t) * s + a_t * o for s, o in zip(server, other, strict=True)]
        _server_push(kv, other, version=1)
    # round 2: this worker pulled version 1, the server is at 4: staleness 3
    pulled = params(model) + [model.aux[0].asnumpy()]  # BatchNorm stats: as pulled
    _local_steps(mode, model, (G1,))
    x2 = [w - 0.2 * g / BATCH for w, g in zip(pulled[:2], G1, strict=True)] + pulled[2:]
    mode.synchronise(model, RoundStats(), stop=False)
    a_t = alpha * s3
    server = [(1 - a_t) * s + a_t * x for s, x in zip(server, x2, strict=True)]
    assert kv.optimizer.last[0] == (3, pytest.approx(a_t))
    assert_close(params(model) + [model.aux[0].asnumpy()], server)
    assert mode.version() == 5 and kv.pushes == 5


OTHER_VARIATE = [np.array([[1.0, -1.0], [2.0, 0.0]]), np.array([0.5, 4.0])]


@covers(ESyncScaffold)
def test_esync_scaffold_corrects_local_steps_by_the_control_variates() -> None:
    # keys (SumExchange): 0, 1 weights; 2, 3 the control variates c_i+; 4 BatchNorm; 5 stop
    values = {0: OTHER_DELTA[0], 1: OTHER_DELTA[1], 4: OTHER_AUX, 5: np.zeros(1)}
    values.update({2: OTHER_VARIATE[0], 3: OTHER_VARIATE[1]})
    mode, model = _esync_variant(ESyncScaffold, _other_worker(values), global_lr=0.5)
    # round 1: c = c_i = 0, so the local steps are plain SGD
    _local_steps(mode, model, (G1, G2))
    replica = _prox_steps(0.2, 0.0, (G1, G2))
    assert_close(params(model), replica)
    stats = RoundStats()
    mode.synchronise(model, stats, stop=False)
    mine = [r - w for r, w in zip(replica, W0, strict=True)]
    w1 = [w + 0.5 * (d1 + d2) / 2 for w, d1, d2 in zip(W0, mine, OTHER_DELTA, strict=True)]
    assert_close(params(model), w1)
    c_mine = [(g1 + g2) / BATCH / 2 for g1, g2 in zip(G1, G2, strict=True)]  # option II
    c = [(a + b) / 2 for a, b in zip(c_mine, OTHER_VARIATE, strict=True)]
    assert_close([x.asnumpy() for x in mode.c_global], c)
    assert_close([model.aux[0].asnumpy()], [(AUX0[0] + OTHER_AUX) / 2])
    assert stats.bytes_pushed == 4 * (4 + 2 + 4 + 2 + 2 + 1)  # weights, variates, aux, stop
    # round 2: one step w -= lr * (g / B + c - c_i)
    _local_steps(mode, model, (G1,))
    want = [w - 0.2 * (g / BATCH + cg - ci) for w, g, cg, ci in zip(w1, G1, c, c_mine, strict=True)]
    assert_close(params(model), want)
    assert not np.allclose(want[0], w1[0] - 0.2 * G1[0] / BATCH)
    # its new c_i is this round's mean gradient
    mode.synchronise(model, RoundStats(), stop=False)
    assert_close([x.asnumpy() for x in mode.c_local], [g / BATCH for g in G1])


def test_control_variate_of_a_round_without_steps_is_the_previous_one() -> None:
    previous = [mx.nd.array(v) for v in OTHER_VARIATE]
    kept = aggregate.control_variate([mx.nd.zeros((2,))], 0, previous)
    assert_close([x.asnumpy() for x in kept], OTHER_VARIATE)
    assert kept[0] is not previous[0]


@covers(ESyncM)
def test_esync_m_steps_by_the_velocity_of_the_mean_deltas() -> None:
    values = {0: OTHER_DELTA[0], 1: OTHER_DELTA[1], 2: OTHER_AUX, 3: np.zeros(1)}
    mode, model = _esync_variant(ESyncM, _other_worker(values), global_lr=0.5)
    mode.server_momentum = 0.8
    _local_steps(mode, model, (G1, G2))
    replica = _prox_steps(0.2, 0.0, (G1, G2))
    mode.synchronise(model, RoundStats(), stop=False)
    v1 = [((r - w) + d) / 2 for r, w, d in zip(replica, W0, OTHER_DELTA, strict=True)]
    w1 = [w + 0.5 * v for w, v in zip(W0, v1, strict=True)]  # round 1: v = the mean delta
    assert_close(params(model), w1)
    # round 2: one step, v = 0.8 v1 + mean delta, w += gl v
    _local_steps(mode, model, (G1,))
    mine = [-0.2 * g / BATCH for g in G1]
    mode.synchronise(model, RoundStats(), stop=False)
    v2 = [0.8 * v + (m + d) / 2 for v, m, d in zip(v1, mine, OTHER_DELTA, strict=True)]
    want = [w + 0.5 * v for w, v in zip(w1, v2, strict=True)]
    assert_close(params(model), want)
    assert_close([g.asnumpy() for g in mode.global_params], want)
    assert mode.describe()["server_momentum"] == 0.8


# --- trainer/fedbuff.py ----------------------------------------------------------------------


@covers(FedBuff)
def test_fedbuff_applies_the_staleness_weighted_mean_of_every_k_updates() -> None:
    kv = ServerStore(1)
    mode, model = FedBuff(0.2, BATCH, FixedSteps(BATCH, 2), buffer_size=2), make_model()
    mode.setup(model, kv)
    assert mode.describe()["server_optimizer"] == "ServerRule(fedbuff_accumulate)"
    arrays = W0 + AUX0  # weights and BatchNorm statistics are keys 0, 1, 2
    # round 1: Δw of two local steps from W0 at version 0 is buffered (1 of K = 2): nothing
    # is applied, so the pull gives W0 back at version 0
    _local_steps(mode, model, (G1, G2))
    mine = [x - w for x, w in zip(_prox_steps(0.2, 0.0, (G1, G2)), W0, strict=True)]
    mode.synchronise(model, RoundStats(), stop=False)
    assert_close(params(model), W0)
    assert mode.version() == 0
    assert kv.optimizer.last[0] == (0, 1.0, False)
    # another worker's Δw from version 0 fills the buffer: w += (mine + other) / 2, version 1
    other = [np.full(a.shape, 0.5) for a in arrays]
    _server_push(kv, other, version=0)
    assert kv.optimizer.last[0] == (0, 1.0, True)
    server = [a + (m + o) / 2 for a, m, o in zip(arrays, mine + [np.zeros(2)], other, strict=True)]
    assert_close([kv.stored[k][:-1].reshape(a.shape) for k, a in enumerate(arrays)], server)
    # round 2: one step from W0 (pulled at version 0), pushed when the server is at version 1:
    # staleness 1, weight 1 / sqrt(2); buffered, so the pull gives the version-1 weights
    _local_steps(mode, model, (G1,))
    mine = [-0.2 * g / BATCH for g in G1] + [np.zeros(2)]
    mode.synchronise(model, RoundStats(), stop=False)
    s1 = 2**-0.5
    assert kv.optimizer.last[0] == (1, pytest.approx(s1), False)
    assert_close(params(model), server[:2])
    assert mode.version() == 1
    _server_push(kv, other, version=0)  # staleness 1 too: the buffer is applied
    server = [s + s1 * (m + o) / 2 for s, m, o in zip(server, mine, other, strict=True)]
    assert_close([kv.stored[k][:-1].reshape(a.shape) for k, a in enumerate(arrays)], server)
    assert [kv.stored[k][-1] for k in range(3)] == [2.0, 2.0, 2.0] and kv.pushes == 4


# --- the algorithms' own state in checkpoints (Strategy.state_arrays / resume_from) ----------


def _scaffold_values() -> dict[int, np.ndarray]:
    values = {0: OTHER_DELTA[0], 1: OTHER_DELTA[1], 4: OTHER_AUX, 5: np.zeros(1)}
    return {**values, 2: OTHER_VARIATE[0], 3: OTHER_VARIATE[1]}


def _esync_m_values() -> dict[int, np.ndarray]:
    return {0: OTHER_DELTA[0], 1: OTHER_DELTA[1], 2: OTHER_AUX, 3: np.zeros(1)}


@pytest.mark.parametrize(
    "cls, values, names",
    [
        (ESyncM, _esync_m_values, {"velocity"}),
        (ESyncScaffold, _scaffold_values, {"c_local", "c_global", "corrections"}),
    ],
)
def test_a_checkpoint_brings_back_the_algorithms_state(tmp_path, cls, values, names) -> None:
    mode, model = _esync_variant(cls, _other_worker(values()), global_lr=0.5)
    _local_steps(mode, model, (G1, G2))
    mode.synchronise(model, RoundStats(), stop=False)
    saved = mode.state_arrays()
    assert {name.split("/")[0] for name in saved} == names
    assert any(np.abs(a.asnumpy()).sum() > 0 for a in saved.values())  # not the zeros
    path = str(tmp_path / "state.params")
    mx.nd.save(path, saved)  # as trainer/loop.py saves it
    pacing = StateServerPacing(FakeClient(), BATCH, protocol="blocking", fill_last_batch=False)
    resumed = cls(0.2, BATCH, pacing, global_lr=0.5)
    resumed.resume_from(mx.nd.load(path))
    resumed.setup(make_model(), SumStore(2, _other_worker(values())))
    restored = resumed.state_arrays()
    assert sorted(restored) == sorted(saved)
    for name, array in saved.items():
        np.testing.assert_array_equal(restored[name].asnumpy(), array.asnumpy(), err_msg=name)


def test_the_versioned_modes_resume_their_server_versions() -> None:
    mode, model = FedAsync(0.2, BATCH, FixedSteps(BATCH, 2)), make_model()
    mode.setup(model, ServerStore(1))
    _local_steps(mode, model, (G1,))
    mode.synchronise(model, RoundStats(), stop=False)
    assert mode.version() == 1
    saved = {k: v.copy() for k, v in mode.state_arrays().items()}
    resumed, kv = FedAsync(0.2, BATCH, FixedSteps(BATCH, 2)), ServerStore(1)
    resumed.resume_from(saved)
    resumed.setup(make_model(), kv)  # the restarted server starts at the saved versions
    assert resumed.version() == 1
    _local_steps(resumed, model, (G1,))
    resumed.synchronise(model, RoundStats(), stop=False)
    assert resumed.version() == 2  # counting on, not from 0 again


def test_a_saved_array_of_another_shape_is_refused() -> None:
    pacing = StateServerPacing(FakeClient(), BATCH, protocol="blocking", fill_last_batch=False)
    mode = ESyncM(0.2, BATCH, pacing, global_lr=0.5)
    mode.resume_from({"velocity/0": mx.nd.zeros((3,))})
    with pytest.raises(ValueError, match=r"velocity/0 has shape \(3,\)"):
        mode.setup(make_model(), SumStore(2, _other_worker(_esync_m_values())))
