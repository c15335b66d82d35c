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

The arithmetic is in :mod:`trainer.aggregate`; :mod:`trainer.registry` names the classes. The
asynchronous modes whose server rule needs each push's staleness share :class:`VersionedAsync`
(weights and a version in one array per key) and :class:`ServerRule` (a plain function of
:mod:`trainer.aggregate` run by the parameter server).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar

import mxnet as mx

from argtypes import Option, momentum, non_negative_float, unit_interval
from trainer import aggregate, sharding
from trainer.cluster import ClusterConfigError
from trainer.modes import ESync, KVExchange, ModelAveraging, Sums, init_server
from trainer.pacing import FixedSteps
from trainer.strategy import Model, Strategy, named_arrays
from trainer.types import RoundStats


class Proximal(ModelAveraging):
    """FedProx's proximal term (Li et al. 2020) on the local steps: each minimises
    f(w) + mu/2 ||w - w_global||^2, w -= ll * (g + mu (w - w_global)), with w_global the
    weights of the round's start. ``--mu`` is shared by the modes built on it; left unset it
    is each mode's own class default."""

    mu: ClassVar[float] = 0.0
    options = (
        Option(
            "mu",
            non_negative_float,
            "FedProx's proximal term mu/2 * ||w - w_global||^2 (default: the mode's own)",
            shared=True,
        ),
    )

    def local_update(self, model: Model) -> None:
        # batch_scale: the smaller last batch of --fill-last-batch takes its own mean.
        aggregate.prox_sgd_step(
            model.params, model.grads, self.global_params, self.lr, self.batch_scale(), self.mu
        )


class FedAvg(Proximal):
    """FedAvg: every worker does E local SGD steps from the global model, then
    w <- w + sum_i Δw_i / p (the mean of the local models), on a dist_sync store.

    One round is E local steps; the push/pull waits for the slowest worker, as in the real
    algorithm (fast workers idle). ``--mu`` > 0 adds FedProx's proximal term
    mu/2 ||w - w_global||^2 to the local objective (FedProx); mu = 0 (the default) is FedAvg.
    All workers hold bit-identical global parameters after every round.
    """

    pacing_class = FixedSteps


class ESyncProx(Proximal, ESync):
    """ESync whose local steps add FedProx's proximal term (:class:`Proximal`). It pulls a
    fast worker's ~20 local steps back toward the global model, which limits its drift toward
    its own classes on non-iid data. Everything else (State Server, global step, BatchNorm,
    stop vote) is ESync's.
    """

    mu = 0.3  # docs/reproduction.md: tuning


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

    k_i is one extra array of the exchange, summed like the stop flag, so every worker
    applies the identical step (checksums in the records).
    """

    def extra_arrays(self, model: Model) -> list[mx.nd.NDArray]:
        self.local_steps_done = 0
        self.steps_flag = mx.nd.zeros((1,), model.ctx)
        return [self.steps_flag]

    def local_update(self, model: Model) -> None:
        super().local_update(model)
        self.local_steps_done += 1

    def contribution(self, model: Model) -> tuple[list[mx.nd.NDArray], list[mx.nd.NDArray]]:
        steps, self.local_steps_done = self.local_steps_done, 0
        self.steps_flag[:] = steps
        directions = aggregate.nova_directions(model.params, self.global_params, steps)
        return directions, [self.steps_flag]

    def global_step(self, model: Model, sums: Sums) -> None:
        aggregate.nova_global_step(
            self.global_params,
            sums.values,
            sums.extras[0].asscalar(),
            self.global_lr,
            self.num_workers,
        )


class ESyncM(ESync):
    """ESync with momentum on the global step (FedAvgM's server momentum, Hsu et al. 2019):
    v <- beta v + sum_i Δw_i / p, w <- w + gl v (beta = 0 is Alg. 1).

    On data split by class the slow workers' classes enter Alg. 1 through one or a few
    batches per round, each weighted 1/p, and the fast workers' deltas pull the other way
    every round; what the slow ones add points the same way round after round, so momentum
    accumulates it (up to 1 / (1 - beta) times) while the alternating drift averages out.
    Every worker pulls the same sums and keeps its own v, so v costs no traffic and is
    bit-identical everywhere (checksums). v is in every worker's checkpoint, so a resumed
    run goes on with it.
    """

    server_momentum: ClassVar[float] = 0.8  # docs/reproduction.md
    options = (
        Option(
            "server_momentum",
            momentum,
            "beta of the momentum on the global step, v = beta v + sum(dw) / p, w += gl v",
        ),
    )

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        self.velocity = [mx.nd.zeros(w.shape, w.context, dtype=w.dtype) for w in model.params]
        self.restore_into("velocity", self.velocity)

    def state_arrays(self) -> dict[str, mx.nd.NDArray]:
        return named_arrays(velocity=self.velocity)

    def global_step(self, model: Model, sums: Sums) -> None:
        aggregate.momentum_global_step(
            self.global_params,
            self.velocity,
            sums.values,
            self.server_momentum,
            self.global_lr,
            self.num_workers,
        )


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

    The control variates are extra arrays of the exchange (one more key per weight: twice
    ESync's traffic, still a fraction of ASGD's): every worker pushes [Δw_i, c_i+], pulls the
    sums, applies Alg. 1's global step and sets c = Σ c_i+ / p, so c, like w, is
    bit-identical on every worker. Everything else (State Server, BatchNorm, stop vote) is
    ESync's.
    """

    def extra_arrays(self, model: Model) -> list[mx.nd.NDArray]:
        zeros = [mx.nd.zeros(w.shape, w.context, dtype=w.dtype) for w in model.params]
        self.c_local = zeros
        self.c_global = [c.copy() for c in zeros]
        self.corrections = [c.copy() for c in zeros]  # c - c_i, fixed within a round
        self.gradient_sums = [c.copy() for c in zeros]
        self.steps = 0
        for name, arrays in self._variates().items():
            self.restore_into(name, arrays)
        return [c.copy() for c in zeros]

    def _variates(self) -> dict[str, list[mx.nd.NDArray]]:
        # the gradient sums are zero at every round's end, where checkpoints are taken
        return {"c_local": self.c_local, "c_global": self.c_global, "corrections": self.corrections}

    def state_arrays(self) -> dict[str, mx.nd.NDArray]:
        return named_arrays(**self._variates())

    def local_update(self, model: Model) -> None:
        scale = self.batch_scale()  # the mean gradient, a smaller last batch too
        for total, g in zip(self.gradient_sums, model.grads, strict=True):
            total += g * scale
        self.steps += 1
        aggregate.scaffold_step(model.params, model.grads, self.corrections, self.lr, scale)

    def contribution(self, model: Model) -> tuple[list[mx.nd.NDArray], list[mx.nd.NDArray]]:
        variate = aggregate.control_variate(self.gradient_sums, self.steps, self.c_local)
        # Keep c_i+ before the push: on CPU MXNet's dist KVStore pulls into the very array
        # that was pushed (KVExchange), so ``variate`` holds the sum afterwards.
        aggregate.copy_into(self.c_local, variate)
        return aggregate.deltas(model.params, self.global_params), variate

    def global_step(self, model: Model, sums: Sums) -> None:
        super().global_step(model, sums)
        aggregate.average_into(self.c_global, sums.extras, self.num_workers)
        for correction, c, c_i in zip(self.corrections, self.c_global, self.c_local, strict=True):
            correction[:] = c - c_i
        for total in self.gradient_sums:
            total[:] = 0.0
        self.steps = 0


@mx.optimizer.register
class ServerRule(mx.optimizer.Optimizer):
    """A server update of the versioned modes as an MXNet optimizer (it runs on the dist_async
    parameter server, pickled there by ``kv.set_optimizer``).

    MXNet hands the server's updater (key, pushed, stored). ``rule(stored, pushed, state,
    **params)`` is a plain function of :mod:`trainer.aggregate` that updates ``stored`` in
    place and returns what it did (kept per key in ``last``, for tests); ``state(stored)``,
    when given, makes a key's server-side state on its first push (FedBuff's buffer).
    """

    def __init__(
        self,
        rule: Callable[..., object],
        state: Callable[[mx.nd.NDArray], object] | None = None,
        params: dict[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.rule, self.state, self.params = rule, state, dict(params or {})
        self.last: dict[int, object] = {}

    @property
    def name(self) -> str:
        """``ServerRule(<rule>)``: the rule's function name, for meta.json."""
        return f"ServerRule({self.rule.__name__})"

    def create_state(self, index: int, weight: mx.nd.NDArray) -> object:
        return self.state(weight) if self.state is not None else None

    def update(self, index, weight, grad, state) -> None:
        self.last[index] = self.rule(weight, grad, state, **self.params)


def check_versions_stay_whole(mode: str, sizes: list[int]) -> None:
    """A versioned key must sit whole on one server: MXNet splits an array of at least the
    big-array bound over every server, and each server's rule would then see a slice whose
    last element is a weight, not the version (trainer/sharding.py). ClusterConfigError (exit
    code 2, not retried) naming the bound that keeps them whole."""
    servers, bound, largest = sharding.servers_from(), sharding.bound_from(), max(sizes)
    if servers > 1 and largest >= bound:
        raise ClusterConfigError(
            f"{mode} keeps each key's version in its last element, but with {servers} servers "
            f"MXNet splits arrays of {bound:,} elements or more over all of them (its largest "
            f"key has {largest:,}): give launch.py --bigarray-bound {largest + 1} or more "
            f"({sharding.BOUND_VAR}), or one server"
        )


class VersionedAsync(Strategy):
    """Base of the dist_async modes whose server rule needs each push's staleness.

    **How the staleness reaches the server.** t is the number of server updates since this
    worker pulled. The server rule (:class:`ServerRule`) sees only the pushed and the stored
    array of one key, so the version travels inside them: every key stores its flattened
    weight plus one element, the number of updates applied to it. A worker pulls weights +
    version into one buffer per key, trains E local steps (:class:`~trainer.pacing.FixedSteps`),
    writes ``outgoing`` (its weights, or its Δw) into the buffer in front of the version it
    pulled, and pushes the buffer; the server computes t = stored version - pushed version
    exactly, per key. Weights and version are one array, so a pull can never see one without
    the other (no race between two keys or two messages), nothing else is sent, and the cost
    is 4 bytes per key. (A server-side per-worker counter could not work: the updater is not
    told which worker pushed.) BatchNorm statistics are handled like weights.
    """

    lr_flag = "local_lr"
    pacing_class = FixedSteps

    @abstractmethod
    def server_optimizer(self) -> ServerRule:
        """The rule the parameter server runs on every push."""

    def outgoing(self, index: int) -> mx.nd.NDArray:
        """What is pushed of array ``index`` (params then aux): the local array itself."""
        return self.arrays[index]

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "server_optimizer": self.server_optimizer().name}

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        super().setup(model, kv)
        assert kv is not None, f"{type(self).__name__} needs a distributed KVStore"
        self.arrays = model.params + model.aux
        self.pulled = [a.copy() for a in self.arrays]
        self.buffers = [mx.nd.zeros((a.size + 1,), a.context, dtype=a.dtype) for a in self.arrays]
        check_versions_stay_whole(type(self).__name__, [b.size for b in self.buffers])
        self._pack(self.arrays)  # rank 0's weights, version 0 (or the checkpoint's)
        self.restore_into("version", [buf[buf.size - 1 :] for buf in self.buffers])
        self.exchange = KVExchange(kv, self.buffers)
        init_server(kv, self.exchange.keys, self.buffers, self.server_optimizer())
        kv.pull(self.exchange.keys, out=self.buffers)
        self._unpack()

    def local_update(self, model: Model) -> None:
        aggregate.sgd_step(model.params, model.grads, self.lr, self.batch_scale())

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        outgoing = [self.outgoing(i) for i in range(len(self.arrays))]
        self._pack(outgoing)  # in front of the versions pulled last time
        self.exchange(self.buffers, self.buffers, stats)
        self._unpack()
        stats.extra["server_version"] = self.version()
        return stop

    def state_arrays(self) -> dict[str, mx.nd.NDArray]:
        """The version of every key as this worker last pulled it (rank 0's seed the
        restarted server's counters)."""
        return named_arrays(version=[buf[buf.size - 1 :] for buf in self.buffers])

    def version(self) -> int:
        """The server version of key 0 in the last pull."""
        n = self.buffers[0].size - 1
        return int(self.buffers[0][n:].asscalar())

    def _pack(self, values: list[mx.nd.NDArray]) -> None:
        for value, buf in zip(values, self.buffers, strict=True):
            buf[0 : value.size] = value.reshape((-1,))

    def _unpack(self) -> None:
        for array, pulled, buf in zip(self.arrays, self.pulled, self.buffers, strict=True):
            buf[0 : array.size].reshape(array.shape).copyto(array)
            array.copyto(pulled)
        mx.nd.waitall()


class FedAsync(VersionedAsync):
    """FedAsync (Xie et al. 2019): E local steps from the pulled model, push it, and the
    parameter server mixes it in at once, x <- (1 - a_t) x + a_t x_new, a_t = alpha * s(t)
    (:func:`trainer.aggregate.fedasync_mix`; the staleness t as :class:`VersionedAsync`)."""

    alpha: ClassVar[float] = 0.6  # Xie et al. 2019
    staleness: ClassVar[str] = "polynomial"
    staleness_a: ClassVar[float] = 0.5
    staleness_b: ClassVar[float] = 4.0
    options = (
        Option("alpha", unit_interval, "mixing weight alpha in (0, 1]"),
        Option(
            "staleness",
            choices=aggregate.STALENESS_FUNCTIONS,
            help="staleness function s(t): constant 1, polynomial (t+1)^-a, hinge "
            "(1 if t <= b else 1/(a(t-b)+1))",
        ),
        Option("staleness_a", non_negative_float, "a of the polynomial / hinge staleness function"),
        Option("staleness_b", non_negative_float, "b of the hinge staleness function"),
    )

    def server_optimizer(self) -> ServerRule:
        aggregate.staleness_weight(self.staleness, 0, self.staleness_a, self.staleness_b)
        params = {
            "alpha": self.alpha,
            "kind": self.staleness,
            "a": self.staleness_a,
            "b": self.staleness_b,
        }
        return ServerRule(aggregate.fedasync_mix, params=params)
