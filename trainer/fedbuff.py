"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022).

Workers train E local steps (``--local-steps``) from the model they pulled and push their
update Δw = local - pulled at once, never waiting for each other. The parameter server keeps
each update, weighted by its staleness s(t) = 1 / sqrt(1 + t), in a buffer; every
``--buffer-size`` K updates it applies their mean, w += server_lr * (Σ s(t_i) Δw_i) / K, and
starts a new version. t counts the versions applied since the worker pulled
(:class:`trainer.federated.VersionedAsync` carries the version with the weights). K = 1 is
asynchronous SGD on model deltas; K = p with equal speeds is close to FedAvg. The arithmetic
is :func:`trainer.aggregate.fedbuff_accumulate`.
"""

from __future__ import annotations

from typing import ClassVar

import mxnet as mx

from argtypes import Option, positive_int
from trainer import aggregate
from trainer.federated import ServerRule, VersionedAsync


class FedBuff(VersionedAsync):
    """FedBuff: push Δw after E local steps; the server applies the staleness-weighted mean
    of every K buffered updates."""

    buffer_size: ClassVar[int] = 2  # half the default 4-worker cluster: a version per 2 pushes
    server_lr: ClassVar[float] = 1.0  # the mean of the buffer is applied as it is
    staleness_exponent: ClassVar[float] = 0.5  # s(t) = (1 + t)^-0.5, as in the paper
    options = (
        Option(
            "buffer_size",
            positive_int,
            "K: the server applies the mean of every K buffered updates",
        ),
    )

    def outgoing(self, index: int) -> mx.nd.NDArray:
        return self.arrays[index] - self.pulled[index]  # Δw since the pull

    def server_optimizer(self) -> ServerRule:
        params = {
            "buffer_size": self.buffer_size,
            "server_lr": self.server_lr,
            "exponent": self.staleness_exponent,
        }
        return ServerRule(aggregate.fedbuff_accumulate, aggregate.fedbuff_buffer, params)
