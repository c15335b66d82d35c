"""One synchronisation strategy per mode; the training loop (loop.py) is shared.

A mode answers three questions for the loop: is it time to synchronise (``should_sync``), what
happens to the local replica after a backward pass (``local_update``), and how a round is
synchronised (``synchronise``). Everything else (data, timing, evaluation, records) is the loop's.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mxnet as mx

from trainer.records import RoundStats

if TYPE_CHECKING:
    from trainer.state_client import StateClient


@dataclass
class Model:
    """A network and direct handles on its arrays (updates write into them in place)."""

    net: mx.gluon.HybridBlock
    ctx: mx.Context
    params: list[mx.nd.NDArray] = field(default_factory=list)  # trainable weights
    grads: list[mx.nd.NDArray] = field(default_factory=list)
    aux: list[mx.nd.NDArray] = field(default_factory=list)  # BatchNorm running statistics

    @classmethod
    def wrap(cls, net: mx.gluon.HybridBlock, ctx: mx.Context) -> Model:
        """Collect the arrays of an initialised (shape-inferred) network."""
        model = cls(net, ctx)
        for param in net.collect_params().values():
            if param.grad_req == "null":
                model.aux.append(param.data(ctx))
            else:
                model.params.append(param.data(ctx))
                model.grads.append(param.grad(ctx))
        return model

    def checksum(self) -> str:
        """CRC32 over every weight and running statistic, as 8 hex digits."""
        crc = 0
        for array in self.params + self.aux:
            crc = zlib.crc32(array.asnumpy().tobytes(), crc)
        return f"{crc:08x}"


@dataclass
class Progress:
    """A worker's progress in the current round, as the State Server sees it."""

    k: int = 0  # local iterations in this round
    c: float = 0.0  # seconds per batch (moving average, emulated slowdown included)
    te: float = field(default_factory=time.time)  # Unix time the last iteration finished


def nbytes(arrays: list[mx.nd.NDArray]) -> int:
    """Bytes held by a list of arrays."""
    return sum(a.size * a.dtype(0).itemsize for a in arrays)


def sgd_step(
    weights: list[mx.nd.NDArray], grads: list[mx.nd.NDArray], lr: float, rescale: float
) -> None:
    """Plain SGD in place: w -= lr * rescale * g."""
    for w, g in zip(weights, grads, strict=True):
        mx.nd.sgd_update(w, g, lr=lr, wd=0.0, rescale_grad=rescale, out=w)


class SumExchange:
    """Push arrays to a dist_sync KVStore without an optimizer and pull back their sum.

    With no updater on the server, the stored value of a key becomes the sum of what the
    workers pushed in this round, so every worker pulls the same bytes.
    """

    def __init__(self, kv: mx.kv.KVStore, template: list[mx.nd.NDArray]) -> None:
        self.kv = kv
        self.keys = list(range(len(template)))
        self.sums = [mx.nd.zeros(a.shape, a.context, dtype=a.dtype) for a in template]
        self.size = nbytes(template)

    def init_and_pull(self, values: list[mx.nd.NDArray]) -> None:
        """Store rank 0's values (a collective call) and copy them into every worker's arrays."""
        self.kv.init(self.keys, values)
        self.kv.pull(self.keys, out=values)
        mx.nd.waitall()

    def __call__(self, values: list[mx.nd.NDArray], stats: RoundStats) -> list[mx.nd.NDArray]:
        started = time.perf_counter()
        self.kv.push(self.keys, values)
        self.kv.pull(self.keys, out=self.sums)
        mx.nd.waitall()
        stats.comm_s += time.perf_counter() - started
        stats.bytes_pushed += self.size
        stats.bytes_pulled += self.size
        return self.sums


class Mode:
    """Standalone training (``local``); the base of the distributed modes."""

    name = "local"
    kv_type: str | None = None
    agrees_on_params = False  # all workers hold identical parameters after each round

    def __init__(self, lr: float, batch_size: int) -> None:
        self.lr = lr
        self.batch_size = batch_size
        self.rank = 0
        self.num_workers = 1

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        """Called once before training (collective in the distributed modes)."""
        if kv is not None:
            self.rank, self.num_workers = kv.rank, kv.num_workers

    def should_sync(self, progress: Progress, stats: RoundStats) -> bool:
        """Whether the next step is a synchronisation rather than another local batch."""
        return progress.k >= 1

    def local_update(self, model: Model) -> None:
        """Apply the gradients of the batch just computed to the local replica."""
        sgd_step(model.params, model.grads, self.lr, 1.0 / self.batch_size)

    def synchronise(self, model: Model, stats: RoundStats, round_no: int, stop: bool) -> bool:
        """End round ``round_no``; return True when every worker agrees to stop."""
        return stop

    def begin_round(self, round_no: int, stats: RoundStats) -> None:
        """Called just before the first batch of round ``round_no`` (after the records)."""


class _SummingMode(Mode):
    """Modes built on SumExchange: gradients or deltas, plus BatchNorm stats and a stop flag."""

    kv_type = "dist_sync"
    agrees_on_params = True

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        assert kv is not None, f"{self.name} needs a distributed KVStore"
        self.stop_flag = mx.nd.zeros((1,), model.ctx)
        template = model.params + model.aux + [self.stop_flag]
        self.exchange = SumExchange(kv, template)
        self.exchange.init_and_pull(template)

    def _exchange(
        self, model: Model, values: list[mx.nd.NDArray], stats: RoundStats, stop: bool
    ) -> tuple[list[mx.nd.NDArray], bool]:
        """Sum ``values`` (one per weight) over workers; average the BatchNorm statistics."""
        self.stop_flag[:] = 1.0 if stop else 0.0
        sums = self.exchange(values + model.aux + [self.stop_flag], stats)
        n = len(values)
        for aux, total in zip(model.aux, sums[n:-1], strict=True):
            aux[:] = total / self.num_workers
        return sums[:n], sums[-1].asscalar() > 0


class SyncMode(_SummingMode):
    """SSGD: every iteration all workers push gradients and apply the same summed step."""

    name = "sync"

    def local_update(self, model: Model) -> None:
        """Gradients wait for the synchronisation; the replica is not touched."""

    def synchronise(self, model: Model, stats: RoundStats, round_no: int, stop: bool) -> bool:
        # As gluon.Trainer.step(batch_size) with dist_sync: the step is lr times the SUM over
        # workers of their mean gradients (the linear scaling rule for a p-times larger batch).
        grad_sums, stop_all = self._exchange(model, model.grads, stats, stop)
        sgd_step(model.params, grad_sums, self.lr, 1.0 / self.batch_size)
        return stop_all


class ESyncMode(_SummingMode):
    """ESync (paper Alg. 1): local SGD on a replica until the State Server says sync."""

    name = "esync"

    def __init__(
        self, lr: float, batch_size: int, global_lr: float, client: StateClient, epsilon: float
    ) -> None:
        super().__init__(lr, batch_size)
        self.global_lr = global_lr
        self.client = client
        self.epsilon = epsilon

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

    def synchronise(self, model: Model, stats: RoundStats, round_no: int, stop: bool) -> bool:
        deltas = [w - g for w, g in zip(model.params, self.global_params, strict=True)]
        delta_sums, stop_all = self._exchange(model, deltas, stats, stop)
        scale = self.global_lr / self.num_workers
        for w, g, total in zip(model.params, self.global_params, delta_sums, strict=True):
            g += total * scale
            g.copyto(w)
        mx.nd.waitall()
        return stop_all

    def begin_round(self, round_no: int, stats: RoundStats) -> None:
        """Tell the State Server this worker starts ``round_no`` now (its te)."""
        started = time.perf_counter()
        self.client.reset(self.rank, round_no, time.time())
        stats.query_s += time.perf_counter() - started


class AsyncMode(Mode):
    """ASGD: push gradients, the server applies SGD (or DC-ASGD) at once, pull the weights."""

    name = "async"
    kv_type = "dist_async"

    def __init__(self, lr: float, batch_size: int, dcasgd: bool) -> None:
        super().__init__(lr, batch_size)
        self.dcasgd = dcasgd

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        assert kv is not None
        self.kv = kv
        self.keys = list(range(len(model.params)))
        self.size = nbytes(model.params)
        kv.init(self.keys, model.params)
        if kv.rank == 0:  # one optimizer on the server, set once, before anyone pushes
            kwargs = {"learning_rate": self.lr, "rescale_grad": 1.0 / self.batch_size}
            optimizer = mx.optimizer.DCASGD(**kwargs) if self.dcasgd else mx.optimizer.SGD(**kwargs)
            kv.set_optimizer(optimizer)
        kv._barrier()
        kv.pull(self.keys, out=model.params)
        mx.nd.waitall()

    def local_update(self, model: Model) -> None:
        """The server applies the update."""

    def synchronise(self, model: Model, stats: RoundStats, round_no: int, stop: bool) -> bool:
        started = time.perf_counter()
        self.kv.push(self.keys, model.grads)
        self.kv.pull(self.keys, out=model.params)
        mx.nd.waitall()
        stats.comm_s += time.perf_counter() - started
        stats.bytes_pushed += self.size
        stats.bytes_pulled += self.size
        return stop
