"""The FedAsync server optimizer unpickles in a fresh process the way the parameter server
(``python main.py`` with DMLC_ROLE=server) does it."""

from __future__ import annotations

import pickle
import subprocess
import sys

from launcher.supervision import ROOT
from trainer.federated import FedAsync


def test_the_parameter_server_can_unpickle_the_fedasync_optimizer() -> None:
    """kv.set_optimizer pickles with protocol 0; the server (``python main.py`` with
    DMLC_ROLE=server, cwd the repo root) unpickles it, which imports trainer.federated."""
    mixer = FedAsync(0.1, 4, alpha=0.4, staleness="hinge", staleness_a=2.0, staleness_b=1.0)
    blob = pickle.dumps(mixer.server_optimizer(), 0)
    code = (
        "import pickle, sys; opt = pickle.loads(sys.stdin.buffer.read()); p = opt.params; "
        "print(type(opt).__module__, opt.name, p['alpha'], p['kind'], p['a'], p['b'])"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], input=blob, cwd=ROOT, capture_output=True, timeout=120
    )
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert res.stdout.decode().split() == [
        "trainer.federated",
        "ServerRule(fedasync_mix)",
        "0.4",
        "hinge",
        "2.0",
        "1.0",
    ]
