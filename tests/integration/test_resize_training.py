"""The resize path end to end: a network with a fixed input size trains on 28x28 digits.

alexnet needs 224x224 inputs (models.input_size); main.py must resize every training and test
batch. A two-round standalone run with a tiny batch finishes, writes its records and evaluates
(on the resized test set). inception-v3 (299) takes the same path but needs a minute here.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.support.processes import run_py
from tests.support.run_logs import read_rounds, worker_folders
from trainer import layout


@pytest.mark.slow
def test_alexnet_trains_two_rounds_on_resized_digits(log_dir: str) -> None:
    res = run_py(
        ["main.py", "-m", "local", "-n", "alexnet", "-b", "2", "--rounds", "2", "-e", "0"]
        + ["-ld", log_dir],
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    folders = worker_folders(log_dir, "alexnet", "local")
    assert list(folders) == [0]
    with open(os.path.join(folders[0], layout.META_NAME)) as fh:
        meta = json.load(fh)
    assert (meta["network"], meta["dataset"], meta["batch_size"]) == ("alexnet", "digits", 2)
    records = read_rounds(folders[0])
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["samples"] == 2 and r["local_iterations"] == 1 for r in records)
    assert "test_acc" in records[-1] and 0.0 <= records[-1]["test_acc"] <= 1.0
    assert "[Iteration 2] Test Acc" in res.stdout
