"""The journal paper's comparison set: federated baselines and ESync variants for non-iid data.

* :class:`FedAvg` (McMahan et al. 2017; FedProx, Li et al. 2020, with ``--mu``): E local steps
  on every worker, then the local models are averaged through the dist_sync KVStore.
* :class:`FedAsync` (Xie et al. 2019): E local steps, then the parameter server mixes the
  worker's model into the global one at once, weighted by its staleness.
* :class:`ESyncNova`: ESync (paper Alg. 1) whose global step is FedNova's normalised average
  (Wang et al. 2020), so a fast worker's many local steps do not outweigh a slow one.
* :class:`ESyncProx`: ESync whose local steps add FedProx's proximal term.
* :class:`ESyncM`: ESync with momentum on the global step (FedAvgM's server momentum).
* :class:`ESyncScaffold`: ESync whose local steps are corrected by SCAFFOLD's control
  variates (Karimireddy et al. 2020), so fast workers stop drifting toward their own classes.

The arithmetic is in :mod:`trainer.aggregate`; :mod:`trainer.registry` names the classes.
"""

from __future__ import annotations

import argparse

import mxnet as mx

import config
from trainer import aggregate
from trainer.modes import ESync, KVExchange, _Summing
from trainer.records import RoundStats
from trainer.strategy import Model, Progress, Strategy


def _mu(args: argparse.Namespace, default: float) -> float:
    """``--mu``, or the mode's own default when the flag is left at None (config.PROX_MU)."""
    return default if args.mu is None else float(args.mu)


class FedAvg(_Summing):
    """FedAvg: every worker does E local SGD steps from the global model, then
    w <- w + sum_i Δw_i / p (the mean of the local models), on a dist_sync store.

    One round is E local steps; the push/pull waits for the slowest worker, as in the real
    algorithm (fast workers idle). ``--mu`` > 0 adds FedProx's proximal term
    mu/2 ||w - w_global||^2 to the local objective (FedProx); mu = 0 (the default) is FedAvg.
    The averaging runs through :meth:`_Summing.sum_over_workers` with the BatchNorm statistics
    and the stop vote, so all workers hold bit-identical global parameters after every round.
    """

    def __init__(self, lr: float, batch_size: int, local_steps: int, mu: float = 0.0) -> None:
        super().__init__(lr, batch_size)
        self.local_steps = local_steps
        self.mu = mu

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FedAvg:
        return cls(args.local_lr, args.batch_size, args.local_steps, _mu(args, config.FEDAVG_MU))

    def describe(self) -> dict[str, object]:
        return {"local_steps": self.local_steps, "mu": self.mu}

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        self.global_params = [w.copy() for w in model.params]

    def should_sync(self, progress: Progress, stats: RoundStats) -> bool:
        return progress.k >= self.local_steps

    def local_update(self, model: Model) -> None:
        aggregate.prox_sgd_step(
            model.params, model.grads, self.global_params, self.lr, 1.0 / self.batch_size, self.mu
        )

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        deltas = aggregate.deltas(model.params, self.global_params)
        delta_sums, stop_all = self.sum_over_workers(model, deltas, stats, stop)
        aggregate.esync_global_step(self.global_params, delta_sums, 1.0, self.num_workers)
        aggregate.copy_into(model.params, self.global_params)
        mx.nd.waitall()
        return stop_all


class ESyncProx(ESync):
    """ESync whose local steps minimise f(w) + mu/2 ||w - w_global||^2 (FedProx's proximal
    term): each local step is w -= ll * (g + mu (w - w_global)), with w_global the weights of
    the round's start. It pulls a fast worker's ~20 local steps back toward the global model,
    which limits its drift toward its own classes on non-iid data. Everything else (State
    Server, global step, BatchNorm, stop vote) is ESync's.
    """

    mu = config.ESYNC_PROX_MU

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ESyncProx:
        mode = super().from_args(args)
        mode.mu = _mu(args, config.ESYNC_PROX_MU)
        return mode

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "mu": self.mu}

    def local_update(self, model: Model) -> None:
        # current_batch_size: the smaller last batch of --fill-last-batch takes its own mean.
        scale = 1.0 / self.current_batch_size
        aggregate.prox_sgd_step(
            model.params, model.grads, self.global_params, self.lr, scale, self.mu
        )


class ESyncNova(ESync):
    """ESync with FedNova's normalised averaging (Wang et al. 2020).

    Alg. 1 averages Δw_i with equal weight, so a fast worker's k_i ≈ 20 local steps count 20
    times as much as the slowest worker's one: on non-iid data the global model drifts toward
    the fast workers' classes (FedNova's "objective inconsistency"). Here each worker
    contributes its per-step direction d_i = Δw_i / k_i and k_i, and the global step is
    w += gl * (Σ_i p_i d_i) * (Σ_i p_i k_i), p_i = 1/p (the shards are equal: utils.partition).

    With plain SGD FedNova's normaliser ||a_i||_1 (the 1-norm of the local solver's coefficient
    vector a_i) is k_i. Neither momentum nor weight decay is used here; with momentum rho the
    normaliser would be ||a_i||_1 = [k_i - rho (1 - rho^k_i) / (1 - rho)] / (1 - rho), with
    weight decay (or a proximal term) lambda: [1 - (1 - ll lambda)^k_i] / (ll lambda).
    A smaller last batch (``--fill-last-batch``) counts as one step: it is one SGD step of
    the usual size on that batch's mean gradient, so its coefficient in a_i is 1 as well.

    k_i rides in the same push/pull as the directions: one more scalar key, summed like the
    stop flag, so every worker applies the identical step (checksums in the records).
    """

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)  # ESync's: State Server, keys [params, aux, stop flag], w_0
        self.local_steps_done = 0
        self.steps_flag = mx.nd.zeros((1,), model.ctx)
        key = len(self.exchange.keys)  # the first key _Summing left free
        kv.init([key], [self.steps_flag])
        # sum_over_workers pushes values + aux + [stop]; the values here are the directions
        # and then k_i, so the exchange sends k_i to its own key right after the weights.
        n = len(model.params)
        template = model.params + [self.steps_flag] + model.aux + [self.stop_flag]
        self.exchange = KVExchange(kv, template)
        self.exchange.keys = [*range(n), key, *range(n, key)]
        self.sums = [mx.nd.zeros(a.shape, a.context, dtype=a.dtype) for a in template]

    def local_update(self, model: Model) -> None:
        super().local_update(model)
        self.local_steps_done += 1

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        steps, self.local_steps_done = self.local_steps_done, 0
        self.steps_flag[:] = steps
        directions = aggregate.nova_directions(model.params, self.global_params, steps)
        sums, stop_all = self.sum_over_workers(model, directions + [self.steps_flag], stats, stop)
        aggregate.nova_global_step(
            self.global_params, sums[:-1], sums[-1].asscalar(), self.global_lr, self.num_workers
        )
        aggregate.copy_into(model.params, self.global_params)
        mx.nd.waitall()
        return stop_all


class ESyncM(ESync):
    """ESync with momentum on the global step (FedAvgM's server momentum, Hsu et al. 2019):
    v <- beta v + sum_i Δw_i / p, w <- w + gl v (beta = 0 is Alg. 1).

    On data split by class the slow workers' classes enter Alg. 1 through one or a few
    batches per round, each weighted 1/p, and the fast workers' deltas pull the other way
    every round; what the slow ones add points the same way round after round, so momentum
    accumulates it (up to 1 / (1 - beta) times) while the alternating drift averages out.
    Every worker pulls the same sums and keeps its own v, so v costs no traffic and is
    bit-identical everywhere (checksums). v is not in checkpoints: a resumed run restarts it
    from 0, like DC-ASGD's server state.
    """

    momentum = config.ESYNC_M_MOMENTUM

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ESyncM:
        mode = super().from_args(args)
        chosen = args.server_momentum
        mode.momentum = config.ESYNC_M_MOMENTUM if chosen is None else float(chosen)
        return mode

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "server_momentum": self.momentum}

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        self.velocity = [mx.nd.zeros(w.shape, w.context, dtype=w.dtype) for w in model.params]

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        deltas = aggregate.deltas(model.params, self.global_params)
        delta_sums, stop_all = self.sum_over_workers(model, deltas, stats, stop)
        aggregate.momentum_global_step(
            self.global_params,
            self.velocity,
            delta_sums,
            self.momentum,
            self.global_lr,
            self.num_workers,
        )
        aggregate.copy_into(model.params, self.global_params)
        mx.nd.waitall()
        return stop_all


class ESyncScaffold(ESync):
    """ESync whose local steps are corrected by SCAFFOLD's control variates (Karimireddy
    et al. 2020): w -= ll * (g + c - c_i), with c_i this worker's mean gradient of its last
    round and c the mean of every worker's.

    On data split by class the 16x worker's classes enter Alg. 1 through one batch per round,
    weighted 1/p; the fast workers' ~20 local steps meanwhile drift toward their own classes.
    With the correction every fast local step also carries c's share of the other workers'
    gradients (the slow one's included), so the replicas stop drifting apart and the slow
    workers' classes are learnt at every local step, not once per round. c_i+ is SCAFFOLD's
    option II, which with plain SGD is simply the mean of the gradients this worker computed
    in the round (:func:`trainer.aggregate.control_variate`); a smaller last batch
    (``--fill-last-batch``) contributes its own mean gradient like any other step.

    The control variates ride in ESync's push/pull (one more key per weight: twice ESync's
    traffic, still a fraction of ASGD's): every worker pushes [Δw_i, c_i+], pulls the sums,
    applies Alg. 1's global step and sets c = Σ c_i+ / p, so c, like w, is bit-identical on
    every worker. Everything else (State Server, BatchNorm, stop vote) is ESync's.
    """

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)  # ESync's: State Server, keys [params, aux, stop flag], w_0
        zeros = [mx.nd.zeros(w.shape, w.context, dtype=w.dtype) for w in model.params]
        self.c_local = zeros
        self.c_global = [c.copy() for c in zeros]
        self.corrections = [c.copy() for c in zeros]  # c - c_i, fixed within a round
        self.gradient_sums = [c.copy() for c in zeros]
        self.steps = 0
        n, first_free = len(model.params), len(self.exchange.keys)
        variate_keys = list(range(first_free, first_free + n))
        kv.init(variate_keys, zeros)
        template = model.params + zeros + model.aux + [self.stop_flag]
        self.exchange = KVExchange(kv, template)
        self.exchange.keys = [*range(n), *variate_keys, *range(n, first_free)]
        self.sums = [mx.nd.zeros(a.shape, a.context, dtype=a.dtype) for a in template]

    def local_update(self, model: Model) -> None:
        scale = 1.0 / self.current_batch_size  # the mean gradient, a smaller last batch too
        for total, g in zip(self.gradient_sums, model.grads, strict=True):
            total += g * scale
        self.steps += 1
        aggregate.scaffold_step(model.params, model.grads, self.corrections, self.lr, scale)

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        variate = aggregate.control_variate(self.gradient_sums, self.steps, self.c_local)
        # Keep c_i+ before the push: on CPU MXNet's dist KVStore pulls into the very array
        # that was pushed (KVExchange), so ``variate`` holds the sum afterwards.
        aggregate.copy_into(self.c_local, variate)
        deltas = aggregate.deltas(model.params, self.global_params)
        sums, stop_all = self.sum_over_workers(model, deltas + variate, stats, stop)
        n = len(deltas)
        aggregate.esync_global_step(self.global_params, sums[:n], self.global_lr, self.num_workers)
        aggregate.copy_into(model.params, self.global_params)
        aggregate.average_into(self.c_global, sums[n:], self.num_workers)
        for correction, c, c_i in zip(self.corrections, self.c_global, self.c_local, strict=True):
            correction[:] = c - c_i
        for total in self.gradient_sums:
            total[:] = 0.0
        self.steps = 0
        mx.nd.waitall()
        return stop_all


@mx.optimizer.register
class FedAsyncMixer(mx.optimizer.Optimizer):
    """FedAsync's server update as an MXNet optimizer (runs on the dist_async server).

    MXNet hands the server's updater (key, pushed, stored). Each stored value is the key's
    flattened weight plus one element, the key's version (how many updates the server has
    applied to it); a worker pushes its flattened local weights plus the version it pulled.
    The update is :func:`trainer.aggregate.fedasync_mix`: staleness = stored version - pushed
    version, a_t = alpha * s(staleness), x <- (1 - a_t) x + a_t x_new, version + 1.
    """

    def __init__(
        self,
        alpha: float = config.FEDASYNC_ALPHA,
        staleness: str = config.FEDASYNC_STALENESS,
        a: float = config.FEDASYNC_STALENESS_A,
        b: float = config.FEDASYNC_STALENESS_B,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        aggregate.staleness_weight(staleness, 0, a, b)  # an unknown function fails here
        self.alpha, self.staleness, self.a, self.b = alpha, staleness, a, b
        self.last: dict[int, tuple[int, float]] = {}  # key -> (staleness, a_t) of its last push

    def create_state(self, index: int, weight: mx.nd.NDArray) -> None:
        return None

    def update(self, index, weight, grad, state) -> None:
        self.last[index] = aggregate.fedasync_mix(
            weight, grad, self.alpha, self.staleness, self.a, self.b
        )


class FedAsync(Strategy):
    """FedAsync (Xie et al. 2019): E local steps from the pulled model, push it, and the
    parameter server mixes it in at once, x <- (1 - a_t) x + a_t x_new, a_t = alpha * s(t).

    **How the staleness reaches the server.** t is the number of server updates since this
    worker pulled. The server optimizer (:class:`FedAsyncMixer`, pickled to the server by
    ``kv.set_optimizer``) sees only the pushed and the stored array of one key, so the version
    travels inside them: every key stores its flattened weight plus one element, the number of
    updates applied to it. A worker pulls weights + version into one buffer per key, trains,
    writes its weights into the buffer in front of the version it pulled, and pushes the
    buffer; the server computes t = stored version - pushed version exactly, per key, and
    increments the version. Weights and version are one array, so a pull can never see one
    without the other (no race between two keys or two messages), nothing else is sent, and
    the cost is 4 bytes per key. (A server-side per-worker counter could not work: the
    updater is not told which worker pushed.) BatchNorm statistics are mixed like weights.
    """

    def __init__(
        self,
        lr: float,
        batch_size: int,
        local_steps: int,
        alpha: float = config.FEDASYNC_ALPHA,
        staleness: str = config.FEDASYNC_STALENESS,
        a: float = config.FEDASYNC_STALENESS_A,
        b: float = config.FEDASYNC_STALENESS_B,
    ) -> None:
        super().__init__(lr, batch_size)
        self.local_steps = local_steps
        self.mixing = {"alpha": alpha, "staleness": staleness, "a": a, "b": b}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FedAsync:
        return cls(
            args.local_lr,
            args.batch_size,
            args.local_steps,
            args.alpha,
            args.staleness,
            args.staleness_a,
            args.staleness_b,
        )

    def server_optimizer(self) -> FedAsyncMixer:
        """The optimizer the parameter server runs on every push."""
        return FedAsyncMixer(**self.mixing)

    def describe(self) -> dict[str, object]:
        return {
            "server_optimizer": type(self.server_optimizer()).__name__,
            "local_steps": self.local_steps,
            **{f"fedasync_{k}": v for k, v in self.mixing.items()},
        }

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        assert kv is not None, "FedAsync needs a distributed KVStore"
        self.arrays = model.params + model.aux
        self.buffers = [mx.nd.zeros((a.size + 1,), a.context, dtype=a.dtype) for a in self.arrays]
        self._pack()  # version 0
        self.exchange = KVExchange(kv, self.buffers)
        kv.init(self.exchange.keys, self.buffers)
        if kv.rank == 0:  # one optimizer on the server, set once, before anyone pushes
            kv.set_optimizer(self.server_optimizer())
        kv._barrier()
        kv.pull(self.exchange.keys, out=self.buffers)
        self._unpack()

    def should_sync(self, progress: Progress, stats: RoundStats) -> bool:
        return progress.k >= self.local_steps

    def local_update(self, model: Model) -> None:
        aggregate.sgd_step(model.params, model.grads, self.lr, 1.0 / self.batch_size)

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        self._pack()  # the local weights, in front of the versions pulled last time
        self.exchange(self.buffers, self.buffers, stats)
        self._unpack()
        stats.extra["server_version"] = self.version()
        return stop

    def version(self) -> int:
        """The server version of key 0 in the last pull."""
        n = self.buffers[0].size - 1
        return int(self.buffers[0][n:].asscalar())

    def _pack(self) -> None:
        for array, buf in zip(self.arrays, self.buffers, strict=True):
            buf[0 : array.size] = array.reshape((-1,))

    def _unpack(self) -> None:
        for array, buf in zip(self.arrays, self.buffers, strict=True):
            buf[0 : array.size].reshape(array.shape).copyto(array)
        mx.nd.waitall()
