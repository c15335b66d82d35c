"""The checkpointer in process: the newest checkpoints kept, no temporary files, the
compatibility check. main.py's --resume and --evaluate are
tests/integration/test_checkpoint_resume.py's, --max-restarts
tests/e2e/test_checkpoint_restart.py's."""

from __future__ import annotations

import glob

import pytest

from trainer import layout
from trainer.checkpoint import Checkpointer, CheckpointError, check_compatible


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
