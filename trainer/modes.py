"""One strategy class per training mode (the registry, trainer/registry.py, names them).

The hooks are documented on :class:`trainer.strategy.Strategy`; the update arithmetic is in
:mod:`trainer.aggregate`; moving arrays through the KVStore is :class:`KVExchange`.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

import mxnet as mx

from trainer import aggregate
from trainer.records import RoundStats
from trainer.strategy import Model, Progress, Strategy

if TYPE_CHECKING:
    from trainer.state_client import StateClient


def nbytes(arrays: list[mx.nd.NDArray]) -> int:
    """Bytes held by a list of arrays."""
    return sum(a.size * a.dtype(0).itemsize for a in arrays)


class KVExchange:
    """Push arrays to the KVStore and pull arrays back, timed and counted into RoundStats.

    On a dist_sync store without an optimizer the stored value of a key becomes the sum of
    what the workers pushed in this round, so every worker pulls the same bytes; on a
    dist_async store with an optimizer the server applies each push at once.
    """

    def __init__(self, kv: mx.kv.KVStore, template: list[mx.nd.NDArray]) -> None:
        self.kv = kv
        self.keys = list(range(len(template)))
        self.size = nbytes(template)

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


class Standalone(Strategy):
    """Training on one device: an SGD step after every batch, nothing to synchronise."""

    def local_update(self, model: Model) -> None:
        aggregate.sgd_step(model.params, model.grads, self.lr, 1.0 / self.batch_size)

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        return stop


class _Summing(Strategy):
    """Base of the dist_sync modes: sum one array per weight over the workers, average the
    BatchNorm statistics and vote on stopping, all in one push/pull."""

    synchronous = True

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        assert kv is not None, f"{type(self).__name__} needs a distributed KVStore"
        self.stop_flag = mx.nd.zeros((1,), model.ctx)
        template = model.params + model.aux + [self.stop_flag]
        self.sums = [mx.nd.zeros(a.shape, a.context, dtype=a.dtype) for a in template]
        self.exchange = KVExchange(kv, template)
        self.exchange.init_and_pull(template)

    def sum_over_workers(
        self, model: Model, values: list[mx.nd.NDArray], stats: RoundStats, stop: bool
    ) -> tuple[list[mx.nd.NDArray], bool]:
        """Sums of ``values`` (one per weight) and the stop vote; BatchNorm stats averaged."""
        self.stop_flag[:] = 1.0 if stop else 0.0
        self.exchange(values + model.aux + [self.stop_flag], self.sums, stats)
        n = len(values)
        aggregate.average_into(model.aux, self.sums[n:-1], self.num_workers)
        return self.sums[:n], aggregate.stop_vote(self.sums[-1].asscalar())


class SSGD(_Summing):
    """SSGD: every iteration all workers push gradients and apply the same summed step."""

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        # As gluon.Trainer.step(batch_size) with dist_sync: the step is lr times the SUM over
        # workers of their mean gradients (the linear scaling rule for a p-times larger batch).
        grad_sums, stop_all = self.sum_over_workers(model, model.grads, stats, stop)
        aggregate.sgd_step(model.params, grad_sums, self.lr, 1.0 / self.batch_size)
        return stop_all


class ESync(_Summing):
    """ESync (paper Alg. 1): local SGD on a replica until the State Server says sync."""

    def __init__(
        self, lr: float, batch_size: int, global_lr: float, client: StateClient, epsilon: float
    ) -> None:
        super().__init__(lr, batch_size)
        self.global_lr = global_lr
        self.client = client
        self.epsilon = epsilon

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ESync:
        from trainer.state_client import StateClient

        client = StateClient(f"http://{args.ip}:{args.port}", retry_for=args.state_retry)
        return cls(args.local_lr, args.batch_size, args.global_lr, client, args.epsilon)

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        assert kv is not None
        if kv.rank == 0:  # before the KVStore barrier, so nobody queries an empty server
            self.client.init(kv.num_workers, self.epsilon)
        super().setup(model, kv)
        self.global_params = [w.copy() for w in model.params]

    def should_sync(self, progress: Progress, stats: RoundStats) -> bool:
        if progress.k == 0:  # Alg. 2 answers compute for k == 0; skip the round trip
            return False
        started = time.perf_counter()
        action = self.client.query(self.rank, progress.k, progress.c, progress.te)
        stats.query_s += time.perf_counter() - started
        return action == "sync"

    def local_update(self, model: Model) -> None:
        aggregate.sgd_step(model.params, model.grads, self.lr, 1.0 / self.batch_size)

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        deltas = aggregate.deltas(model.params, self.global_params)
        delta_sums, stop_all = self.sum_over_workers(model, deltas, stats, stop)
        aggregate.esync_global_step(
            self.global_params, delta_sums, self.global_lr, self.num_workers
        )
        aggregate.copy_into(model.params, self.global_params)
        mx.nd.waitall()
        return stop_all

    def begin_round(self, round_no: int, stats: RoundStats) -> None:
        """Tell the State Server this worker starts ``round_no`` now (its te)."""
        started = time.perf_counter()
        self.client.reset(self.rank, round_no, time.time())
        stats.query_s += time.perf_counter() - started


class ASGD(Strategy):
    """ASGD: push gradients, the server applies SGD at once, pull the weights."""

    def server_optimizer(self) -> mx.optimizer.Optimizer:
        """The optimizer the parameter server runs on every push."""
        return mx.optimizer.SGD(learning_rate=self.lr, rescale_grad=1.0 / self.batch_size)

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        assert kv is not None
        self.exchange = KVExchange(kv, model.params)
        kv.init(self.exchange.keys, model.params)
        if kv.rank == 0:  # one optimizer on the server, set once, before anyone pushes
            kv.set_optimizer(self.server_optimizer())
        kv._barrier()
        kv.pull(self.exchange.keys, out=model.params)
        mx.nd.waitall()

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        self.exchange(model.grads, model.params, stats)
        return stop


class DCASGD(ASGD):
    """DC-ASGD: ASGD with MXNet's delay-compensated optimizer on the server."""

    def server_optimizer(self) -> mx.optimizer.Optimizer:
        return mx.optimizer.DCASGD(learning_rate=self.lr, rescale_grad=1.0 / self.batch_size)
