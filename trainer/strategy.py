"""The strategy interface: what a training mode supplies to the one training loop (loop.py).

The loop owns data, timing, the emulated slowdown, evaluation and records. A strategy answers
four questions, each a documented hook below: is it time to synchronise (``should_sync``), what
happens to the local replica after a backward pass (``local_update``), how a round ends
(``synchronise``), and what to do when a new round starts (``begin_round``). One subclass per
algorithm lives in :mod:`trainer.modes`; the maths they share are plain functions in
:mod:`trainer.aggregate`; :mod:`trainer.registry` maps mode names to the classes.
"""

from __future__ import annotations

import argparse
import time
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import mxnet as mx

from trainer.records import RoundStats


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


class Strategy(ABC):
    """A training mode. Subclass it, implement ``synchronise``, override the hooks you need.

    Lifecycle on every worker: ``from_args`` -> ``setup`` (once, collective) -> repeat
    { ``should_sync``? ``synchronise`` then ``begin_round`` : compute a batch of
    ``next_batch_size`` samples, ``local_update`` }.
    """

    synchronous: ClassVar[bool] = False
    """True when all workers hold bit-identical parameters after every round (the loop then
    writes a checksum of them into the records)."""

    def __init__(self, lr: float, batch_size: int) -> None:
        self.lr = lr
        self.batch_size = batch_size
        self.rank = 0
        self.num_workers = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Strategy:
        """Build the strategy from main.py's flags (override to read more of them)."""
        return cls(args.lr, args.batch_size)

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        """Called once before training, with the KVStore of the registry's ``kv_type``
        (None when standalone). Collective in the distributed modes: every worker calls it;
        rank 0's initial parameters must end up on every worker."""
        if kv is not None:
            self.rank, self.num_workers = kv.rank, kv.num_workers

    def should_sync(self, progress: Progress, stats: RoundStats) -> bool:
        """Whether the next step is a synchronisation rather than another local batch.

        Default: after every batch (one local iteration per round).
        """
        return progress.k >= 1

    def next_batch_size(self, progress: Progress) -> int:
        """How many samples the next local iteration computes; called before every batch.

        Default: the full ``batch_size``. A smaller batch (ESync's ``--fill-last-batch``)
        holds the next samples of the worker's data order, its gradients in ``model.grads``
        are sums over those samples, so ``local_update`` must scale by the size returned here
        to take their mean (ESync keeps it in ``current_batch_size``). The loop does not
        update ``progress.c`` (seconds per full batch) from a smaller batch.
        """
        return self.batch_size

    def local_update(self, model: Model) -> None:
        """Called after each backward pass, gradients in ``model.grads``.

        Default: nothing, the update happens in ``synchronise`` (or on the server).
        """
        return None

    @abstractmethod
    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        """End the current round; ``stop`` is this worker's wish to stop.

        Add communication time and bytes to ``stats``. Return True when the run stops; in a
        synchronous mode every worker must return the same value (vote through the exchange).
        """

    def describe(self) -> dict[str, object]:
        """Facts about the algorithm for meta.json (e.g. the server optimizer); default none."""
        return {}

    def begin_round(self, round_no: int, stats: RoundStats) -> None:
        """Called just before the first batch of round ``round_no`` (after its records)."""
        return None

    def device_known(self, c: float) -> None:
        """Under device emulation, the device's seconds per batch, known before training
        starts (called once, before the first ``begin_round``). Default: nothing."""
        return None
