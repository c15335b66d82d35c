"""The checkpointer in process: the newest checkpoints kept, no temporary files on any
error, fsync, SHA-256 and the fall-back past a bad checkpoint, a full disk, the
compatibility and hyperparameter checks, the resume vote's rule. main.py's --resume and
--evaluate are tests/integration/test_checkpoint_resume.py's, --max-restarts
tests/e2e/test_checkpoint_restart.py's."""

from __future__ import annotations

import errno
import glob
import hashlib
import os

import pytest

from trainer import layout
from trainer.checkpoint import (
    Checkpointer,
    CheckpointError,
    DiskFullError,
    check_compatible,
    check_hyperparameters,
    newest_held_by_all,
    read_json,
)
from trainer.records import Resume, RunLog, read_records


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


class _Net:
    """Writes ``payload`` as its parameters; ``fail`` (an exception) is raised half-way."""

    def __init__(self, payload: str = "weights", fail: BaseException | None = None) -> None:
        self.payload, self.fail = payload, fail

    def save_parameters(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.write(self.payload[:3])
            if self.fail is not None:
                raise self.fail
            fh.write(self.payload[3:])


RUN = {"network": "lenet", "num_workers": 2}


def _written(tmp_path, rounds=(5, 10), hyper=None) -> Checkpointer:
    zero = Checkpointer(tmp_path, 0, 5, 3, RUN, hyper)
    for round_no in rounds:
        zero.write(round_no, float(round_no), _Net(f"weights of {round_no}"), {})
    return zero


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[:4], lambda data: bytes(len(data))],
    ids=["truncated", "zeroed"],  # a power loss or a full disk; blocks that were never written
)
def test_a_damaged_newest_checkpoint_is_skipped_and_named(tmp_path, capsys, damage) -> None:
    zero = _written(tmp_path)
    params, _ = layout.checkpoint_files(tmp_path, 10)
    params.write_bytes(damage(params.read_bytes()))
    assert zero.usable() == [5] and zero.newest() == 5
    err = capsys.readouterr().err
    assert "after round 10 is skipped" in err and str(params) in err and "SHA-256" in err


def test_a_missing_or_unreadable_part_is_skipped(tmp_path, capsys) -> None:
    zero = _written(tmp_path)
    layout.checkpoint_files(tmp_path, 10)[0].unlink()
    assert zero.usable() == [5]
    one = Checkpointer(tmp_path, 1, 5, 3, RUN)
    for round_no in (5, 10):
        one.write(round_no, 0.0, None, {})
    layout.worker_state_file(tmp_path, 10, 1).write_text('{"round": 1')  # torn JSON
    assert one.usable() == [5]
    assert "cannot read it" in capsys.readouterr().err


def test_worker_arrays_are_checksummed_too(tmp_path) -> None:
    one = Checkpointer(tmp_path, 1, 5, 3, RUN)
    for round_no in (5, 10):
        one.write(round_no, 0.0, None, {}, lambda p: open(p, "w").write("velocity"))
    assert one.usable() == [10, 5] and one.arrays_file(10) is not None
    one.arrays_file(10).write_text("velocitX")
    assert one.usable() == [5]
    for round_no in (15, 20, 25):
        one.write(round_no, 0.0, None, {})
    assert not layout.worker_arrays_file(tmp_path, 5, 1).exists()  # pruned with its .json


def test_the_description_carries_the_parameters_sha256(tmp_path) -> None:
    _written(tmp_path, rounds=(5,))
    params, info = layout.checkpoint_files(tmp_path, 5)
    assert read_json(info)["params_sha256"] == hashlib.sha256(params.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "error, raised",
    [(OSError(errno.EIO, "I/O error"), OSError), (KeyboardInterrupt(), KeyboardInterrupt)],
)
def test_a_failed_write_leaves_no_temporary_file(tmp_path, error, raised) -> None:
    zero = Checkpointer(tmp_path, 0, 5, 3, RUN)
    with pytest.raises(raised):
        zero.write(5, 5.0, _Net(fail=error), {})
    assert not glob.glob(str(tmp_path / "*tmp*"))
    assert zero.usable() == []


def test_a_full_disk_is_one_clear_error(tmp_path) -> None:
    zero = Checkpointer(tmp_path, 0, 5, 3, RUN)
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DiskFullError, match=r"round-00000005\.params: .*the disk is full"):
        zero.write(5, 5.0, _Net(fail=full), {})
    assert not glob.glob(str(tmp_path / "*tmp*"))


def test_files_and_their_folder_are_fsynced(tmp_path, monkeypatch) -> None:
    synced: list[str] = []
    real_open = os.open

    def remember(path, flags, *args):
        fd = real_open(path, flags, *args)
        synced_paths[fd] = str(path)
        return fd

    synced_paths: dict[int, str] = {}
    monkeypatch.setattr(os, "open", remember)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(synced_paths[fd]))
    _written(tmp_path, rounds=(5,))
    assert any(".params.tmp" in p for p in synced)  # the file, before its rename
    assert any(".json.tmp" in p for p in synced)
    assert str(tmp_path) in synced  # the folder, after it


def test_a_changed_hyperparameter_is_refused_unless_overridden(tmp_path, capsys) -> None:
    _written(tmp_path, rounds=(5,), hyper={"lr": 0.05, "epsilon": 0.1})
    changed = Checkpointer(tmp_path, 0, 5, 3, RUN, {"lr": 0.1, "epsilon": 0.1})

    class Loadable:
        def load_parameters(self, path: str, ctx: object) -> None:
            self.loaded = path

    with pytest.raises(CheckpointError, match=r"trained with lr=0.05 \(this run: 0.1\)"):
        changed.load(5, Loadable(), None)
    with pytest.raises(CheckpointError, match="--resume-override lr"):
        changed.load(5, Loadable(), None)
    accepted = Checkpointer(tmp_path, 0, 5, 3, RUN, {"lr": 0.1, "epsilon": 0.1}, ("lr",))
    accepted.load(5, Loadable(), None)
    assert "lr 0.05 -> 0.1" in capsys.readouterr().err
    unknown = Checkpointer(tmp_path, 0, 5, 3, RUN, {"lr": 0.05, "epsilon": 0.1}, ("mu",))
    with pytest.raises(
        CheckpointError, match=r"no such hyperparameter \(choose from epsilon, lr\)"
    ):
        unknown.load(5, Loadable(), None)


def test_a_checkpoint_without_recorded_hyperparameters_is_taken_as_it_is() -> None:
    assert check_hyperparameters({}, {"lr": 0.1}, (), layout.Path("old.json")) == []


@pytest.mark.parametrize(
    "candidates, holders, workers, agreed",
    [
        ([20.0, 15.0, 10.0], [3.0, 3.0, 3.0], 3, 20),
        ([20.0, 15.0, 10.0], [2.0, 3.0, 3.0], 3, 15),  # one worker lacks round 20
        ([20.0, 15.0, 10.0], [2.0, 2.0, 1.0], 3, 0),
        ([20.0, 0.0, 0.0], [3.0, 3.0, 3.0], 3, 20),  # zeros pad the list
        ([0.0, 0.0, 0.0], [3.0, 3.0, 3.0], 3, 0),
    ],
)
def test_newest_held_by_all(candidates, holders, workers, agreed) -> None:
    assert newest_held_by_all(candidates, holders, workers) == agreed


def test_a_resume_restores_the_checkpoints_record_when_its_line_was_lost(tmp_path) -> None:
    log = RunLog(tmp_path, {"rank": 1})
    for round_no in (1, 2, 3, 4):
        log.write({"round": round_no, "time": float(round_no)})
    log.close()
    saved = {"round": 5, "time": 5.0}  # killed after checkpoint 5, before record 5
    RunLog(tmp_path, {"rank": 1}, Resume(5, 5.0, "ckpt", saved)).close()
    assert [r["round"] for r in read_records(tmp_path / layout.ROUNDS_NAME)] == [1, 2, 3, 4, 5]
    RunLog(tmp_path, {"rank": 1}, Resume(3, 3.0, "ckpt", {"round": 3, "time": 9.9})).close()
    kept = read_records(tmp_path / layout.ROUNDS_NAME)
    assert kept == [{"round": r, "time": float(r)} for r in (1, 2, 3)]  # the line wins


def test_records_a_restart_does_not_go_on_from_are_kept_not_lost(tmp_path) -> None:
    log = RunLog(tmp_path, {"rank": 0})
    for round_no in (1, 2, 3, 4):
        log.write({"round": round_no, "time": float(round_no)})
    log.close()
    RunLog(tmp_path, {"rank": 0}, Resume(2, 2.0, "ckpt")).close()  # rounds 3, 4 thrown away
    dropped = tmp_path / layout.DROPPED_NAME
    assert [r["round"] for r in read_records(dropped)] == [3, 4]
    fresh = RunLog(tmp_path, {"rank": 0})  # no checkpoint found: starts afresh, wipes nothing
    fresh.write({"round": 1, "time": 1.0})
    fresh.close()
    assert [r["round"] for r in read_records(tmp_path / layout.ROUNDS_NAME)] == [1]
    assert [r["round"] for r in read_records(dropped)] == [3, 4, 1, 2]
