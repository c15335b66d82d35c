"""Tests of the ``models`` package: every network builds and runs, lenet learns."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

from models import MODEL_NAMES, get_model, input_size

EXPECTED_NAMES = (
    *("lenet", "alexnet", "resnet18-v1", "resnet50-v1", "resnet50-v2"),
    *("mobilenet-v1", "mobilenet-v2", "inception-v3"),
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    mx.random.seed(0)
    np.random.seed(0)


def _forward(net: gluon.Block, channels: int, side: int, batch: int = 2) -> np.ndarray:
    x = mx.nd.random.uniform(shape=(batch, channels, side, side))
    return net(x).asnumpy()


def _map_before_global_pool(net: gluon.Block, x: mx.nd.NDArray) -> tuple[int, ...]:
    """Shape of the feature map that reaches the net's GlobalAvgPool2D."""
    feats = net.features
    for i in range(len(feats)):
        if isinstance(feats[i], nn.GlobalAvgPool2D):
            return feats[:i](x).shape
    raise AssertionError("no GlobalAvgPool2D in net.features")


def test_model_names_exact() -> None:
    assert MODEL_NAMES == EXPECTED_NAMES


def test_input_size() -> None:
    assert input_size("alexnet", 28) == 224
    assert input_size("alexnet", 32) == 224
    assert input_size("inception-v3", 28) == 299
    assert input_size("inception-v3", 32) == 299
    for name in MODEL_NAMES:
        if name not in ("alexnet", "inception-v3"):
            assert input_size(name, 28) == 28
            assert input_size(name, 32) == 32


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_one_channel(name: str) -> None:
    net = get_model(name)
    assert isinstance(net, gluon.HybridBlock)
    net.initialize()
    out = _forward(net, channels=1, side=input_size(name, 28))
    assert out.shape == (2, 10)
    assert np.all(np.isfinite(out))
    # a 1-channel net really got 1-channel first-layer weights
    first_weight = next(p for p in net.collect_params().values() if p.name.endswith("weight"))
    assert first_weight.shape[1] == 1


@pytest.mark.parametrize("name", ["lenet", "resnet18-v1", "mobilenet-v1", "mobilenet-v2"])
def test_forward_three_channel_32(name: str) -> None:
    net = get_model(name)
    net.initialize()
    out = _forward(net, channels=3, side=input_size(name, 32))
    assert out.shape == (2, 10)
    assert np.all(np.isfinite(out))


def test_num_classes() -> None:
    net = get_model("lenet", num_classes=7)
    net.initialize()
    assert _forward(net, channels=1, side=28).shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "spatial"),
    [
        ("resnet18-v1", 4),
        ("resnet50-v1", 4),
        ("resnet50-v2", 4),
        ("mobilenet-v1", 2),
        ("mobilenet-v2", 2),
    ],
)
def test_small_input_stem(name: str, spatial: int) -> None:
    """On 28x28 the nets keep more than a 1x1 map before global pooling (small stems)."""
    net = get_model(name)
    net.initialize()
    shape = _map_before_global_pool(net, mx.nd.random.uniform(shape=(2, 1, 28, 28)))
    assert shape[2:] == (spatial, spatial)


@pytest.mark.parametrize("name", ["lenet", "mobilenet-v1", "mobilenet-v2"])
def test_hybridize_matches_imperative(name: str) -> None:
    net = get_model(name)
    net.initialize()
    x = mx.nd.random.uniform(shape=(2, 1, 28, 28))
    imperative = net(x).asnumpy()
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), imperative, rtol=1e-4, atol=1e-5)


def test_unknown_name_raises() -> None:
    with pytest.raises(ValueError) as err:
        get_model("resnet18_v1")
    for name in MODEL_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="lenet"):
        input_size("vgg16", 28)


def _quadrant_data(n: int, rng: np.random.Generator) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """28x28 noise images whose label (0..3) is the quadrant holding a bright square."""
    labels = rng.integers(0, 4, size=n)
    x = rng.normal(0.0, 0.3, size=(n, 1, 28, 28)).astype(np.float32)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        x[i, 0, r * 14 + 2 : r * 14 + 12, c * 14 + 2 : c * 14 + 12] += 1.0
    return mx.nd.array(x), mx.nd.array(labels)


def test_lenet_trains() -> None:
    rng = np.random.default_rng(0)
    x, y = _quadrant_data(64, rng)
    net = get_model("lenet")
    net.initialize(mx.init.Xavier())
    net.hybridize()
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})

    def full_loss() -> float:
        return float(loss_fn(net(x), y).mean().asscalar())

    initial = full_loss()
    for step in range(40):
        lo = (step % 2) * 32
        xb, yb = x[lo : lo + 32], y[lo : lo + 32]
        with autograd.record():
            loss = loss_fn(net(xb), yb)
        loss.backward()
        trainer.step(xb.shape[0])
    final = full_loss()
    accuracy = float((net(x).argmax(axis=1) == y).mean().asscalar())
    assert final < 0.5 * initial, (initial, final)
    assert accuracy >= 0.9, accuracy
