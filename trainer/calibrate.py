"""The device unit T0 of device emulation: how long the fastest emulated device takes a batch.

A device of slowdown S takes S x T0 seconds per batch (trainer/slowdown.py). While it computes
it needs ``threads`` cores for ``busy`` seconds of each S x T0, so a cluster of slowdowns S_i
asks ``demand = threads * busy * sum(1 / S_i) / T0`` cores on average. T0 is chosen so that
this stays at ``config.DEVICE_CPU_SHARE`` of the machine's cores (the rest absorbs the
parameter server, the State Server, the evaluator and the moments when several devices compute
at once), and never below ``config.DEVICE_MIN_HEADROOM`` x busy, so that even a lone device has
slack. ``busy`` is measured by :func:`probe` on an idle process (launch.py runs it before the
cluster starts). The arithmetic here is plain Python; only :func:`probe` imports MXNet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import config
from trainer.slowdown import Schedule


def machine_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def peak_inverse_sum(schedules: Sequence[Schedule]) -> float:
    """The largest sum of 1 / S_i(t) over the run: the cluster's busiest moment (schedules
    change their factors at given times; the sum is constant in between)."""
    moments = sorted({t for s in schedules for t in s.starts})
    return max(sum(1.0 / s.at(t) for s in schedules) for t in moments)


@dataclass(frozen=True)
class UnitPlan:
    """The device unit for a cluster, and what it means for this machine."""

    probe_s: float  # measured seconds of one batch on an idle process
    unit_s: float  # T0
    inverse_sum: float  # peak of sum(1 / S_i)
    cores: int
    threads: int
    given: bool  # T0 came from --device-unit
    share: float = config.DEVICE_CPU_SHARE

    @property
    def headroom(self) -> float:
        return self.unit_s / self.probe_s

    @property
    def demand(self) -> float:
        """Average share of the machine's cores the devices compute on (1.0 = all of them)."""
        return self.threads * self.probe_s * self.inverse_sum / (self.unit_s * self.cores)

    def workers_that_fit(self, workers: int) -> int:
        """How many workers of this mix (same proportions of slowdowns) fit at T0 within
        ``share`` of the cores."""
        per_worker = self.threads * self.probe_s * self.inverse_sum / workers
        return int(self.share * self.cores * self.unit_s / per_worker + 1e-9)

    def describe(self, workers: int) -> str:
        how = (
            "given by --device-unit"
            if self.given
            else f"probe {self.probe_s * 1e3:.2f} ms per batch x headroom {self.headroom:.2f}"
        )
        return (
            f"device unit T0 = {self.unit_s * 1e3:.2f} ms ({how}); the devices compute on "
            f"{self.demand:.0%} of {self.cores} cores on average; at this T0, "
            f"{self.workers_that_fit(workers)} workers of this mix fit in "
            f"{self.share:.0%} of the cores"
        )


class UnitError(ValueError):
    """A cluster that cannot be emulated in device time at any acceptable device unit."""


def plan_unit(
    probe_s: float,
    schedules: Sequence[Schedule],
    cores: int,
    threads: int = 1,
    given: float | None = None,
    share: float = config.DEVICE_CPU_SHARE,
    min_headroom: float = config.DEVICE_MIN_HEADROOM,
    max_headroom: float = config.DEVICE_MAX_HEADROOM,
) -> UnitPlan:
    """T0 for these devices (module docstring). ``given`` (--device-unit) is taken as it is;
    otherwise a cluster that would need more than ``max_headroom`` x the probe is refused
    (UnitError names how many workers of the mix fit)."""
    inverse = peak_inverse_sum(schedules)
    if given is not None:
        return UnitPlan(probe_s, given, inverse, cores, threads, True, share)
    needed = threads * probe_s * inverse / (share * cores)
    unit = max(min_headroom * probe_s, needed)
    if unit > max_headroom * probe_s:
        capped = UnitPlan(probe_s, max_headroom * probe_s, inverse, cores, threads, False, share)
        fit = capped.workers_that_fit(len(schedules))
        raise UnitError(
            f"{len(schedules)} workers with these slowdowns need T0 >= "
            f"{unit * 1e3:.1f} ms ({unit / probe_s:.1f}x the probe's {probe_s * 1e3:.2f} ms "
            f"per batch; at most {max_headroom:g}x is calibrated): only {fit} workers of this "
            f"mix fit on {cores} cores. Use fewer workers, or give --device-unit SECONDS to "
            "run anyway"
        )
    return UnitPlan(probe_s, unit, inverse, cores, threads, False, share)


PROBE_BATCHES = 30  # timed batches of the probe (after WARM-UP ones)
PROBE_WARM_UP = 5


def probe(args: argparse.Namespace) -> float:
    """Median seconds of one training batch (forward, backward, SGD step) of ``args``'s
    network, data set and batch size on this process, as a worker computes it."""
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from trainer.network import build_model, pick_device
    from utils import BatchIterator, load_dataset

    ctx, _ = pick_device(args.gpu, bool(args.cpu))
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    model, size = build_model(args.network, args.seed, data, ctx)
    indices = np.arange(len(data.train_y))
    batches = BatchIterator(data.train_x, data.train_y, indices, args.batch_size, args.seed, size)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    times = []
    for i in range(PROBE_WARM_UP + PROBE_BATCHES):
        started = time.perf_counter()
        x, y = next(batches)
        with autograd.record():
            loss = loss_fn(model.net(mx.nd.array(x, ctx=ctx)), mx.nd.array(y, ctx=ctx))
        loss.backward()
        for weight, grad in zip(model.params, model.grads, strict=True):
            weight -= args.lr / args.batch_size * grad
        mx.nd.waitall()
        if i >= PROBE_WARM_UP:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def probe_main(args: argparse.Namespace) -> int:
    """``main.py --probe-device``: print the probe's result as one JSON line."""
    seconds = probe(args)
    if not (seconds > 0 and math.isfinite(seconds)):
        print(json.dumps({"error": f"probe measured {seconds}"}), flush=True)
        return 1
    print(json.dumps({"probe_s": seconds, "batch_size": args.batch_size}), flush=True)
    return 0
