"""Saved models, checkpoints, --resume, --evaluate and the launcher's --max-restarts."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time

import pytest
from conftest import (
    assert_all_gone,
    read_rounds,
    run_py,
    start_launcher,
    worker_folders,
)

from trainer import layout
from trainer.checkpoint import Checkpointer, CheckpointError, check_compatible


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


def test_checkpointer_keeps_the_newest_and_leaves_no_temporary_files(tmp_path) -> None:
    class Net:
        def save_parameters(self, path: str) -> None:
            with open(path, "w") as fh:
                fh.write("weights")

    run = {"network": "lenet", "num_workers": 2}
    zero, one = (Checkpointer(tmp_path, rank, 5, 3, run) for rank in (0, 1))
    for round_no in (5, 10, 15, 20):
        for ckpt in (zero, one):
            ckpt.write(round_no, float(round_no), Net(), {"batches": {"epoch": 0, "pos": 1}})
    assert layout.checkpoint_rounds(tmp_path) == [10, 15, 20]
    assert zero.newest() == one.newest() == 20
    assert not glob.glob(str(tmp_path / "*tmp*"))
    assert len(glob.glob(str(tmp_path / "*.rank1.json"))) == 3
    assert zero.due(10, False) and zero.due(11, True) and not zero.due(11, False)


def test_compatibility_check_names_the_field() -> None:
    with pytest.raises(CheckpointError, match="num_workers=4, this run has num_workers=3"):
        check_compatible({"num_workers": 4}, {"num_workers": 3}, layout.Path("x.json"))
    check_compatible({"num_workers": 3, "other": 1}, {"num_workers": 3}, layout.Path("x.json"))


def _pids(log_dir: str, mode: str) -> dict[str, int]:
    pids = {}
    folder = layout.process_dir(log_dir, "lenet", mode)
    for path in glob.glob(str(folder / "**" / layout.PIDS_NAME), recursive=True):
        with open(path) as fh:
            pids.update({f"{path}:{k}": v for k, v in json.load(fh).items()})
    return pids


def _wait_for_round(log_dir: str, mode: str, round_no: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        folders = worker_folders(log_dir, "lenet", mode) if os.path.isdir(log_dir) else {}
        if folders and min(len(read_rounds(f)) for f in folders.values()) >= round_no:
            return
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"round {round_no} not reached")


@pytest.mark.slow
def test_killed_worker_is_restarted_from_the_checkpoint(log_dir: str) -> None:
    flags = "-w 3 --slowdowns 1,1,4 -m sync --rounds 100000 --max-time 12 -e 0 --eval-interval 2"
    proc = start_launcher(
        log_dir, *flags.split(), "-n", "lenet", "--checkpoint-every", "5", "--max-restarts", "1"
    )
    _wait_for_round(log_dir, "sync", 12, proc)
    with open(layout.process_dir(log_dir, "lenet", "sync") / layout.PIDS_NAME) as fh:
        os.kill(json.load(fh)["worker1"], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    assert "exited with code -9" in err and "restart 1 of 1" in err
    assert "from the checkpoint after round" in err
    records = {r: read_rounds(f) for r, f in worker_folders(log_dir, "lenet", "sync").items()}
    assert sorted(records) == [0, 1, 2]
    lengths = {len(recs) for recs in records.values()}
    assert len(lengths) == 1, lengths
    for recs in records.values():
        assert [r["round"] for r in recs] == list(range(1, len(recs) + 1))
    for i in range(lengths.pop()):
        assert len({recs[i]["checksum"] for recs in records.values()}) == 1, i
    assert os.path.exists(os.path.join(log_dir, "lenet", "sync", layout.MODEL_PARAMS))
    assert_all_gone(_pids(log_dir, "sync"))
