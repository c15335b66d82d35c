"""LeNet-style CNN: the small default network, trains in seconds on a CPU."""

from __future__ import annotations

from mxnet.gluon import HybridBlock, nn


class LeNet(HybridBlock):
    """Two conv/relu/max-pool stages followed by a 128-unit hidden layer.

    Works on any input of side >= 16 (e.g. 28x28 digits or 32x32 CIFAR) and any number of
    input channels; the first conv and first dense layer infer their input sizes lazily.
    """

    def __init__(self, classes: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            with self.features.name_scope():
                self.features.add(
                    nn.Conv2D(20, kernel_size=5, activation="relu"),
                    nn.MaxPool2D(pool_size=2, strides=2),
                    nn.Conv2D(50, kernel_size=5, activation="relu"),
                    nn.MaxPool2D(pool_size=2, strides=2),
                    nn.Flatten(),
                    nn.Dense(128, activation="relu"),
                )
            self.output = nn.Dense(classes)

    def hybrid_forward(self, F, x):
        """Return class scores (logits) of shape (batch, classes)."""
        return self.output(self.features(x))


def lenet(classes: int = 10) -> LeNet:
    """Build an uninitialised LeNet with ``classes`` outputs."""
    return LeNet(classes=classes)
