"""Network constructors selectable by name (the ``-n`` command-line value).

>>> net = get_model("resnet18-v1")            # uninitialised, 10 classes
>>> side = input_size("resnet18-v1", 28)       # 28: trains on the native image size
"""

from __future__ import annotations

from collections.abc import Callable

from mxnet.gluon import HybridBlock

from . import alexnet, inception, lenet, mobilenet, resnet

MODEL_NAMES: tuple[str, ...] = (
    "lenet",
    "alexnet",
    "resnet18-v1",
    "resnet50-v1",
    "resnet50-v2",
    "mobilenet-v1",
    "mobilenet-v2",
    "inception-v3",
)

_CONSTRUCTORS: dict[str, Callable[[int], HybridBlock]] = {
    "lenet": lenet.lenet,
    "alexnet": alexnet.alexnet,
    "resnet18-v1": resnet.resnet18_v1,
    "resnet50-v1": resnet.resnet50_v1,
    "resnet50-v2": resnet.resnet50_v2,
    "mobilenet-v1": mobilenet.mobilenet_v1,
    "mobilenet-v2": mobilenet.mobilenet_v2,
    "inception-v3": inception.inception_v3,
}

# Networks whose layout fixes the input size; all others run on the dataset's native size.
_FIXED_INPUT_SIZE: dict[str, int] = {
    "alexnet": alexnet.INPUT_SIZE,
    "inception-v3": inception.INPUT_SIZE,
}

assert tuple(_CONSTRUCTORS) == MODEL_NAMES


def _check_name(name: str) -> None:
    if name not in _CONSTRUCTORS:
        raise ValueError(f"unknown network {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def get_model(name: str, num_classes: int = 10) -> HybridBlock:
    """Build the uninitialised network ``name`` with ``num_classes`` outputs.

    The input channel count is inferred at the first forward pass, so the same net works
    on 1-channel (digits, fashion-mnist) and 3-channel (cifar10) images. Raises
    ``ValueError`` listing ``MODEL_NAMES`` for an unknown name.
    """
    _check_name(name)
    return _CONSTRUCTORS[name](num_classes)


def input_size(name: str, native_size: int) -> int:
    """Side length of the square images network ``name`` needs.

    224 for alexnet, 299 for inception-v3, otherwise ``native_size`` (the dataset's own,
    28 for digits / fashion-mnist, 32 for cifar10). Raises ``ValueError`` for an unknown name.
    """
    _check_name(name)
    return _FIXED_INPUT_SIZE.get(name, native_size)


__all__ = ["MODEL_NAMES", "get_model", "input_size"]
