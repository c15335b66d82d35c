"""The paper's strategies and their bases (the registry, trainer/registry.py, names them).

The hooks are documented on :class:`trainer.strategy.Strategy`; the update arithmetic is in
:mod:`trainer.aggregate`; moving arrays through the KVStore is :class:`KVExchange`, and the
summing modes' one push/pull per round with its key layout is :class:`SumExchange`.

* :class:`Summing`: the dist_sync modes. ``synchronise`` is written once: push what
  ``contribution`` gives (plus the ``extra_arrays`` keys, the BatchNorm statistics and the stop
  vote), pull the sums, then the algorithm's ``global_step(model, sums)``.
* :class:`ModelAveraging`: the Summing modes that train a replica and push Δw (ESync, FedAvg
  and the ESync variants of trainer/federated.py).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import mxnet as mx

from argtypes import Option, positive_float
from trainer import aggregate, sharding
from trainer.pacing import StateServerPacing
from trainer.strategy import Model, Strategy
from trainer.types import RoundStats


def nbytes(arrays: list[mx.nd.NDArray]) -> int:
    """Bytes held by a list of arrays."""
    return sum(a.size * a.dtype(0).itemsize for a in arrays)


class KVExchange:
    """Push arrays to the KVStore and pull arrays back, timed and counted into RoundStats.

    On a dist_sync store without an optimizer the stored value of a key becomes the sum of
    what the workers pushed in this round, so every worker pulls the same bytes; on a
    dist_async store with an optimizer the server applies each push at once.

    A pushed array comes back overwritten with the pulled value: with mxnet 1.9.1 on CPU the
    dist KVStore uses a key's single pushed array as its communication buffer and pulls into
    it (observed: every worker's pushed control variate of esync-scaffold held the sum after
    the pull; tests/unit/test_update_maths.py's SumStore does the same). Push temporaries, or keep
    a copy of what must survive the exchange.
    """

    def __init__(self, kv: mx.kv.KVStore, template: list[mx.nd.NDArray]) -> None:
        self.kv = kv
        self.keys = list(range(len(template)))
        self.size = nbytes(template)
        # which server each key's bytes go to (MXNet's rule, trainer/sharding.py)
        self.partition = sharding.partition(
            [(k, a.size, a.dtype(0).itemsize) for k, a in zip(self.keys, template, strict=True)],
            sharding.servers_from(),
            sharding.bound_from(),
        )

    def init_and_pull(self, values: list[mx.nd.NDArray]) -> None:
        """Store rank 0's values (a collective call) and copy them into every worker's arrays."""
        self.kv.init(self.keys, values)
        self.kv.pull(self.keys, out=values)
        mx.nd.waitall()

    def __call__(
        self, push: list[mx.nd.NDArray], pull_into: list[mx.nd.NDArray], stats: RoundStats
    ) -> None:
        started = time.perf_counter()
        self.kv.push(self.keys, push)
        self.kv.pull(self.keys, out=pull_into)
        mx.nd.waitall()
        stats.comm_s += time.perf_counter() - started
        stats.bytes_pushed += self.size
        stats.bytes_pulled += self.size
        stats.count_server_bytes([2 * b for b in self.partition.per_server])


class Standalone(Strategy):
    """Training on one device: an SGD step after every batch, nothing to synchronise."""

    def local_update(self, model: Model) -> None:
        aggregate.sgd_step(model.params, model.grads, self.lr, self.batch_scale())

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        return stop


@dataclass
class Sums:
    """What one summing push/pull returns: the sums over the workers of the contributed
    ``values`` (one per weight), of the ``extras`` and of the BatchNorm statistics, and the
    stop vote."""

    values: list[mx.nd.NDArray]
    extras: list[mx.nd.NDArray]
    aux: list[mx.nd.NDArray]
    stop: bool


class SumExchange:
    """The summing modes' one push/pull per round, and its key layout.

    Keys, in order: one per weight (what the strategy contributes: gradients, Δw, ...), then
    the strategy's extra arrays (``Summing.extra_arrays``: FedNova's k_i, SCAFFOLD's control
    variates), then the BatchNorm statistics, then the stop flag. A dist_sync store without an
    optimizer sums what every worker pushed, so every worker pulls the same bytes.
    """

    def __init__(self, kv: mx.kv.KVStore, model: Model, extras: list[mx.nd.NDArray]) -> None:
        self.stop_flag = mx.nd.zeros((1,), model.ctx)
        self.n_values, self.n_extras = len(model.params), len(extras)
        template = model.params + extras + model.aux + [self.stop_flag]
        self.sums = [mx.nd.zeros(a.shape, a.context, dtype=a.dtype) for a in template]
        self.transfer = KVExchange(kv, template)
        self.transfer.init_and_pull(template)  # rank 0's parameters on every worker

    def __call__(
        self,
        values: list[mx.nd.NDArray],
        extras: list[mx.nd.NDArray],
        aux: list[mx.nd.NDArray],
        stop: bool,
        stats: RoundStats,
    ) -> Sums:
        self.stop_flag[:] = 1.0 if stop else 0.0
        self.transfer(values + extras + aux + [self.stop_flag], self.sums, stats)
        n, e = self.n_values, self.n_extras
        return Sums(
            self.sums[:n],
            self.sums[n : n + e],
            self.sums[n + e : -1],
            aggregate.stop_vote(self.sums[-1].asscalar()),
        )


class Summing(Strategy):
    """Base of the dist_sync modes: one push/pull per round sums every worker's contribution,
    averages the BatchNorm statistics and votes on stopping; then ``global_step``."""

    synchronous = True

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        assert kv is not None, f"{type(self).__name__} needs a distributed KVStore"
        self.exchange = SumExchange(kv, model, self.extra_arrays(model))

    def extra_arrays(self, model: Model) -> list[mx.nd.NDArray]:
        """Arrays (their shapes) this mode exchanges besides one value per weight: keys of
        their own in the layout, summed like the weights (default none)."""
        return []

    def contribution(self, model: Model) -> tuple[list[mx.nd.NDArray], list[mx.nd.NDArray]]:
        """What this worker pushes this round: one array per weight, and the extra arrays."""
        return list(model.grads), []

    @abstractmethod
    def global_step(self, model: Model, sums: Sums) -> None:
        """The algorithm's update from the sums over the workers (identical on every worker)."""

    def adopt(self, model: Model) -> None:
        """After the global step: make the worker's arrays the new global ones (default:
        they already are)."""

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        values, extras = self.contribution(model)
        sums = self.exchange(values, extras, model.aux, stop, stats)
        aggregate.average_into(model.aux, sums.aux, self.num_workers)
        self.global_step(model, sums)
        self.adopt(model)
        mx.nd.waitall()
        return sums.stop


class SSGD(Summing):
    """SSGD: every iteration all workers push gradients and apply the same summed step."""

    def global_step(self, model: Model, sums: Sums) -> None:
        # As gluon.Trainer.step(batch_size) with dist_sync: the step is lr times the SUM over
        # workers of their mean gradients (the linear scaling rule for a p-times larger batch).
        aggregate.sgd_step(model.params, sums.values, self.lr, 1.0 / self.batch_size)


class ModelAveraging(Summing):
    """Base of the modes that train a local replica from the round's global weights w_t and
    push Δw_i = replica - w_t; the default global step is Alg. 1's, w += gl * ΣΔw_i / p."""

    lr_flag = "local_lr"
    global_lr: ClassVar[float] = 1.0

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        self.global_params = [w.copy() for w in model.params]

    def local_update(self, model: Model) -> None:
        # The mean gradient of the batch just computed (a smaller last one too).
        aggregate.sgd_step(model.params, model.grads, self.lr, self.batch_scale())

    def contribution(self, model: Model) -> tuple[list[mx.nd.NDArray], list[mx.nd.NDArray]]:
        return aggregate.deltas(model.params, self.global_params), []

    def global_step(self, model: Model, sums: Sums) -> None:
        aggregate.esync_global_step(
            self.global_params, sums.values, self.global_lr, self.num_workers
        )

    def adopt(self, model: Model) -> None:
        aggregate.copy_into(model.params, self.global_params)


class ESync(ModelAveraging):
    """ESync (paper Alg. 1): local SGD on a replica until the State Server says sync, then
    w_{t+1} = w_t + gl * ΣΔw_i / p. The State Server protocol (Alg. 2, blocking or
    non-blocking, rejoin, the smaller last batch) is its pacing,
    :class:`trainer.pacing.StateServerPacing`."""

    pacing_class = StateServerPacing
    options = (
        Option(
            "global_lr",
            positive_float,
            "the global step, w += gl * sum(delta) / p",
            aliases=("-gl",),
        ),
    )


class ASGD(Strategy):
    """ASGD: push gradients, the server applies SGD at once, pull the weights."""

    def server_optimizer(self) -> mx.optimizer.Optimizer:
        """The optimizer the parameter server runs on every push."""
        return mx.optimizer.SGD(learning_rate=self.lr, rescale_grad=1.0 / self.batch_size)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "server_optimizer": type(self.server_optimizer()).__name__}

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        assert kv is not None
        self.exchange = KVExchange(kv, model.params)
        init_server(kv, self.exchange.keys, model.params, self.server_optimizer())
        kv.pull(self.exchange.keys, out=model.params)
        mx.nd.waitall()

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        self.exchange(model.grads, model.params, stats)
        return stop


class DCASGD(ASGD):
    """DC-ASGD: ASGD with MXNet's delay-compensated optimizer on the server."""

    def server_optimizer(self) -> mx.optimizer.Optimizer:
        return mx.optimizer.DCASGD(learning_rate=self.lr, rescale_grad=1.0 / self.batch_size)


def init_server(
    kv: mx.kv.KVStore,
    keys: list[int],
    values: list[mx.nd.NDArray],
    optimizer: mx.optimizer.Optimizer,
) -> None:
    """Store rank 0's values and give the parameter server its optimizer, once, before
    anyone pushes (a collective call)."""
    kv.init(keys, values)
    if kv.rank == 0:
        kv.set_optimizer(optimizer)
    kv._barrier()
