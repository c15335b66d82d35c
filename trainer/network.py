"""The network a worker trains, as the trainer, the evaluator and the probe build it."""

from __future__ import annotations

import sys

import mxnet as mx
from mxnet import autograd, gluon

from models import get_model, input_size
from trainer.strategy import Model
from utils import Dataset, test_batches


def pick_device(gpu: int | None, force_cpu: bool) -> tuple[mx.Context, str]:
    """CPU unless a GPU is asked for and exists; warns when the asked GPU is missing."""
    if gpu is None or force_cpu:
        return mx.cpu(), "cpu"
    available = mx.context.num_gpus()
    if gpu < 0 or gpu >= available:
        print(
            f"warning: GPU {gpu} asked for but {available} GPU(s) found; using the CPU",
            file=sys.stderr,
        )
        return mx.cpu(), "cpu"
    return mx.gpu(gpu), f"gpu{gpu}"


def build_model(network: str, seed: int, data: Dataset, ctx: mx.Context) -> tuple[Model, int]:
    """Initialised network (shapes inferred, hybridized) and the input side length it needs."""
    mx.random.seed(seed)
    net = get_model(network)
    net.initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
    size = input_size(network, data.image_size)
    # Infer shapes with a training-mode pass: an inference pass lets MKL-DNN keep convolution
    # weights in its own blocked layout, which the KVStore cannot send.
    with autograd.record():
        net(mx.nd.zeros((2, data.channels, size, size), ctx=ctx))
    net.hybridize()
    return Model.wrap(net, ctx), size


def evaluate(model: Model, data: Dataset, size: int, batch_size: int) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the current parameters."""
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in test_batches(data.test_x, data.test_y, max(batch_size, 256), size):
        xs = mx.nd.array(x, ctx=model.ctx)
        ys = mx.nd.array(y, ctx=model.ctx)
        out = model.net(xs)
        loss_sum += float(loss_fn(out, ys).sum().asscalar())
        correct += int((out.argmax(axis=1) == ys.astype("float32")).sum().asscalar())
        total += len(y)
    return correct / total, loss_sum / total
