"""The update arithmetic of every mode, as plain functions on lists of MXNet arrays.

Each function takes arrays and numbers and writes its result in place; none talks to a
KVStore or reads a clock, so tests can feed known values and compare with hand computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import mxnet as mx

Arrays = Sequence[mx.nd.NDArray]


def sgd_step(weights: Arrays, grads: Arrays, lr: float, rescale: float) -> None:
    """Plain SGD in place: w -= lr * rescale * g (rescale turns summed into mean gradients)."""
    for w, g in zip(weights, grads, strict=True):
        mx.nd.sgd_update(w, g, lr=lr, wd=0.0, rescale_grad=rescale, out=w)


def deltas(replica: Arrays, reference: Arrays) -> list[mx.nd.NDArray]:
    """Δw = replica - reference, one new array per weight."""
    return [w - g for w, g in zip(replica, reference, strict=True)]


def esync_global_step(
    global_params: Arrays, delta_sums: Arrays, global_lr: float, num_workers: int
) -> None:
    """Alg. 1's global step in place: w_{t+1} = w_t + global_lr * (sum_i Δw_i) / p."""
    scale = global_lr / num_workers
    for g, total in zip(global_params, delta_sums, strict=True):
        g += total * scale


def average_into(targets: Arrays, sums: Arrays, num_workers: int) -> None:
    """targets = sums / p: the mean of per-worker values (BatchNorm running statistics)."""
    for target, total in zip(targets, sums, strict=True):
        target[:] = total / num_workers


def copy_into(targets: Arrays, sources: Arrays) -> None:
    """targets = sources, element-wise, in place."""
    for target, source in zip(targets, sources, strict=True):
        source.copyto(target)


def stop_vote(total: float) -> bool:
    """A summed stop flag: the run stops when any worker asked to."""
    return bool(total > 0)
