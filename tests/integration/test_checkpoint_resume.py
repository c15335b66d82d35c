"""Saved models, checkpoints, --resume and --evaluate of a standalone main.py process."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.processes import run_py
from tests.support.run_logs import read_rounds, worker_folders
from trainer import layout


def _local(log_dir: str, rounds: int, *extra: str) -> subprocess.CompletedProcess:
    flags = f"-m local --rounds {rounds} --checkpoint-every 20 -e 0 -ld {log_dir}".split()
    return run_py(["main.py", *flags, *extra], timeout=180)


def _model(log_dir: str, mode: str = "local") -> bytes:
    with open(os.path.join(log_dir, "lenet", mode, layout.MODEL_PARAMS), "rb") as fh:
        return fh.read()


def test_resume_continues_at_the_next_round_bit_identically(tmp_path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert _local(a, 40).returncode == 0
    res = _local(a, 80, "--resume")
    assert res.returncode == 0, res.stderr
    assert "resumed after round 40" in res.stdout
    assert _local(b, 80).returncode == 0
    assert _model(a) == _model(b)  # same seeds, same data order: the same parameters
    records = read_rounds(worker_folders(a, "lenet", "local")[0])
    assert [r["round"] for r in records] == list(range(1, 81))
    times = [r["time"] for r in records]
    assert times == sorted(times)  # one time axis across the restart
    with open(os.path.join(worker_folders(a, "lenet", "local")[0], layout.META_NAME)) as fh:
        assert [r["round"] for r in json.load(fh)["resumed"]] == [40]


def test_mismatched_checkpoint_is_refused_with_file_and_field(tmp_path) -> None:
    log_dir = str(tmp_path)
    assert _local(log_dir, 20).returncode == 0
    res = _local(log_dir, 40, "--resume", "-b", "32")
    assert res.returncode == 2
    assert "round-00000020.json is a checkpoint of batch_size=64" in res.stderr
    assert "this run has batch_size=32" in res.stderr and "Traceback" not in res.stderr


def test_saved_model_loads_and_scores(tmp_path) -> None:
    log_dir = str(tmp_path)
    assert _local(log_dir, 200).returncode == 0
    path = os.path.join(log_dir, "lenet", "local", layout.MODEL_PARAMS)
    with open(path.replace(".params", ".json")) as fh:
        info = json.load(fh)
    assert info["round"] == 200 and info["network"] == "lenet" and info["input_size"] == 28
    res = run_py(["main.py", "--evaluate", path], timeout=120)
    assert res.returncode == 0, res.stderr
    accuracy = float(res.stdout.split("test accuracy ")[1].split(",")[0])
    assert accuracy >= 0.9 and accuracy == pytest.approx(info["test_accuracy"], abs=1e-4)
    missing = run_py(["main.py", "--evaluate", str(tmp_path / "nothing.params")], timeout=60)
    assert missing.returncode == 2 and "nothing.json" in missing.stderr


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert _local(a, 40).returncode == 0
    folder = layout.checkpoint_dir(layout.mode_dir(a, "lenet", "local"))
    params, _ = layout.checkpoint_files(folder, 40)
    params.write_bytes(params.read_bytes()[:1000])  # a power loss during the rename's flush
    res = _local(a, 60, "--resume")
    assert res.returncode == 0, res.stderr
    assert f"the checkpoint after round 40 is skipped: {params}" in res.stderr
    assert "resumed after round 20" in res.stdout
    records = read_rounds(worker_folders(a, "lenet", "local")[0])
    assert [r["round"] for r in records] == list(range(1, 61))
    assert _local(b, 60).returncode == 0
    assert _model(a) == _model(b)  # rounds 21-40 were trained again, the same way


def test_a_changed_hyperparameter_needs_resume_override(tmp_path) -> None:
    log_dir = str(tmp_path)
    assert _local(log_dir, 20).returncode == 0
    refused = _local(log_dir, 40, "--resume", "-ll", "0.1")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "trained with local_lr=0.05 (this run: 0.1)" in refused.stderr
    assert "give --resume-override local_lr to accept" in refused.stderr
    folder = worker_folders(log_dir, "lenet", "local")[0]
    assert len(read_rounds(folder)) == 20  # nothing lost
    accepted = _local(log_dir, 40, "--resume", "-ll", "0.1", "--resume-override", "local_lr")
    assert accepted.returncode == 0, accepted.stderr
    assert "local_lr 0.05 -> 0.1" in accepted.stderr
    assert "resumed after round 20" in accepted.stdout
