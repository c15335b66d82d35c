"""Local-step policies: when a worker's round of local iterations ends.

A strategy (:mod:`trainer.strategy`) says how a round's updates are aggregated; its pacing
says how many local iterations a round has. Three policies exist:

* :class:`EveryBatch`: one batch per round (SSGD, ASGD, standalone training).
* :class:`FixedSteps`: E local steps per round (``--local-steps``: FedAvg, FedAsync, FedBuff).
* :class:`StateServerPacing`: the client side of the State Server protocol (paper Alg. 2):
  before every local iteration it asks the State Server "compute or sync?", blocking or
  through the non-blocking :class:`~trainer.state_client.ProgressChannel`, re-registers with a
  State Server that restarted, and with ``--fill-last-batch`` sizes a smaller last batch to
  the time the slowest worker still needs.

The rules a worker applies to its own measurements (the moving average of c, the size of a
smaller last batch) are plain functions here, so ``bench/simulate.py`` runs the same rules.
Each policy owns its command-line flags (``add_arguments``), as the strategies do.
"""

from __future__ import annotations

import argparse
import time
from typing import ClassVar

from argtypes import Option, flag01, non_negative_float, positive_int
from trainer.state_client import (
    ProgressChannel,
    StateClient,
    StateServerNotInitialised,
)
from trainer.types import LocalProgress, RoundStats

SMOOTHING = 0.5  # weight of the newest full batch in the moving average of c
FILL_MIN_SAMPLES = 8  # the smallest last batch: max(this, batch / 8) samples, else none
PROTOCOLS = ("blocking", "nonblocking")


def smoothed(previous_c: float, batch_s: float) -> float:
    """The capability c after a full batch of ``batch_s`` seconds (0 before the first)."""
    return batch_s if previous_c == 0.0 else SMOOTHING * batch_s + (1.0 - SMOOTHING) * previous_c


def min_partial(batch_size: int) -> int:
    """The granularity of a smaller last batch: max(8, batch_size / 8), at most the batch
    (few distinct shapes keep MXNet's engine from re-planning often)."""
    return min(batch_size, max(FILL_MIN_SAMPLES, -(-batch_size // 8)))


def partial_batch(budget_s: float, c: float, batch_size: int) -> int:
    """Samples of a smaller last batch that fits in ``budget_s`` seconds at ``c`` seconds per
    full batch, rounded down to :func:`min_partial`; 0 when fewer fit."""
    if c <= 0.0:
        return 0
    step = min_partial(batch_size)
    fit = min(batch_size, int(batch_size * budget_s / c))
    return fit // step * step if fit >= step else 0


class Pacing:
    """The local-step policy of a strategy; the default hooks are :class:`EveryBatch`'s.

    Lifecycle: ``from_args`` -> ``setup`` (once, before the KVStore is set up) -> per round
    { ``begin_round``, then ``should_sync``? / ``next_batch_size`` before every batch } ->
    ``close``.
    """

    help: ClassVar[str] = "one batch per round"

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    options: ClassVar[tuple[Option, ...]] = ()
    """This policy's own flags (:class:`argtypes.Option`), each default a class attribute."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the flags of the options this class declares itself."""
        for option in cls.__dict__.get("options", ()):
            option.add_to(parser, cls)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Pacing:
        """Build the policy from the parsed flags."""
        return cls(args.batch_size)

    def setup(self, rank: int, num_workers: int) -> None:
        """Called once before training, before the KVStore's first barrier."""

    def should_sync(self, progress: LocalProgress, stats: RoundStats) -> bool:
        """Whether the round ends now instead of another local batch."""
        return progress.k >= 1

    def next_batch_size(self, progress: LocalProgress) -> int:
        """Samples of the next local iteration (the full batch by default)."""
        return self.batch_size

    def begin_round(self, round_no: int, stats: RoundStats) -> None:
        """Round ``round_no`` starts now."""

    def device_known(self, c: float) -> None:
        """Under device emulation, the device's seconds per batch before training starts."""

    def describe(self) -> dict[str, object]:
        """Facts about the policy for meta.json."""
        return {}

    def close(self) -> None:
        """Release threads and connections (idempotent)."""


class EveryBatch(Pacing):
    """One local iteration per round."""


class FixedSteps(Pacing):
    """E local SGD steps per round (``--local-steps``)."""

    help = "--local-steps E local steps per round"
    local_steps: ClassVar[int] = 10  # docs/reproduction.md: tuning

    def __init__(self, batch_size: int, local_steps: int = local_steps) -> None:
        super().__init__(batch_size)
        self.local_steps = local_steps

    options = (Option("local_steps", positive_int, "local SGD steps between synchronisations (E)"),)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FixedSteps:
        return cls(args.batch_size, args.local_steps)

    def should_sync(self, progress: LocalProgress, stats: RoundStats) -> bool:
        return progress.k >= self.local_steps

    def describe(self) -> dict[str, object]:
        return {"local_steps": self.local_steps}


class StateServerPacing(Pacing):
    """Paper Alg. 2 on the worker: local iterations until the State Server says sync.

    ``protocol`` "blocking" asks before every local iteration (Alg. 2 as written);
    "nonblocking" hands the progress to a :class:`ProgressChannel` and reads the server's
    delayed answer from a flag (docs/state-server.md), asking the blocking way only while the
    channel is in trouble. ``fill_last_batch``: when the server says sync while the slowest
    worker is still computing, compute one smaller batch sized to the time left first.

    The State Server is soft state: when it answers "not initialised" (it restarted), the
    worker re-registers (a rejoin init, then a reset into its current round) and repeats the
    request; the round's record counts it in ``state_rejoins``.
    """

    help = "the State Server's compute-or-sync answers (Alg. 2)"
    MAX_REJOINS_PER_CALL = 2  # a server that restarts again during the re-registration
    epsilon: ClassVar[float] = 0.0  # Alg. 2 slack in seconds: c_asker + epsilon > rest
    protocol: ClassVar[str] = "nonblocking"
    fill_last_batch: ClassVar[bool] = True

    def __init__(
        self,
        client: StateClient,
        batch_size: int,
        epsilon: float = epsilon,
        protocol: str = protocol,
        fill_last_batch: bool = fill_last_batch,
    ) -> None:
        super().__init__(batch_size)
        if protocol not in PROTOCOLS:
            raise ValueError(f"state protocol must be blocking or nonblocking, got {protocol!r}")
        self.client = client
        self.epsilon = epsilon
        self.protocol = protocol
        self.fill_last_batch = bool(fill_last_batch)
        self.min_partial = min_partial(batch_size)
        self.channel: ProgressChannel | None = None  # nonblocking: created by setup()
        self.rank, self.num_workers = 0, 1
        self.round_no = 1  # the round this worker is in, and when it started it (Unix time)
        self.round_te = time.time()
        self._finish_at: float | None = None  # monotonic time the slowest should finish
        self._last_batch = 0  # > 0: the size of the smaller batch computed before syncing
        self._c = 0.0  # the newest capability (seconds per full batch)
        self._sent_before = 0  # holds the channel had sent at the last round's end

    options = (
        Option(
            "epsilon", non_negative_float, "Alg. 2 slack in seconds (sent by rank 0 when it resets)"
        ),
        Option(
            "protocol",
            flag="--state-protocol",
            choices=PROTOCOLS,
            help="blocking asks the State Server before every local iteration (Alg. 2 as "
            "written); nonblocking hands progress over and is told when to sync (delayed ACK)",
        ),
        Option(
            "fill_last_batch",
            flag01,
            "1: compute a smaller last batch sized to the time left instead of idling",
        ),
    )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StateServerPacing:
        client = StateClient(f"http://{args.ip}:{args.port}", retry_for=args.state_retry)
        return cls(
            client,
            args.batch_size,
            args.epsilon,
            protocol=args.state_protocol,
            fill_last_batch=bool(args.fill_last_batch),
        )

    def describe(self) -> dict[str, object]:
        return {"state_protocol": self.protocol, "fill_last_batch": int(self.fill_last_batch)}

    def setup(self, rank: int, num_workers: int) -> None:
        self.rank, self.num_workers = rank, num_workers
        if rank == 0:  # before the KVStore barrier, so nobody queries an empty server
            self.client.init(num_workers, self.epsilon)
        if self.protocol == "nonblocking" and self.channel is None:
            self.channel = ProgressChannel(self.client.clone(), rank)
            self.client.close()  # reopened only to ask the blocking way (fallback, rejoin)
        self.round_no, self.round_te = 1, time.time()  # round 1 starts now

    def should_sync(self, progress: LocalProgress, stats: RoundStats) -> bool:
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
            self._post(progress, stats, sync)
        stats.query_s += time.perf_counter() - started
        return sync

    def next_batch_size(self, progress: LocalProgress) -> int:
        """The full batch, except the smaller last batch of ``--fill-last-batch``: when the
        server says sync while the slowest worker still computes, the samples that fit in
        the time left minus epsilon (:func:`partial_batch`); none when fewer than
        ``min_partial`` fit."""
        return self._last_batch or self.batch_size

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
        if self.channel is not None:
            self.channel.close()

    def _post(self, progress: LocalProgress, stats: RoundStats, sync: bool) -> None:
        """Hand the progress to the channel; at the round's end count the holds it sent
        (the final one counts in the next round)."""
        assert self.channel is not None
        self.channel.post(progress.k, progress.c, progress.te, final=sync)
        if sync:
            sent = self.channel.sent
            stats.count("state_messages", sent - self._sent_before)
            self._sent_before = sent

    def _ask(self, stats: RoundStats, progress: LocalProgress) -> bool:
        """The blocking query (Alg. 2 as written); with fill-last-batch, keep its ``left``."""
        args = (self.rank, progress.k, progress.c, progress.te)
        if not self.fill_last_batch:
            return self._call(stats, "query", *args) == "sync"
        resp = self._call(stats, "query_response", *args)
        if resp.left is not None:
            self._finish_at = time.monotonic() + resp.left
        return resp.action == "sync"

    def _check_channel(self, stats: RoundStats, progress: LocalProgress) -> bool:
        """Non-blocking: the flag; the blocking query only while the channel is in trouble."""
        assert self.channel is not None
        verdict = self.channel.verdict()
        if verdict is not None:
            self._finish_at = verdict.finish_at
            return True
        if self.channel.trouble() is None:
            return False
        stats.count("state_fallbacks")
        sync = self._ask(stats, progress)
        self.channel.kick()
        return sync

    def _fill_size(self, progress: LocalProgress) -> int:
        """Samples of a smaller last batch that ends ``epsilon`` before the slowest (0: none)."""
        if self._finish_at is None:
            return 0
        budget = self._finish_at - time.monotonic() - self.epsilon
        return partial_batch(budget, progress.c, self.batch_size)

    def _call(self, stats: RoundStats, method: str, *args: object) -> object:
        """``client.<method>(*args)``; on "not initialised" re-register, then repeat it."""
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
        stats.count("state_rejoins")
        print(
            f"[worker {self.rank}/{self.num_workers}] the State Server had lost its state: "
            f"re-registered in round {self.round_no}",
            flush=True,
        )
