"""AlexNet, from Gluon's model zoo; needs 224x224 inputs."""

from __future__ import annotations

from mxnet.gluon import HybridBlock
from mxnet.gluon.model_zoo import vision

#: Side length the network is built for (its flatten layer assumes a 6x6 feature map).
INPUT_SIZE = 224


def alexnet(classes: int = 10) -> HybridBlock:
    """Build an uninitialised AlexNet with ``classes`` outputs (any number of input channels)."""
    return vision.alexnet(classes=classes)
