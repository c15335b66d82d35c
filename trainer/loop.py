"""The one training loop shared by every mode, and the worker's setup around it."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from models import get_model, input_size
from trainer import registry
from trainer.cluster import JoinWatchdog, create_kvstore
from trainer.layout import split_of, worker_dir
from trainer.options import run_dir_name
from trainer.records import RoundStats, RunLog
from trainer.strategy import Model, Progress, Strategy
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


def build_model(args: argparse.Namespace, data: Dataset, ctx: mx.Context) -> tuple[Model, int]:
    """Initialised network (shapes inferred, hybridized) and the input side length it needs."""
    mx.random.seed(args.seed)
    net = get_model(args.network)
    net.initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
    size = input_size(args.network, data.image_size)
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
    ) -> None:
        self.args = args
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
        """One local iteration, then the emulated slowdown; updates k, c and te."""
        started = time.perf_counter()
        x, y = next(self.batches)
        self._forward_backward(x, y)
        self.mode.local_update(self.model)
        mx.nd.waitall()
        busy = time.perf_counter() - started
        if self.args.slowdown > 1.0:
            time.sleep((self.args.slowdown - 1.0) * self._typical_busy(busy))
        seconds = time.perf_counter() - started
        progress.c = (
            seconds if progress.c == 0.0 else (SMOOTHING * seconds + (1.0 - SMOOTHING) * progress.c)
        )
        progress.k += 1
        progress.te = time.time()
        stats.compute_s += seconds
        stats.local_iterations += 1
        stats.samples += len(y)

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
            print(
                f"[Iteration {round_no}] Test Acc {acc:.3f} Loss {loss:.4f} "
                f"Time {self.log.elapsed():.1f}s",
                flush=True,
            )
        every = args.checksum_every
        if self.mode.synchronous and every > 0 and (round_no % every == 0 or stop):
            stats.extra["checksum"] = self.model.checksum()
        accounted = stats.compute_s + stats.query_s + stats.comm_s + stats.eval_s
        stats.wait_s = max(0.0, time.perf_counter() - started - accounted)
        self.log.write(stats.as_record(round_no, self.log.elapsed()))

    def run(self) -> int:
        """Train until the rounds or the time budget are used; returns the rounds done."""
        progress, stats = Progress(), RoundStats()
        round_no, round_started = 0, time.perf_counter()
        while True:
            if self.mode.should_sync(progress, stats):
                round_no += 1
                stop = self.mode.synchronise(self.model, stats, self.wants_stop(round_no))
                self.end_round(round_no, stats, stop, round_started)
                if stop:
                    return round_no
                stats, round_started = RoundStats(), time.perf_counter()
                self.mode.begin_round(round_no + 1, stats)
                progress.k, progress.te = 0, time.time()
            else:
                self.compute_batch(progress, stats)


def join_cluster(args: argparse.Namespace, spec: registry.ModeSpec, mode: Strategy, model: Model):
    """Create the KVStore of the mode and run its collective setup; None when standalone."""
    if not spec.distributed:
        mode.setup(model, None)
        return None
    with JoinWatchdog(args.connect_timeout):
        kv = create_kvstore(spec.kv_type)
        print(f"[worker {kv.rank}/{kv.num_workers}] joined the MXNet cluster", flush=True)
        mode.setup(model, kv)
    return kv


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
        "slowdown": args.slowdown,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "local_lr": args.local_lr,
        "global_lr": args.global_lr,
        "shard_size": shard_size,
        "pid": os.getpid(),
        "argv": sys.argv,
    }


def run(args: argparse.Namespace, distributed: bool) -> int:
    """Set up data, model, KVStore and records, then train. Returns the process exit code."""
    spec = registry.get(args.mode)
    ctx, device = pick_device(args.gpu, bool(args.cpu))
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    model, size = build_model(args, data, ctx)
    mode = spec.load().from_args(args)
    join_cluster(args, spec, mode, model)
    rank, num_workers = mode.rank, mode.num_workers
    shard = (
        partition(data.train_y, num_workers, rank, bool(args.split_by_class), args.seed)
        if distributed
        else np.arange(len(data.train_y))
    )
    batches = BatchIterator(
        data.train_x, data.train_y, shard, args.batch_size, seed=args.seed * 1000 + rank, size=size
    )
    meta = worker_meta(args, mode, device, len(shard))
    folder = worker_dir(args.log_dir, args.network, run_dir_name(args), meta["host"], device, rank)
    worker = Worker(args, mode, model, data, batches, size, RunLog(folder, meta))
    worker.warm_up()
    print(
        f"[worker {rank}/{num_workers}] {spec.name} {args.network} on {device}, shard "
        f"{len(shard)} samples, slowdown {args.slowdown:g}, logs in {folder}",
        flush=True,
    )
    rounds = worker.run()
    worker.log.close()
    print(f"[worker {rank}] done after {rounds} rounds in {worker.log.elapsed():.1f}s", flush=True)
    return 0
