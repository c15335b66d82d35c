"""--fill-last-batch: smaller batches from the same data order, ESync's sizing of the last
batch from the server's ``left``, its mean-gradient step, and the loop's records of it."""

from __future__ import annotations

import argparse
import time

import mxnet as mx
import numpy as np
import pytest

from trainer.loop import Worker
from trainer.modes import ESync
from trainer.pacing import StateServerPacing
from trainer.slowdown import Schedule
from trainer.strategy import Model, Strategy
from trainer.types import LocalProgress, RoundStats
from utils import BatchIterator

B = 64


def _iterator(n: int = 300, seed: int = 5) -> BatchIterator:
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)  # sample i holds the value i
    return BatchIterator(x, np.arange(n) % 10, np.arange(n), B, seed=seed)


def _stream(it: BatchIterator, sizes: list[int]) -> list[int]:
    out: list[int] = []
    for n in sizes:
        x, y = it.take(n) if n != B else next(it)
        assert len(x) == len(y) == n
        out += [int(v) for v in x.reshape(-1)]
    return out


def test_a_smaller_batch_takes_the_next_samples_and_keeps_the_order() -> None:
    sizes = [B, 8, B, 40, B, B, 16, B, B, B, B, 24, B]  # crosses epochs (300 samples)
    mixed = _stream(_iterator(), sizes)
    full = _stream(_iterator(), [1] * sum(sizes))
    assert mixed == full  # the same samples in the same order, epoch shuffles included
    it = _iterator()
    it.take(10)
    assert it.state() == {"epoch": 0, "pos": 10}
    with pytest.raises(ValueError, match="positive integer"):
        it.take(0)


def test_the_order_check_can_fail() -> None:
    assert _stream(_iterator(seed=5), [B, B]) != _stream(_iterator(seed=6), [B, B])


class _Client:
    """Answers every query sync, ``left`` seconds before the slowest finishes."""

    def __init__(self, left: float | None) -> None:
        self.left, self.queries = left, 0

    def query_response(self, rank: int, k: int, c: float, te: float):
        from StateServer.messages import ResponseMsg

        self.queries += 1
        return ResponseMsg(rank=rank, round=2, action="sync", left=self.left)

    def reset(self, rank: int, t: int, te: float) -> None:
        pass


def _esync(left: float | None, epsilon: float = 0.0) -> tuple[ESync, _Client]:
    client = _Client(left)
    pacing = StateServerPacing(client, B, epsilon, "blocking", fill_last_batch=True)
    strategy = ESync(0.1, B, pacing)
    pacing.rank, pacing.num_workers = 0, 2  # what setup() takes from the KVStore
    return strategy, client


def test_a_sync_with_time_left_computes_a_smaller_batch_first() -> None:
    strategy, client = _esync(left=0.06)
    stats, progress = RoundStats(), LocalProgress(k=3, c=0.1)
    assert strategy.pacing.min_partial == 8
    assert strategy.should_sync(progress, stats) is False  # 64 * 0.06 / 0.1 = 38 -> 32
    assert strategy.next_batch_size(progress) == 32 == strategy.current_batch_size
    progress.k = 4
    assert strategy.should_sync(progress, stats) is True and client.queries == 1
    strategy.begin_round(3, stats)
    assert strategy.next_batch_size(LocalProgress()) == B  # a new round: full batches again


@pytest.mark.parametrize("left,epsilon", [(0.01, 0.0), (0.06, 0.05), (None, 0.0)])
def test_no_smaller_batch_below_the_minimum_or_without_a_budget(
    left: float | None, epsilon: float
) -> None:
    strategy, _ = _esync(left, epsilon)  # 64 * 0.01 / 0.1 = 6 < 8: idle instead
    assert strategy.should_sync(LocalProgress(k=3, c=0.1), RoundStats()) is True
    assert strategy.next_batch_size(LocalProgress()) == B


def test_the_smaller_batch_steps_with_its_mean_gradient() -> None:
    strategy, _ = _esync(left=0.06)
    model = Model(None, mx.cpu(), [mx.nd.ones((2,))], [mx.nd.array([32.0, 64.0])], [])
    strategy.should_sync(LocalProgress(k=3, c=0.1), RoundStats())
    assert strategy.next_batch_size(LocalProgress()) == 32
    strategy.local_update(model)  # w -= lr * grad_sum / 32
    np.testing.assert_allclose(model.params[0].asnumpy(), [1 - 0.1, 1 - 0.2], rtol=1e-6)


class _Sized(Strategy):
    """A strategy that asks for the given batch sizes, one per iteration."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__(0.1, B)
        self.sizes = sizes
        self.updates: list[int] = []

    def next_batch_size(self, progress: LocalProgress) -> int:
        return self.sizes.pop(0)

    def local_update(self, model: Model) -> None:
        self.updates.append(1)

    def synchronise(self, model: Model, stats: RoundStats, stop: bool) -> bool:
        return stop


def _worker(sizes: list[int], slowdown: float, emulation: str = "share") -> Worker:
    worker = Worker.__new__(Worker)  # the parts compute_batch uses, without a model
    from trainer.slowdown import make_emulation

    worker.emulation = make_emulation(emulation, Schedule.constant(slowdown), 0.0, 1, 0.004)
    worker.mode = _Sized(sizes)
    worker.batches = _iterator(1000)
    worker.log = argparse.Namespace(elapsed=lambda: 1.0)
    worker._forward_backward = lambda x, y: time.sleep(0.002 * len(x) / B)
    worker.model = None
    return worker


def test_the_loop_records_smaller_batches_and_keeps_c_per_full_batch() -> None:
    worker = _worker([B, B, 16, B], slowdown=4.0)
    progress, stats = LocalProgress(), RoundStats()
    for _ in range(2):
        worker.compute_batch(progress, stats)
    busy_avg = worker.emulation.busy_avg
    c_full, waited = progress.c, stats.extra["emulated_wait_s"]
    worker.compute_batch(progress, stats)  # the smaller one
    assert progress.c == c_full and progress.k == 3 and worker.emulation.busy_avg == busy_avg
    assert stats.extra["partial_samples"] == 16 and stats.samples == 2 * B + 16
    # its emulated wait is the device's for 16 samples: (4 - 1) x the typical busy x 16/64
    wait = stats.extra["emulated_wait_s"] - waited
    assert wait == pytest.approx(3 * busy_avg * 16 / B, abs=2e-6)
    worker.compute_batch(progress, stats)
    assert progress.c != c_full and stats.local_iterations == 4 and stats.samples == 3 * B + 16


def test_under_device_time_c_is_the_devices_seconds_per_batch() -> None:
    """Alg. 2 sees the emulated device: c = S x T0 whatever the host measured, a smaller
    batch takes its share of the device time, and overruns are counted per round."""
    worker = _worker([B, B, 16], slowdown=4.0, emulation="device")  # T0 = 4 ms, 16 ms a batch
    progress, stats = LocalProgress(), RoundStats()
    for _ in range(2):
        worker.compute_batch(progress, stats)
    assert progress.c == pytest.approx(0.016) and stats.extra["overruns"] == 0
    assert stats.compute_s == pytest.approx(0.032, abs=0.003)
    worker.compute_batch(progress, stats)
    assert progress.c == pytest.approx(0.016)  # unchanged by the smaller batch
    assert stats.compute_s == pytest.approx(0.036, abs=0.003)
    slow = _worker([B], slowdown=1.0, emulation="device")  # 4 ms device, 2 ms compute + sleep
    slow._forward_backward = lambda x, y: time.sleep(0.006)  # the host is too slow for it
    late = RoundStats()
    slow.compute_batch(LocalProgress(), late)
    assert late.extra["overruns"] == 1 and late.extra["overrun_s"] >= 0.0015
