"""Inception-v3, from Gluon's model zoo; needs 299x299 inputs."""

from __future__ import annotations

from mxnet.gluon import HybridBlock
from mxnet.gluon.model_zoo import vision

#: Side length the network is built for (its final 8x8 average pool assumes it).
INPUT_SIZE = 299


def inception_v3(classes: int = 10) -> HybridBlock:
    """Build an uninitialised Inception-v3 with ``classes`` outputs (any input channels)."""
    return vision.inception_v3(classes=classes)
