"""The launcher's --max-restarts: a killed worker of a real cluster is restarted from the
checkpoint."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time

import pytest

from tests.support.processes import assert_all_gone, start_launcher
from tests.support.run_logs import read_rounds, worker_folders
from trainer import layout


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
