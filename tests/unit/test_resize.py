"""alexnet needs 224x224 inputs (models.input_size): the guard of the end-to-end resize run
of tests/integration/test_resize_training.py."""

from __future__ import annotations

import mxnet as mx
import pytest

from models import get_model, input_size


def test_alexnet_cannot_take_the_native_digits_size() -> None:
    """Without the resize main.py does, the run of test_resize_training could not work."""
    assert input_size("alexnet", 28) == 224
    net = get_model("alexnet")
    net.initialize(mx.init.Xavier())
    with pytest.raises(mx.base.MXNetError):
        net(mx.nd.zeros((1, 1, 28, 28))).wait_to_read()
    assert net(mx.nd.zeros((1, 1, 224, 224))).shape == (1, 10)
