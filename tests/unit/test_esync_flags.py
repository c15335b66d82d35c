"""ESync's flags reach Alg. 1 in process: -ll for the local steps, -gl, --epsilon and the
State Server's address. Epsilon in a real cluster is tests/e2e/test_esync_epsilon.py's."""

from __future__ import annotations

import mxnet as mx
import numpy as np

from trainer import registry
from trainer.options import parse_args
from trainer.strategy import Model

EPSILON = 0.05


def test_esync_local_steps_use_ll_and_the_flags_reach_alg_1() -> None:
    args = parse_args(
        ["-m", "esync", "-l", "0.5", "-ll", "0.125", "-gl", "0.75", "-b", "4"]
        + ["--epsilon", str(EPSILON), "-ip", "127.0.0.3", "-port", "10555"]
    )
    mode = registry.get("esync").load().from_args(args)
    w, g = np.array([1.0, -2.0, 0.5]), np.array([4.0, 8.0, -2.0])
    model = Model(None, mx.cpu(), [mx.nd.array(w)], [mx.nd.array(g)], [])
    mode.local_update(model)
    np.testing.assert_allclose(model.params[0].asnumpy(), w - 0.125 * g / 4, rtol=1e-6)
    assert (mode.global_lr, mode.pacing.epsilon) == (0.75, EPSILON)
    assert mode.pacing.client.url == "http://127.0.0.3:10555"
    # without -ll the local steps use -l
    mode = registry.get("esync").load().from_args(parse_args(["-m", "esync", "-l", "0.5"]))
    model = Model(None, mx.cpu(), [mx.nd.array(w)], [mx.nd.array(g)], [])
    mode.local_update(model)
    np.testing.assert_allclose(model.params[0].asnumpy(), w - 0.5 * g / 64, rtol=1e-6)
