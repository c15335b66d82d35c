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

    A pushed array comes back overwritten with the pulled value: with mxnet 1.9.1 on CPU the
    dist KVStore uses a key's single pushed array as its communication buffer and pulls into
    it (observed: every worker's pushed control variate of esync-scaffold held the sum after
    the pull; tests/test_update_maths.py's SumStore does the same). Push temporaries, or keep
    a copy of what must survive the exchange.
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
    """ESync (paper Alg. 1): local SGD on a replica until the State Server says sync.

    ``protocol`` "blocking" asks the State Server after every local iteration (Alg. 2 as
    written); "nonblocking" hands the progress to a :class:`ProgressChannel` and reads the
    server's delayed answer from a flag (docs/state-server.md, "Non-blocking protocol"),
    asking the blocking way only while the channel is in trouble. ``fill_last_batch``: when
    the server says sync while the slowest worker is still computing, compute one smaller
    batch sized to the time left first (beyond the paper; see :meth:`next_batch_size`).

    The State Server is soft state: when it answers "not initialised" (it restarted), this
    worker re-registers (a rejoin init, then a reset into its current round) and repeats the
    request; the round's record counts it in ``state_rejoins``.
    """

    MAX_REJOINS_PER_CALL = 2  # a server that restarts again during the re-registration

    def __init__(
        self,
        lr: float,
        batch_size: int,
        global_lr: float,
        client: StateClient,
        epsilon: float,
        protocol: str = "blocking",
        fill_last_batch: bool = False,
    ) -> None:
        import config

        super().__init__(lr, batch_size)
        if protocol not in ("blocking", "nonblocking"):
            raise ValueError(f"state protocol must be blocking or nonblocking, got {protocol!r}")
        self.global_lr = global_lr
        self.client = client
        self.epsilon = epsilon
        self.protocol = protocol
        self.fill_last_batch = bool(fill_last_batch)
        self.min_partial = min(batch_size, max(config.FILL_MIN_SAMPLES, -(-batch_size // 8)))
        self.channel = None  # nonblocking: a ProgressChannel, created by setup()
        self.round_no = 1  # the round this worker is in, and when it started it (Unix time)
        self.round_te = time.time()
        self.current_batch_size = batch_size  # samples of the batch being computed
        self._finish_at: float | None = None  # monotonic time the slowest should finish
        self._last_batch = 0  # > 0: the size of the smaller batch computed before syncing
        self._c = 0.0  # the newest capability (seconds per full batch)
        self._sent_before = 0  # holds the channel had sent at the last round's end

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ESync:
        from trainer.state_client import StateClient

        client = StateClient(f"http://{args.ip}:{args.port}", retry_for=args.state_retry)
        return cls(
            args.local_lr,
            args.batch_size,
            args.global_lr,
            client,
            args.epsilon,
            protocol=args.state_protocol,
            fill_last_batch=bool(args.fill_last_batch),
        )

    def describe(self) -> dict[str, object]:
        return {"state_protocol": self.protocol, "fill_last_batch": int(self.fill_last_batch)}

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        assert kv is not None
        if kv.rank == 0:  # before the KVStore barrier, so nobody queries an empty server
            self.client.init(kv.num_workers, self.epsilon)
        super().setup(model, kv)
        self.global_params = [w.copy() for w in model.params]
        if self.protocol == "nonblocking" and self.channel is None:
            from trainer.state_client import ProgressChannel

            self.channel = ProgressChannel(self.client.clone(), self.rank)
            self.client.close()  # reopened only to ask the blocking way (fallback, rejoin)
        self.round_no, self.round_te = 1, time.time()  # round 1 starts now

    def should_sync(self, progress: Progress, stats: RoundStats) -> bool:
        if progress.k == 0:  # Alg. 2 answers compute for k == 0; skip the round trip
            return False
        started = time.perf_counter()
        self._c = progress.c
        if self._last_batch:
            sync = True  # the smaller last batch is done; the server said sync before it
        elif self.channel is None:
            sync = self._ask(stats, progress)
        else:
            sync = self._check_channel(stats, progress)
        if sync and self.fill_last_batch and not self._last_batch:
            self._last_batch = self._fill_size(progress)
            sync = not self._last_batch
        if self.channel is not None:
            self.channel.post(progress.k, progress.c, progress.te, final=sync)
            if sync:  # the holds sent so far (the final one counts in the next round)
                sent = self.channel.sent
                stats.extra["state_messages"] = (
                    stats.extra.get("state_messages", 0) + sent - self._sent_before
                )
                self._sent_before = sent
        stats.query_s += time.perf_counter() - started
        return sync

    def next_batch_size(self, progress: Progress) -> int:
        """The full batch, except the smaller last batch of ``--fill-last-batch``: when the
        server says sync while the slowest worker still computes, the samples that fit in
        the time left (``batch_size * (left - epsilon) / c``), rounded down to a multiple of
        ``min_partial`` (max(8, batch_size / 8): few distinct shapes for the engine); none
        when fewer than ``min_partial`` fit."""
        self.current_batch_size = self._last_batch or self.batch_size
        return self.current_batch_size

    def local_update(self, model: Model) -> None:
        # The mean gradient of the batch just computed (a smaller last one too).
        aggregate.sgd_step(model.params, model.grads, self.lr, 1.0 / self.current_batch_size)

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        deltas = aggregate.deltas(model.params, self.global_params)
        delta_sums, stop_all = self.sum_over_workers(model, deltas, stats, stop)
        aggregate.esync_global_step(
            self.global_params, delta_sums, self.global_lr, self.num_workers
        )
        aggregate.copy_into(model.params, self.global_params)
        mx.nd.waitall()
        return stop_all

    def device_known(self, c: float) -> None:
        self._c = c  # round 1's reset already tells the State Server who is slowest

    def begin_round(self, round_no: int, stats: RoundStats) -> None:
        """Tell the State Server this worker starts ``round_no`` now (its te)."""
        started = time.perf_counter()
        self.round_no, self.round_te = round_no, time.time()
        self._finish_at, self._last_batch = None, 0
        if self.channel is not None:
            self.channel.begin_round(round_no, self.round_te, self._c)
        else:
            self._call(stats, "reset", self.rank, round_no, self.round_te)
        stats.query_s += time.perf_counter() - started

    def close(self) -> None:
        """Stop the non-blocking channel's thread (the loop's end; idempotent)."""
        if self.channel is not None:
            self.channel.close()

    def _ask(self, stats: RoundStats, progress: Progress) -> bool:
        """The blocking query (Alg. 2 as written); with fill-last-batch, keep its ``left``."""
        args = (self.rank, progress.k, progress.c, progress.te)
        if not self.fill_last_batch:
            return self._call(stats, "query", *args) == "sync"
        resp = self._call(stats, "query_response", *args)
        if resp.left is not None:
            self._finish_at = time.monotonic() + resp.left
        return resp.action == "sync"

    def _check_channel(self, stats: RoundStats, progress: Progress) -> bool:
        """Non-blocking: the flag; the blocking query only while the channel is in trouble."""
        assert self.channel is not None
        verdict = self.channel.verdict()
        if verdict is not None:
            self._finish_at = verdict.finish_at
            return True
        if self.channel.trouble() is None:
            return False
        stats.extra["state_fallbacks"] = stats.extra.get("state_fallbacks", 0) + 1
        sync = self._ask(stats, progress)
        self.channel.kick()
        return sync

    def _fill_size(self, progress: Progress) -> int:
        """Samples of a smaller last batch that ends ``epsilon`` before the slowest (0: none)."""
        if self._finish_at is None or progress.c <= 0.0:
            return 0
        budget = self._finish_at - time.monotonic() - self.epsilon
        fit = min(self.batch_size, int(self.batch_size * budget / progress.c))
        return fit // self.min_partial * self.min_partial if fit >= self.min_partial else 0

    def _call(self, stats: RoundStats, method: str, *args: object) -> object:
        """``client.<method>(*args)``; on "not initialised" re-register, then repeat it."""
        from trainer.state_client import StateServerNotInitialised

        for attempt in range(self.MAX_REJOINS_PER_CALL + 1):
            try:
                if attempt:
                    self._rejoin(stats)
                return getattr(self.client, method)(*args)
            except StateServerNotInitialised:
                if attempt == self.MAX_REJOINS_PER_CALL:
                    raise
        raise AssertionError("unreachable")

    def _rejoin(self, stats: RoundStats) -> None:
        """Re-register with a restarted State Server: the run, then this worker's round."""
        self.client.rejoin(self.num_workers, self.epsilon)
        self.client.reset(self.rank, self.round_no, self.round_te)
        stats.extra["state_rejoins"] = stats.extra.get("state_rejoins", 0) + 1
        print(
            f"[worker {self.rank}/{self.num_workers}] the State Server had lost its state: "
            f"re-registered in round {self.round_no}",
            flush=True,
        )


class ASGD(Strategy):
    """ASGD: push gradients, the server applies SGD at once, pull the weights."""

    def server_optimizer(self) -> mx.optimizer.Optimizer:
        """The optimizer the parameter server runs on every push."""
        return mx.optimizer.SGD(learning_rate=self.lr, rescale_grad=1.0 / self.batch_size)

    def describe(self) -> dict[str, object]:
        return {"server_optimizer": type(self.server_optimizer()).__name__}

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
