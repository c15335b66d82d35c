"""The one training loop shared by every mode, and the worker's setup around it."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import config
from trainer import calibrate, registry
from trainer.checkpoint import (
    Checkpointer,
    CheckpointError,
    newest_held_by_all,
    read_json,
    save_parameters,
)
from trainer.cluster import JoinWatchdog, create_kvstore
from trainer.evaluator import Evaluation, Evaluations, child_argv
from trainer.layout import (
    MODEL_INFO,
    MODEL_PARAMS,
    checkpoint_dir,
    mode_dir,
    split_of,
    worker_dir,
)
from trainer.network import build_model, evaluate, pick_device
from trainer.options import run_dir_name
from trainer.pacing import smoothed
from trainer.progress import progress_reporter
from trainer.records import Resume, RunLog
from trainer.slowdown import Schedule, make_emulation
from trainer.strategy import Model, Strategy
from trainer.types import LocalProgress, RoundStats
from trainer.watchdog import worker_watchdog
from utils import BatchIterator, Dataset, load_dataset, partition

WARM_UP_PASSES = 3


class Worker:
    """Runs the loop: compute batches, and synchronise when the mode says so."""

    def __init__(
        self,
        args: argparse.Namespace,
        mode: Strategy,
        model: Model,
        data: Dataset,
        batches: BatchIterator,
        size: int,
        log: RunLog,
        ckpt: Checkpointer,
        evals: Evaluations | None = None,
    ) -> None:
        self.args = args
        self.ckpt = ckpt
        self.evals = evals  # rank 0's evaluations (None on the other ranks)
        self.emulation = make_emulation(
            args.emulation,
            args.slowdown,
            args.jitter,
            args.seed * 1000 + mode.rank,
            args.device_unit,
        )
        self.last_acc: float | None = None
        self.mode = mode
        self.model = model
        self.data = data
        self.batches = batches
        self.size = size
        self.log = log
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        # device time of the last evaluation handed over; None: none yet this process
        self.last_eval: float | None = None

    def warm_up(self) -> None:
        """Forward/backward passes without an update, so that graph building and the
        engine's first allocations are not timed as device time (one pass left the first
        two batches of a run 40 ms slower than the rest)."""
        x, y = next(self.batches)
        for _ in range(WARM_UP_PASSES):
            self._forward_backward(x, y)
            mx.nd.waitall()

    def _forward_backward(self, x: np.ndarray, y: np.ndarray) -> None:
        xs = mx.nd.array(x, ctx=self.model.ctx)
        ys = mx.nd.array(y, ctx=self.model.ctx)
        with autograd.record():
            loss = self.loss_fn(self.model.net(xs), ys)
        loss.backward()

    def compute_batch(self, progress: LocalProgress, stats: RoundStats) -> None:
        """One local iteration on the emulated device; updates k, c and te.

        The strategy sizes the batch (``next_batch_size``); a smaller one is emulated as
        the same device (its device time scales with its size), adds to ``partial_samples``,
        and leaves c, the device's seconds per full batch, as it was.
        """
        self.emulation.start()
        n = self.mode.next_batch_size(progress)
        full = n >= self.batches.batch_size
        x, y = next(self.batches) if full else self.batches.take(n)
        self._forward_backward(x, y)
        self.mode.local_update(self.model)
        mx.nd.waitall()
        timing = self.emulation.finish(self.log.elapsed(), len(y) / self.batches.batch_size)
        extra = stats.extra
        extra["slowdown"] = timing.factor
        extra["emulated_wait_s"] = round(extra.get("emulated_wait_s", 0.0) + timing.wait, 6)
        if self.emulation.name == "device":
            extra["overruns"] = extra.get("overruns", 0) + (timing.overrun_s > 0.0)
            extra["overrun_s"] = round(extra.get("overrun_s", 0.0) + timing.overrun_s, 6)
        if full:
            c = timing.device_s
            progress.c = smoothed(progress.c, c)
        else:
            extra["partial_samples"] = extra.get("partial_samples", 0) + len(y)
        progress.k += 1
        progress.te = time.time()
        stats.compute_s += timing.seconds
        stats.local_iterations += 1
        stats.samples += len(y)

    def wants_stop(self, round_no: int) -> bool:
        """This worker's own stopping rule (the modes make it collective where needed)."""
        if round_no >= self.args.rounds:
            return True
        return bool(self.args.max_time) and self.log.elapsed() >= self.args.max_time

    def eval_due(self, round_no: int, round_time: float) -> bool:
        """Every ``-e`` rounds, and/or every ``--eval-interval`` seconds of training, on the
        device clock the records are stamped with (a wall clock would count the evaluations
        themselves and put evaluations closer together than the interval in the records)."""
        args = self.args
        if args.eval_every_rounds and round_no % args.eval_every_rounds == 0:
            return True
        since = self.log.resumed_at if self.last_eval is None else self.last_eval
        return bool(args.eval_interval) and round_time - since >= args.eval_interval

    def end_round(self, round_no: int, stats: RoundStats, stop: bool, started: float) -> None:
        """Evaluate (rank 0), checksum, checkpoint, and write the round's record, stamped with
        the device time at which the round ended (evaluation and checkpoints come after it).
        The checkpoint holds the record too: a worker killed between the two gets it back."""
        args = self.args
        round_time = self.log.elapsed()
        if self.evals is not None:
            self.evaluate_round(round_no, round_time, stats, stop)
        every = args.checksum_every
        if self.mode.synchronous and every > 0 and (round_no % every == 0 or stop):
            stats.extra["checksum"] = self.model.checksum()
        accounted = stats.compute_s + stats.query_s + stats.comm_s + stats.eval_s
        stats.wait_s = max(0.0, time.perf_counter() - started - accounted)
        record = stats.as_record(round_no, round_time)
        if self.ckpt.due(round_no, stop):
            record["checkpoint_s"] = self.save(round_no, record, stop)
        self.log.write(record)

    def evaluate_round(self, round_no: int, round_time: float, stats: RoundStats, stop: bool):
        """Rank 0: take the evaluations that came back, hand this round's parameters to the
        evaluator when one is due (the last round's always), and keep the time this takes
        off the device clock (trainer/evaluator.py)."""
        t0 = time.perf_counter()
        assert self.evals is not None
        stats.extra.update(self.evals.check())
        done = self.evals.results()
        if stop:
            done += self.evals.final(round_no, round_time)
        elif self.eval_due(round_no, round_time) and self.evals.submit_if_ready(
            self.model.net, round_no, round_time
        ):
            self.last_eval = round_time
        for evaluation in done:
            self.announce(evaluation)
        if done:
            stats.extra.update(done[-1].fields())
        spent = time.perf_counter() - t0
        stats.eval_s += spent
        self.log.exclude(spent)

    def announce(self, evaluation: Evaluation) -> None:
        self.last_acc = evaluation.test_acc
        print(
            f"[Iteration {evaluation.round}] Test Acc {evaluation.test_acc:.3f} "
            f"Loss {evaluation.test_loss:.4f} Time {evaluation.time:.1f}s",
            flush=True,
        )

    def save(self, round_no: int, record: dict, stop: bool) -> float:
        """A checkpoint (the data order, the round's record, the jitter generator, the
        algorithm's arrays); after the last round rank 0 also saves the model with its
        facts. Returns the seconds it took."""
        t0 = time.perf_counter()
        elapsed = self.log.elapsed()
        worker = {
            "batches": self.batches.state(),
            "record": record,
            "emulation": self.emulation.state(),
        }
        arrays = self.mode.state_arrays()
        save_arrays = (lambda path: mx.nd.save(path, arrays)) if arrays else None
        self.ckpt.write(round_no, elapsed, self.model.net, worker, save_arrays)
        if stop and self.mode.rank == 0:
            folder = mode_dir(self.args.log_dir, self.args.network, run_dir_name(self.args))
            info = {
                **self.ckpt.run,
                "hyperparameters": self.ckpt.hyperparameters,
                "round": round_no,
                "time": elapsed,
                "test_accuracy": self.last_acc,
            }
            save_parameters(self.model.net, folder / MODEL_PARAMS, folder / MODEL_INFO, info)
        return round(time.perf_counter() - t0, 6)

    def run(self, first: int = 0) -> int:
        """Train from round ``first + 1`` until the rounds or the time budget are used;
        returns the number of the last round."""
        # an emulated device's c is known before its first batch: Alg. 2 can pace round 1
        progress, stats = (
            LocalProgress(c=self.emulation.expected_s(self.log.elapsed())),
            RoundStats(),
        )
        round_no, round_started = first, time.perf_counter()
        if progress.c > 0.0:
            self.mode.device_known(progress.c)
        self.mode.begin_round(first + 1, stats)
        watchdog = worker_watchdog()  # started with the KVStore; a no-op one when standalone
        watchdog.beat()  # arms the no-progress guard (--failure-timeout per round)
        while True:
            if self.mode.should_sync(progress, stats):
                round_no += 1
                stop = self.mode.synchronise(self.model, stats, self.wants_stop(round_no))
                self.emulation.interrupt()
                with watchdog.paused():  # evaluation and checkpoints are not a hang
                    self.end_round(round_no, stats, stop, round_started)
                if stop:
                    watchdog.finish()
                    return round_no
                stats, round_started = RoundStats(), time.perf_counter()
                self.mode.begin_round(round_no + 1, stats)
                progress.k, progress.te = 0, time.time()
            else:
                self.compute_batch(progress, stats)


def connect(args: argparse.Namespace, spec: registry.ModeSpec):
    """The KVStore of the mode (None when standalone); call inside a JoinWatchdog."""
    if not spec.distributed:
        return None
    kv = create_kvstore(spec.kv_type)
    print(f"[worker {kv.rank}/{kv.num_workers}] joined the MXNet cluster", flush=True)
    return kv


RESUME_KEY = 999_983  # KVStore key of rank 0's resume candidates; no strategy uses it
RESUME_VOTE_KEY = 999_979  # ... and of the count of workers that hold each


def broadcast_from_rank0(kv, value: float, key: int = RESUME_KEY) -> float:
    """Rank 0's ``value`` on every worker (a collective call, like KVStore init; float32:
    round numbers stay exact below 2**24)."""
    return broadcast_vector(kv, [value], key)[0]


def broadcast_vector(kv, values: list[float], key: int) -> list[float]:
    """Rank 0's ``values`` (the same length on every worker) on every worker."""
    array = mx.nd.array(values)
    kv.init(key, array)
    kv.pull(key, out=array)
    return [float(v) for v in array.asnumpy()]


def sum_over_workers(kv, values: list[float], key: int) -> list[float]:
    """The element-wise sum of every worker's ``values`` (dist_sync without a server
    optimizer stores the sum of a round's pushes)."""
    array = mx.nd.array(values)
    kv.init(key, mx.nd.zeros(array.shape))
    kv.push(key, array)
    kv.pull(key, out=array)
    return [float(v) for v in array.asnumpy()]


def agree_on_round(kv, usable: list[int]) -> int:
    """The newest checkpoint round every worker can resume from: rank 0 proposes its newest
    usable ones, every worker says which it holds, the sums decide (0: none)."""
    slots = config.CHECKPOINTS_KEPT
    proposed = (usable[:slots] + [0] * slots)[:slots]
    candidates = broadcast_vector(kv, [float(r) for r in proposed], RESUME_KEY)
    held = [1.0 if c > 0 and int(c) in usable else 0.0 for c in candidates]
    holders = sum_over_workers(kv, held, RESUME_VOTE_KEY)
    agreed = newest_held_by_all(candidates, holders, kv.num_workers)
    newest = int(candidates[0])
    if kv.rank == 0 and 0 < newest != agreed:
        then = f"resuming after round {agreed}" if agreed else "starting afresh"
        print(
            f"warning: --resume: the checkpoint after round {newest} is not usable on every "
            f"worker; {then}",
            file=sys.stderr,
            flush=True,
        )
    return agreed


def resume_round(args: argparse.Namespace, ckpt: Checkpointer, kv, synchronous: bool) -> int:
    """The round to continue after (0: from scratch).

    Synchronous modes continue after the newest checkpoint whose every part verifies on
    every worker (all workers must agree on round numbers); asynchronous workers each after
    their own newest usable one. A checkpoint that does not verify is skipped, and named.
    """
    if not args.resume:
        return 0
    usable = ckpt.usable()
    if kv is not None and synchronous:
        agreed = agree_on_round(kv, usable)
    else:
        agreed = usable[0] if usable else 0
    if agreed == 0:
        print(
            f"warning: --resume: no usable checkpoint in {ckpt.folder}; starting afresh",
            file=sys.stderr,
        )
    return agreed


def run_hyperparameters(args: argparse.Namespace, mode: Strategy) -> dict[str, object]:
    """What a resume must not change silently (``--resume-override`` names exceptions): the
    learning rates and the algorithm's own hyperparameters and pacing."""
    found: dict[str, object] = {"lr": args.lr, "local_lr": args.local_lr}
    for name, value in mode.describe().items():
        plain = value is None or isinstance(value, (bool, int, float, str))
        found[name] = value if plain else str(value)
    return found


def run_facts(args: argparse.Namespace, num_workers: int, size: int) -> dict:
    """What a checkpoint must share with the run that resumes from it, and the command line."""
    return {
        "network": args.network,
        "dataset": args.dataset,
        "mode": args.mode,
        "split": split_of(run_dir_name(args)),
        "num_workers": num_workers,
        "input_size": size,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "argv": sys.argv,
    }


def worker_meta(args: argparse.Namespace, mode: Strategy, device: str, shard_size: int) -> dict:
    """meta.json of this worker (docs/log-format.md)."""
    return {
        "mode": args.mode,
        "network": args.network,
        "dataset": args.dataset,
        "split": split_of(run_dir_name(args)),
        "rank": mode.rank,
        "num_workers": mode.num_workers,
        "host": socket.gethostname(),
        "device": device,
        "slowdown": args.slowdown.at(0.0),
        "slowdown_schedule": args.slowdown.describe(),
        "jitter": args.jitter,
        "emulation": args.emulation,
        "device_unit_s": args.device_unit,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "local_lr": args.local_lr,
        "global_lr": args.global_lr,
        "shard_size": shard_size,
        "pid": os.getpid(),
        "argv": sys.argv,
        **mode.describe(),
    }


def make_batches(
    args: argparse.Namespace, data: Dataset, rank: int, num_workers: int, size: int
) -> BatchIterator:
    """This worker's endless batches over its shard (the whole training set when alone)."""
    shard = (
        partition(data.train_y, num_workers, rank, bool(args.split_by_class), args.seed)
        if num_workers > 1 or registry.get(args.mode).distributed
        else np.arange(len(data.train_y))
    )
    seed = args.seed * 1000 + rank
    return BatchIterator(data.train_x, data.train_y, shard, args.batch_size, seed=seed, size=size)


# KVStore key of the device-unit broadcast; no strategy uses it, nor RESUME_VOTE_KEY (999_979,
# which it was until both could meet in one run: a key cannot change its size)
DEVICE_UNIT_KEY = 999_953
START_KEY = 999_961  # KVStore key of the start barrier


def resolve_device_unit(args: argparse.Namespace, kv) -> None:
    """``args.device_unit`` for device emulation without ``--device-unit`` (a cluster started
    by hand; launch.py calibrates the whole cluster and passes it): rank 0 probes itself as
    a lone device and every worker takes its value, so that all agree."""
    if args.emulation != "device" or args.device_unit is not None:
        return
    plan = calibrate.plan_unit(
        calibrate.probe(args), [Schedule.constant(1.0)], calibrate.machine_cores(), args.threads
    )
    unit = plan.unit_s if kv is None else broadcast_from_rank0(kv, plan.unit_s, DEVICE_UNIT_KEY)
    args.device_unit = float(unit)
    if kv is None or kv.rank == 0:
        print(
            f"{plan.describe(1)}; calibrated here for one device (launch.py calibrates for "
            "the whole cluster; --device-unit sets it)",
            flush=True,
        )


def start_evaluations(args: argparse.Namespace, model: Model, data: Dataset, size: int):
    """Rank 0's evaluations, ready before training starts (trainer/evaluator.py)."""
    evals = Evaluations(
        args.evaluator, child_argv(args), lambda: evaluate(model, data, size, args.batch_size)
    )
    evals.wait_ready()
    return evals


def start_training(args: argparse.Namespace, model: Model, data: Dataset, size: int):
    """Strategy, KVStore, device unit, rank 0's evaluator, checkpoint (loaded when resuming)
    and the collective setup."""
    spec = registry.get(args.mode)
    mode = spec.load().from_args(args)
    evals = None
    with JoinWatchdog(args.connect_timeout) if spec.distributed else contextlib.nullcontext():
        kv = connect(args, spec)
        rank, num_workers = (kv.rank, kv.num_workers) if kv is not None else (0, 1)
        resolve_device_unit(args, kv)
        if rank == 0:  # before the collective setup: the others wait there, not training
            evals = start_evaluations(args, model, data, size)
        folder = checkpoint_dir(mode_dir(args.log_dir, args.network, run_dir_name(args)))
        ckpt = Checkpointer(
            folder,
            rank,
            args.checkpoint_every,
            config.CHECKPOINTS_KEPT,
            run_facts(args, num_workers, size),
            run_hyperparameters(args, mode),
            tuple(args.resume_override),
        )
        first = resume_round(args, ckpt, kv, spec.load().synchronous)
        state = ckpt.load(first, model.net, model.ctx) if first else {}
        arrays = ckpt.arrays_file(first) if first else None
        if arrays is not None:
            mode.resume_from(mx.nd.load(str(arrays)))
        mode.setup(model, kv)  # rank 0's (possibly loaded) parameters reach every worker
    return mode, ckpt, first, state, evals, kv


def run(args: argparse.Namespace, distributed: bool) -> int:
    """Set up data, model, KVStore and records, then train. Returns the process exit code."""
    ctx, device = pick_device(args.gpu, bool(args.cpu))
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    model, size = build_model(args.network, args.seed, data, ctx)
    mode, ckpt, first, state, evals, kv = start_training(args, model, data, size)
    try:
        rounds, elapsed = train(
            args, mode, model, data, size, ckpt, first, state, evals, kv, device
        )
    finally:
        mode.close()
        if evals is not None:
            evals.close()
    print(f"[worker {mode.rank}] done after {rounds} rounds in {elapsed:.1f}s", flush=True)
    return 0


def train(
    args, mode, model, data, size, ckpt, first, state, evals, kv, device
) -> tuple[int, float]:
    """The records and the loop of one worker; (last round, seconds of device time)."""
    rank, num_workers = mode.rank, mode.num_workers
    batches = make_batches(args, data, rank, num_workers, size)
    meta = worker_meta(args, mode, device, len(batches.indices))
    if evals is not None:
        meta.update(evaluator=evals.current.kind, evaluator_pid=evals.pid)
    folder = worker_dir(args.log_dir, args.network, run_dir_name(args), meta["host"], device, rank)
    resume = (
        Resume(first, state.get("elapsed", 0.0), str(ckpt.folder), state.get("record"))
        if first
        else None
    )
    log = RunLog(folder, meta, resume, reporter=progress_reporter(args, meta))
    worker = Worker(args, mode, model, data, batches, size, log, ckpt, evals)
    worker.warm_up()
    if state.get("batches"):
        batches.restore(state["batches"])
    if state.get("emulation"):
        worker.emulation.restore(state["emulation"])
    if kv is not None:  # every device starts together, whoever set up faster
        broadcast_from_rank0(kv, 0.0, START_KEY)
    log.start_clock()
    print(
        f"[worker {rank}/{num_workers}] {args.mode} {args.network} on {device}, shard "
        f"{len(batches.indices)} samples, slowdown {args.slowdown}, {emulation_note(args)}, "
        f"logs in {folder}" + (f", resumed after round {first}" if first else ""),
        flush=True,
    )
    rounds = worker.run(first)
    worker.log.close()
    return rounds, worker.log.elapsed()


def emulation_note(args: argparse.Namespace) -> str:
    if args.emulation == "device":
        return f"device emulation (T0 = {args.device_unit * 1e3:.2f} ms)"
    return f"{args.emulation} emulation"


def evaluate_saved(args: argparse.Namespace) -> int:
    """``--evaluate PATH``: load a saved model or checkpoint, print its test accuracy."""
    params = Path(args.evaluate)
    info = read_json(params.with_suffix(".json"))
    if not params.is_file():
        raise CheckpointError(f"--evaluate {params}: no such file")
    ctx, _ = pick_device(args.gpu, bool(args.cpu))
    data = load_dataset(info["dataset"], args.data_dir, seed=info.get("seed", args.seed))
    model, size = build_model(info["network"], info.get("seed", args.seed), data, ctx)
    model.net.load_parameters(str(params), ctx=ctx)
    acc, loss = evaluate(model, data, size, args.batch_size)
    print(
        f"{params}: test accuracy {acc:.4f}, loss {loss:.4f} ({info['network']} on "
        f"{info['dataset']}, {info.get('mode')} after round {info.get('round')})",
        flush=True,
    )
    return 0
