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
from models import get_model, input_size
from trainer import registry
from trainer.checkpoint import Checkpointer, CheckpointError, read_json, save_parameters
from trainer.cluster import JoinWatchdog, create_kvstore
from trainer.layout import (
    MODEL_INFO,
    MODEL_PARAMS,
    checkpoint_dir,
    mode_dir,
    split_of,
    worker_dir,
)
from trainer.options import run_dir_name
from trainer.progress import progress_reporter
from trainer.records import Resume, RoundStats, RunLog
from trainer.slowdown import Emulator
from trainer.strategy import Model, Progress, Strategy
from trainer.watchdog import worker_watchdog
from utils import BatchIterator, Dataset, load_dataset, partition, test_batches

SMOOTHING = 0.5  # weight of the newest batch in the moving average of c
BUSY_SMOOTHING = 0.1  # weight of the newest batch in the emulated slowdown's average


def pick_device(gpu: int | None, force_cpu: bool) -> tuple[mx.Context, str]:
    """CPU unless a GPU is asked for and exists; warns when the asked GPU is missing."""
    if gpu is None or force_cpu:
        return mx.cpu(), "cpu"
    available = mx.context.num_gpus()
    if gpu < 0 or gpu >= available:
        print(
            f"warning: GPU {gpu} asked for but {available} GPU(s) found; using the CPU",
            file=sys.stderr,
        )
        return mx.cpu(), "cpu"
    return mx.gpu(gpu), f"gpu{gpu}"


def build_model(network: str, seed: int, data: Dataset, ctx: mx.Context) -> tuple[Model, int]:
    """Initialised network (shapes inferred, hybridized) and the input side length it needs."""
    mx.random.seed(seed)
    net = get_model(network)
    net.initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
    size = input_size(network, data.image_size)
    # Infer shapes with a training-mode pass: an inference pass lets MKL-DNN keep convolution
    # weights in its own blocked layout, which the KVStore cannot send.
    with autograd.record():
        net(mx.nd.zeros((2, data.channels, size, size), ctx=ctx))
    net.hybridize()
    return Model.wrap(net, ctx), size


def evaluate(model: Model, data: Dataset, size: int, batch_size: int) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the current parameters."""
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in test_batches(data.test_x, data.test_y, max(batch_size, 256), size):
        xs = mx.nd.array(x, ctx=model.ctx)
        ys = mx.nd.array(y, ctx=model.ctx)
        out = model.net(xs)
        loss_sum += float(loss_fn(out, ys).sum().asscalar())
        correct += int((out.argmax(axis=1) == ys.astype("float32")).sum().asscalar())
        total += len(y)
    return correct / total, loss_sum / total


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
    ) -> None:
        self.args = args
        self.ckpt = ckpt
        self.emulator = Emulator(args.slowdown, args.jitter, args.seed * 1000 + mode.rank)
        self.last_acc: float | None = None
        self.mode = mode
        self.model = model
        self.data = data
        self.batches = batches
        self.size = size
        self.log = log
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        self.busy_avg = 0.0
        self.last_eval = time.perf_counter()

    def warm_up(self) -> None:
        """One forward/backward pass without an update, so graph building is not timed as c."""
        x, y = next(self.batches)
        self._forward_backward(x, y)
        mx.nd.waitall()

    def _forward_backward(self, x: np.ndarray, y: np.ndarray) -> None:
        xs = mx.nd.array(x, ctx=self.model.ctx)
        ys = mx.nd.array(y, ctx=self.model.ctx)
        with autograd.record():
            loss = self.loss_fn(self.model.net(xs), ys)
        loss.backward()

    def _typical_busy(self, busy: float) -> float:
        """Moving average of the measured compute time of a batch.

        The emulated slowdown waits (S - 1) x this average rather than x the last batch alone:
        on a shared 2-core host one batch can take 5x longer than the next, and multiplying
        that noise by S would emulate an erratic device instead of a slower one.
        """
        self.busy_avg = (
            busy
            if self.busy_avg == 0.0
            else (BUSY_SMOOTHING * busy + (1.0 - BUSY_SMOOTHING) * self.busy_avg)
        )
        return self.busy_avg

    def compute_batch(self, progress: Progress, stats: RoundStats) -> None:
        """One local iteration, then the emulated slowdown; updates k, c and te.

        The strategy sizes the batch (``next_batch_size``); a smaller one is emulated as
        the same device (its wait scales with its size), adds to ``partial_samples``, and
        leaves c, the seconds per full batch, as it was.
        """
        started = time.perf_counter()
        n = self.mode.next_batch_size(progress)
        full = n >= self.batches.batch_size
        x, y = next(self.batches) if full else self.batches.take(n)
        self._forward_backward(x, y)
        self.mode.local_update(self.model)
        mx.nd.waitall()
        busy = time.perf_counter() - started
        typical = self._typical_busy(busy) if full else self._partial_busy(busy, len(y))
        wait, factor = self.emulator.wait(typical, self.log.elapsed())
        if wait > 0.0:
            time.sleep(wait)
        stats.extra["slowdown"] = factor
        stats.extra["emulated_wait_s"] = round(stats.extra.get("emulated_wait_s", 0.0) + wait, 6)
        seconds = time.perf_counter() - started
        if full:
            progress.c = (
                seconds
                if progress.c == 0.0
                else (SMOOTHING * seconds + (1.0 - SMOOTHING) * progress.c)
            )
        else:
            stats.extra["partial_samples"] = stats.extra.get("partial_samples", 0) + len(y)
        progress.k += 1
        progress.te = time.time()
        stats.compute_s += seconds
        stats.local_iterations += 1
        stats.samples += len(y)

    def _partial_busy(self, busy: float, n: int) -> float:
        """The compute time the emulated device takes for a smaller batch of ``n`` samples:
        the typical full batch's, scaled by its share of the batch (the moving average of
        full batches is left alone)."""
        if self.busy_avg == 0.0:
            return busy
        return self.busy_avg * n / self.batches.batch_size

    def wants_stop(self, round_no: int) -> bool:
        """This worker's own stopping rule (the modes make it collective where needed)."""
        if round_no >= self.args.rounds:
            return True
        return bool(self.args.max_time) and self.log.elapsed() >= self.args.max_time

    def eval_due(self, round_no: int) -> bool:
        """Every ``-e`` rounds, and/or every ``--eval-interval`` seconds of training."""
        args = self.args
        if args.eval_every_rounds and round_no % args.eval_every_rounds == 0:
            return True
        return bool(args.eval_interval) and (
            time.perf_counter() - self.last_eval >= args.eval_interval
        )

    def end_round(self, round_no: int, stats: RoundStats, stop: bool, started: float) -> None:
        """Evaluate (rank 0), checksum, and write the round's record."""
        args = self.args
        if self.mode.rank == 0 and (stop or self.eval_due(round_no)):
            t0 = time.perf_counter()
            acc, loss = evaluate(self.model, self.data, self.size, args.batch_size)
            self.last_eval = time.perf_counter()
            stats.eval_s += self.last_eval - t0
            stats.extra.update(test_acc=round(acc, 6), test_loss=round(loss, 6))
            self.last_acc = acc
            print(
                f"[Iteration {round_no}] Test Acc {acc:.3f} Loss {loss:.4f} "
                f"Time {self.log.elapsed():.1f}s",
                flush=True,
            )
        every = args.checksum_every
        if self.mode.synchronous and every > 0 and (round_no % every == 0 or stop):
            stats.extra["checksum"] = self.model.checksum()
        if self.ckpt.due(round_no, stop):
            self.save(round_no, stats, stop)
        accounted = stats.compute_s + stats.query_s + stats.comm_s + stats.eval_s
        stats.wait_s = max(0.0, time.perf_counter() - started - accounted)
        self.log.write(stats.as_record(round_no, self.log.elapsed()))

    def save(self, round_no: int, stats: RoundStats, stop: bool) -> None:
        """A checkpoint; after the last round rank 0 also saves the model with its facts."""
        t0 = time.perf_counter()
        elapsed = self.log.elapsed()
        self.ckpt.write(round_no, elapsed, self.model.net, {"batches": self.batches.state()})
        if stop and self.mode.rank == 0:
            folder = mode_dir(self.args.log_dir, self.args.network, run_dir_name(self.args))
            info = {
                **self.ckpt.run,
                "round": round_no,
                "time": elapsed,
                "test_accuracy": self.last_acc,
            }
            save_parameters(self.model.net, folder / MODEL_PARAMS, folder / MODEL_INFO, info)
        stats.extra["checkpoint_s"] = round(time.perf_counter() - t0, 6)

    def run(self, first: int = 0) -> int:
        """Train from round ``first + 1`` until the rounds or the time budget are used;
        returns the number of the last round."""
        progress, stats = Progress(), RoundStats()
        round_no, round_started = first, time.perf_counter()
        self.mode.begin_round(first + 1, stats)
        watchdog = worker_watchdog()  # started with the KVStore; a no-op one when standalone
        watchdog.beat()  # arms the no-progress guard (--failure-timeout per round)
        while True:
            if self.mode.should_sync(progress, stats):
                round_no += 1
                stop = self.mode.synchronise(self.model, stats, self.wants_stop(round_no))
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


RESUME_KEY = 999_983  # KVStore key of the resume-round broadcast; no strategy uses it


def connect(args: argparse.Namespace, spec: registry.ModeSpec):
    """The KVStore of the mode (None when standalone); call inside a JoinWatchdog."""
    if not spec.distributed:
        return None
    kv = create_kvstore(spec.kv_type)
    print(f"[worker {kv.rank}/{kv.num_workers}] joined the MXNet cluster", flush=True)
    return kv


def broadcast_from_rank0(kv, value: int) -> int:
    """Rank 0's ``value`` on every worker (a collective call, like KVStore init)."""
    array = mx.nd.array([value])
    kv.init(RESUME_KEY, array)
    kv.pull(RESUME_KEY, out=array)
    return int(array.asscalar())


def resume_round(args: argparse.Namespace, ckpt: Checkpointer, kv, synchronous: bool) -> int:
    """The round to continue after (0: from scratch).

    Synchronous modes continue after rank 0's newest complete checkpoint (all workers must
    agree on round numbers); asynchronous workers each after their own newest one.
    """
    if not args.resume:
        return 0
    own = ckpt.newest() or 0
    agreed = broadcast_from_rank0(kv, own) if kv is not None and synchronous else own
    if agreed == 0:
        print(
            f"warning: --resume: no checkpoint in {ckpt.folder}; starting afresh", file=sys.stderr
        )
    return agreed


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


def start_training(args: argparse.Namespace, model: Model, size: int):
    """Strategy, KVStore, checkpoint (loaded when resuming) and the collective setup."""
    spec = registry.get(args.mode)
    mode = spec.load().from_args(args)
    with JoinWatchdog(args.connect_timeout) if spec.distributed else contextlib.nullcontext():
        kv = connect(args, spec)
        rank, num_workers = (kv.rank, kv.num_workers) if kv is not None else (0, 1)
        folder = checkpoint_dir(mode_dir(args.log_dir, args.network, run_dir_name(args)))
        ckpt = Checkpointer(
            folder,
            rank,
            args.checkpoint_every,
            config.CHECKPOINTS_KEPT,
            run_facts(args, num_workers, size),
        )
        first = resume_round(args, ckpt, kv, spec.load().synchronous)
        state = ckpt.load(first, model.net, model.ctx) if first else {}
        mode.setup(model, kv)  # rank 0's (possibly loaded) parameters reach every worker
    return mode, ckpt, first, state


def run(args: argparse.Namespace, distributed: bool) -> int:
    """Set up data, model, KVStore and records, then train. Returns the process exit code."""
    ctx, device = pick_device(args.gpu, bool(args.cpu))
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    model, size = build_model(args.network, args.seed, data, ctx)
    mode, ckpt, first, state = start_training(args, model, size)
    rank, num_workers = mode.rank, mode.num_workers
    batches = make_batches(args, data, rank, num_workers, size)
    meta = worker_meta(args, mode, device, len(batches.indices))
    folder = worker_dir(args.log_dir, args.network, run_dir_name(args), meta["host"], device, rank)
    resume = Resume(first, state.get("elapsed", 0.0), str(ckpt.folder)) if first else None
    log = RunLog(folder, meta, resume, reporter=progress_reporter(args, meta))
    worker = Worker(args, mode, model, data, batches, size, log, ckpt)
    worker.warm_up()
    if state.get("batches"):
        batches.restore(state["batches"])
    print(
        f"[worker {rank}/{num_workers}] {args.mode} {args.network} on {device}, shard "
        f"{len(batches.indices)} samples, slowdown {args.slowdown}, logs in {folder}"
        + (f", resumed after round {first}" if first else ""),
        flush=True,
    )
    rounds = worker.run(first)
    worker.log.close()
    print(f"[worker {rank}] done after {rounds} rounds in {worker.log.elapsed():.1f}s", flush=True)
    return 0


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
