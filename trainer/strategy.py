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
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import mxnet as mx

from argtypes import Option
from trainer.pacing import EveryBatch, Pacing
from trainer.types import LocalProgress, RoundStats


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


def named_arrays(**groups: list[mx.nd.NDArray]) -> dict[str, mx.nd.NDArray]:
    """``state_arrays``' names: ``velocity=[v0, v1]`` -> {"velocity/0": v0, "velocity/1": v1}."""
    return {f"{name}/{i}": a for name, arrays in groups.items() for i, a in enumerate(arrays)}


class Strategy(ABC):
    """A training mode. Subclass it, implement ``synchronise``, override the hooks you need.

    Lifecycle on every worker: ``from_args`` -> ``setup`` (once, collective) -> repeat
    { ``should_sync``? ``synchronise`` then ``begin_round`` : compute a batch of
    ``next_batch_size`` samples, ``local_update`` } -> ``close``.

    **Flags and hyperparameters.** A class declares the hyperparameters it introduces in
    ``options``, one :class:`argtypes.Option` each, with the default as a class attribute of
    the same name. ``add_arguments`` (as a Django management command has) adds their flags;
    a class with an unusual flag may override it. main.py's parser calls ``add_arguments`` of
    every class that declares options, once, for all registered modes (trainer/options.py);
    ``from_args`` then sets every hyperparameter from the parsed flags (a flag left at None
    keeps the class's default, so two modes can share a flag with different defaults), and
    ``describe`` writes them into meta.json.

    **Local steps** are the ``pacing`` policy's (:mod:`trainer.pacing`): ``should_sync``,
    ``next_batch_size``, ``begin_round`` and ``device_known`` delegate to it by default; a
    class chooses its policy with ``pacing_class``.
    """

    synchronous: ClassVar[bool] = False
    """True when all workers hold bit-identical parameters after every round (the loop then
    writes a checksum of them into the records)."""

    pacing_class: ClassVar[type[Pacing]] = EveryBatch
    """The local-step policy ``from_args`` builds."""

    lr_flag: ClassVar[str] = "lr"
    """The flag (dest) of the learning rate of this mode's SGD steps: ``lr`` (-l) or
    ``local_lr`` (-ll, the local steps of the model-averaging modes)."""

    options: ClassVar[tuple[Option, ...]] = ()
    """The hyperparameters this class introduces and their flags (its bases' are added)."""

    def __init__(
        self, lr: float, batch_size: int, pacing: Pacing | None = None, **hyper: object
    ) -> None:
        self.lr = lr
        self.batch_size = batch_size
        self.pacing = pacing if pacing is not None else EveryBatch(batch_size)
        self.current_batch_size = batch_size  # samples of the batch being computed
        self.rank = 0
        self.num_workers = 1
        unknown = sorted(set(hyper) - set(self.hyperparameter_names()))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no hyperparameter {', '.join(unknown)}")
        for name, value in hyper.items():
            setattr(self, name, value)

    @classmethod
    def hyperparameters(cls) -> tuple[Option, ...]:
        """Every hyperparameter of this class and its bases, bases first."""
        found: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            for option in klass.__dict__.get("options", ()):
                found.setdefault(option.name, option)
        return tuple(found.values())

    @classmethod
    def hyperparameter_names(cls) -> tuple[str, ...]:
        return tuple(option.name for option in cls.hyperparameters())

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the flags of the hyperparameters this class introduces (not its bases')."""
        for option in cls.__dict__.get("options", ()):
            option.add_to(parser, cls)

    @classmethod
    def flag_owners(cls) -> list[type]:
        """The classes whose ``add_arguments`` this mode's flags come from: this class, its
        bases and its pacing policy's classes, each that declares options itself."""
        chain = [*cls.__mro__, *cls.pacing_class.__mro__]
        own = ("options", "add_arguments")
        return [
            k for k in chain if k not in (Strategy, Pacing) and any(a in k.__dict__ for a in own)
        ]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Strategy:
        """Build the strategy from main.py's flags: learning rate, batch size, the pacing
        policy and every hyperparameter whose flag is not None."""
        hyper = {o.name: getattr(args, o.dest) for o in cls.hyperparameters()}
        hyper = {n: v for n, v in hyper.items() if v is not None}
        pacing = cls.pacing_class.from_args(args)
        return cls(getattr(args, cls.lr_flag), args.batch_size, pacing, **hyper)

    def setup(self, model: Model, kv: mx.kv.KVStore | None) -> None:
        """Called once before training, with the KVStore of the registry's ``kv_type``
        (None when standalone). Collective in the distributed modes: every worker calls it;
        rank 0's initial parameters must end up on every worker. Subclasses call this first:
        it sets up the pacing (the State Server's init happens before any KVStore barrier)."""
        if kv is not None:
            self.rank, self.num_workers = kv.rank, kv.num_workers
        self.pacing.setup(self.rank, self.num_workers)

    def state_arrays(self) -> dict[str, mx.nd.NDArray]:
        """The algorithm's own state that a checkpoint must keep, name -> array (control
        variates, velocity, version counters); after ``setup``. None by default: the
        parameters and the data order are the loop's."""
        return {}

    def resume_from(self, saved: dict[str, mx.nd.NDArray]) -> None:
        """Before ``setup``: the ``state_arrays`` a checkpoint saved, for ``setup`` to take
        back with :meth:`restore_into`."""
        self.saved_state = dict(saved)

    def restore_into(self, name: str, arrays: list[mx.nd.NDArray]) -> None:
        """Copy the saved ``name/<i>`` arrays into ``arrays`` (nothing when the checkpoint has
        none: a fresh start, or a checkpoint of a version that did not save them)."""
        saved = getattr(self, "saved_state", {})
        for i, array in enumerate(arrays):
            value = saved.get(f"{name}/{i}")
            if value is not None:
                if value.shape != array.shape:
                    raise ValueError(
                        f"the checkpoint's {name}/{i} has shape {value.shape}, this run's "
                        f"{array.shape}"
                    )
                value.copyto(array)

    def should_sync(self, progress: LocalProgress, stats: RoundStats) -> bool:
        """Whether the next step is a synchronisation rather than another local batch
        (the pacing policy's answer)."""
        return self.pacing.should_sync(progress, stats)

    def next_batch_size(self, progress: LocalProgress) -> int:
        """How many samples the next local iteration computes; called before every batch.

        The pacing policy's answer (the full ``batch_size`` but for ESync's
        ``--fill-last-batch``), kept in ``current_batch_size``: the gradients in
        ``model.grads`` are sums over that many samples, so ``local_update`` scales by it
        (:meth:`batch_scale`) to take their mean. The loop does not update ``progress.c``
        (seconds per full batch) from a smaller batch.
        """
        self.current_batch_size = self.pacing.next_batch_size(progress)
        return self.current_batch_size

    def batch_scale(self) -> float:
        """1 / the samples of the batch just computed: turns summed gradients into means."""
        return 1.0 / self.current_batch_size

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
        """Facts about the algorithm for meta.json: its hyperparameters and its pacing's."""
        own = {name: getattr(self, name) for name in self.hyperparameter_names()}
        return {**self.pacing.describe(), **own}

    def begin_round(self, round_no: int, stats: RoundStats) -> None:
        """Called just before the first batch of round ``round_no`` (after its records)."""
        self.pacing.begin_round(round_no, stats)

    def device_known(self, c: float) -> None:
        """Under device emulation, the device's seconds per batch, known before training
        starts (called once, before the first ``begin_round``)."""
        self.pacing.device_known(c)

    def close(self) -> None:
        """The loop's end: release the pacing's threads and connections (idempotent)."""
        self.pacing.close()
