"""ResNet-18/50 v1 and ResNet-50 v2, from Gluon's model zoo.

The datasets here are 28x28 or 32x32, so by default the networks use Gluon's "thumbnail"
stem (one stride-1 3x3 conv, no max-pool) instead of the ImageNet 7x7/2 conv + 3x3/2 pool,
which would shrink a 28x28 image to 7x7 before the first residual stage.
"""

from __future__ import annotations

from mxnet.gluon import HybridBlock
from mxnet.gluon.model_zoo import vision


def _resnet(version: int, num_layers: int, classes: int, thumbnail: bool) -> HybridBlock:
    return vision.get_resnet(version, num_layers, classes=classes, thumbnail=thumbnail)


def resnet18_v1(classes: int = 10, thumbnail: bool = True) -> HybridBlock:
    """Build an uninitialised ResNet-18 v1 (basic blocks, post-activation)."""
    return _resnet(1, 18, classes, thumbnail)


def resnet50_v1(classes: int = 10, thumbnail: bool = True) -> HybridBlock:
    """Build an uninitialised ResNet-50 v1 (bottleneck blocks, post-activation)."""
    return _resnet(1, 50, classes, thumbnail)


def resnet50_v2(classes: int = 10, thumbnail: bool = True) -> HybridBlock:
    """Build an uninitialised ResNet-50 v2 (bottleneck blocks, pre-activation)."""
    return _resnet(2, 50, classes, thumbnail)
