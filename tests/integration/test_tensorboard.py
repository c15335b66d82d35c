"""Every run writes TensorBoard event files next to its records; read them back."""

from __future__ import annotations

import glob
import os
import struct

import pytest
from tensorboardX.proto import event_pb2

from tests.support.processes import run_py
from tests.support.run_logs import read_rounds, worker_folders
from trainer import layout


def read_scalars(folder: str) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every event file in ``folder`` (TFRecord framing: length,
    its CRC, the serialized Event, its CRC)."""
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(folder, layout.TENSORBOARD_GLOB))):
        with open(path, "rb") as fh:
            data = fh.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_a_run_writes_what_its_records_say(log_dir: str) -> None:
    flags = "-m local --rounds 30 -e 10 --checkpoint-every 10".split()
    assert run_py(["main.py", *flags, "-ld", log_dir], timeout=120).returncode == 0
    folder = worker_folders(log_dir, "lenet", "local")[0]
    records = read_rounds(folder)
    scalars = read_scalars(folder)
    # an evaluation is logged at the round whose parameters it scored (eval_round)
    evals = {r["eval_round"]: r["test_acc"] for r in records if "test_acc" in r}
    assert set(scalars["test/accuracy"]) == set(evals) == {10, 20, 30}
    for step, acc in evals.items():
        assert scalars["test/accuracy"][step] == pytest.approx(acc, abs=1e-6)
    assert sorted(scalars["worker/local_iterations"]) == list(range(1, 31))
    last = records[-1]
    ratio = sum(r["compute_s"] for r in records) / last["time"]
    assert scalars["worker/compute_time_ratio"][30] == pytest.approx(ratio, rel=1e-4)
    assert scalars["worker/samples_per_s"][30] == pytest.approx(30 * 64 / last["time"], rel=1e-4)

    # a resumed run continues the same curves
    resumed = run_py(["main.py", *flags, "--rounds", "40", "--resume", "-ld", log_dir], timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    again = read_scalars(folder)
    assert set(again["test/accuracy"]) == {10, 20, 30, 40}
    assert sorted(again["worker/local_iterations"]) == list(range(1, 41))
