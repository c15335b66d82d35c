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


# --- the journal paper's federated baselines and ESync variants (trainer/federated.py) -------


def prox_sgd_step(
    weights: Arrays, grads: Arrays, anchors: Arrays, lr: float, rescale: float, mu: float
) -> None:
    """FedProx's local step in place: w -= lr * (rescale * g + mu * (w - anchor)), the gradient
    of f(w) + mu/2 * ||w - anchor||^2 with the anchor the round's global weights (mu 0: SGD)."""
    if mu == 0.0:
        sgd_step(weights, grads, lr, rescale)
        return
    for w, g, anchor in zip(weights, grads, anchors, strict=True):
        w -= lr * (g * rescale + (w - anchor) * mu)


def nova_directions(replica: Arrays, reference: Arrays, steps: int) -> list[mx.nd.NDArray]:
    """FedNova's normalised update of one worker: d = (replica - reference) / k, one new array
    per weight (k = its local SGD steps this round; k = 0 gives d = 0)."""
    scale = 1.0 / steps if steps > 0 else 0.0
    return [(w - g) * scale for w, g in zip(replica, reference, strict=True)]


def nova_global_step(
    global_params: Arrays,
    direction_sums: Arrays,
    steps_sum: float,
    global_lr: float,
    num_workers: int,
) -> None:
    """FedNova's global step with equal shares p_i = 1/p, in place:
    w += global_lr * (sum_i p_i d_i) * (sum_i p_i k_i) = global_lr * (sum d / p) * (sum k / p)."""
    scale = global_lr * (steps_sum / num_workers) / num_workers
    for g, total in zip(global_params, direction_sums, strict=True):
        g += total * scale


def momentum_global_step(
    global_params: Arrays,
    velocity: Arrays,
    delta_sums: Arrays,
    beta: float,
    global_lr: float,
    num_workers: int,
) -> None:
    """Alg. 1's global step with server momentum (FedAvgM), in place:
    v = beta * v + (sum_i Δw_i) / p, w_{t+1} = w_t + global_lr * v."""
    for w, v, total in zip(global_params, velocity, delta_sums, strict=True):
        v[:] = v * beta + total / num_workers
        w += v * global_lr


def scaffold_step(
    weights: Arrays, grads: Arrays, corrections: Arrays, lr: float, rescale: float
) -> None:
    """SCAFFOLD's local step in place (Karimireddy et al. 2020):
    w -= lr * (rescale * g + (c - c_i)),
    ``corrections`` = c - c_i, the global control variate minus this worker's."""
    for w, g, correction in zip(weights, grads, corrections, strict=True):
        w -= lr * (g * rescale + correction)


def control_variate(gradient_sums: Arrays, steps: int, previous: Arrays) -> list[mx.nd.NDArray]:
    """A worker's new control variate c_i+ (SCAFFOLD's option II): with plain SGD
    c_i - c + (x - y_i) / (k lr) is the mean of the k mean gradients it computed this round;
    a round without a step keeps ``previous``."""
    if steps == 0:
        return [c.copy() for c in previous]
    return [total / steps for total in gradient_sums]


STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def staleness_weight(kind: str, staleness: float, a: float, b: float) -> float:
    """FedAsync's s(t) (Xie et al. 2019, Sec. 5.2): constant 1; polynomial (t + 1)^-a;
    hinge 1 if t <= b else 1 / (a (t - b) + 1)."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((staleness + 1.0) ** -a)
    if kind == "hinge":
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)
    raise ValueError(f"unknown staleness function {kind!r} (choose from {STALENESS_FUNCTIONS})")


def fedasync_mix(
    stored: mx.nd.NDArray,
    pushed: mx.nd.NDArray,
    state: None,
    alpha: float,
    kind: str,
    a: float,
    b: float,
) -> tuple[int, float]:
    """FedAsync's server update of one key, in place; returns (staleness, a_t). It keeps no
    server-side state (``state`` is None).

    Both arrays are a flattened weight followed by one version element: ``stored`` ends with
    the number of updates the server applied to this key, ``pushed`` with the version the
    worker pulled before training. staleness t = stored version - pushed version,
    a_t = alpha * s(t), x <- (1 - a_t) x + a_t x_new, and the stored version grows by one.
    """
    n = stored.size - 1
    version = int(stored[n:].asscalar())
    staleness = max(0, version - int(pushed[n:].asscalar()))
    a_t = alpha * staleness_weight(kind, staleness, a, b)
    stored[0:n] = stored[0:n] * (1.0 - a_t) + pushed[0:n] * a_t
    stored[n:] = version + 1
    return staleness, a_t


def fedbuff_buffer(stored: mx.nd.NDArray) -> mx.nd.NDArray:
    """FedBuff's server-side state of one key: the weighted sum of the buffered updates,
    followed by one element, how many updates it holds (a zero array shaped as ``stored``)."""
    return mx.nd.zeros(stored.shape, stored.context, dtype=stored.dtype)


def fedbuff_accumulate(
    stored: mx.nd.NDArray,
    pushed: mx.nd.NDArray,
    buffer: mx.nd.NDArray,
    buffer_size: int,
    server_lr: float,
    exponent: float,
) -> tuple[int, float, bool]:
    """FedBuff's server update of one key (Nguyen et al. 2022, Alg. 1), in place; returns
    (staleness, its weight, whether the buffer was applied).

    ``stored`` is a flattened weight followed by its version (how many times a full buffer
    was applied), ``pushed`` a worker's flattened Δw followed by the version it trained from,
    ``buffer`` :func:`fedbuff_buffer`'s state. staleness t = stored version - pushed version;
    the update enters the buffer weighted by s(t) = (1 + t)^-exponent (the paper's
    1 / sqrt(1 + t) for exponent 0.5); the K-th update (K = ``buffer_size``) applies
    w += server_lr * (buffer sum) / K, increments the version and empties the buffer.
    """
    n = stored.size - 1
    version = int(stored[n:].asscalar())
    staleness = max(0, version - int(pushed[n:].asscalar()))
    weight = staleness_weight("polynomial", staleness, exponent, 0.0)
    buffer[0:n] += pushed[0:n] * weight
    count = int(buffer[n:].asscalar()) + 1
    if count < buffer_size:
        buffer[n:] = count
        return staleness, weight, False
    stored[0:n] += buffer[0:n] * (server_lr / buffer_size)
    stored[n:] = version + 1
    buffer[:] = 0.0
    return staleness, weight, True
