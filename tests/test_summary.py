"""Tests of summary.py on hand-made run records with known numbers.

``build_logs`` is also used by test_draw.py. All numbers are chosen so that every rate is
exact in binary floating point, hence the ``==`` comparisons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import summary
from summary import SummaryError, load_worker, summarize, time_to_target, write_summary

ROOT = Path(__file__).resolve().parents[1]
NET = "lenet"


def rec(
    rnd: int,
    t: float,
    li: int,
    samples: int,
    push: int,
    pull: int,
    compute: float,
    acc: float | None = None,
) -> dict[str, Any]:
    """One rounds.jsonl record (test_acc / test_loss only when ``acc`` is given)."""
    record = {
        "round": rnd,
        "time": t,
        "local_iterations": li,
        "samples": samples,
        "bytes_pushed": push,
        "bytes_pulled": pull,
        "compute_s": compute,
        "wait_s": 0.0,
        "query_s": 0.0,
        "comm_s": 0.0,
        "eval_s": 0.0,
    }
    if acc is not None:
        record.update(test_acc=acc, test_loss=1.0 - acc)
    return record


def write_worker(
    base: Path,
    mode: str,
    host: str,
    device: str,
    rank: int,
    num_workers: int,
    slowdown: float,
    records: list[dict[str, Any]],
    tail: str = "",
) -> Path:
    """Write one worker folder; ``tail`` is appended raw after the records."""
    folder = base / NET / mode / host / f"{device}-rank{rank}"
    folder.mkdir(parents=True)
    meta = {
        "mode": mode.removesuffix("-niid"),
        "network": NET,
        "dataset": "digits",
        "split": "niid" if mode.endswith("-niid") else "iid",
        "rank": rank,
        "num_workers": num_workers,
        "host": host,
        "device": device,
        "slowdown": slowdown,
        "batch_size": 32,
        "lr": 0.05,
        "local_lr": 0.05,
        "global_lr": 1.0,
        "started_at": 1.7e9,
        "argv": ["main.py"],
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (folder / "rounds.jsonl").write_text(lines + tail)
    return folder


def build_logs(base: Path, niid: bool = True) -> Path:
    """esync (3 workers, 2 hosts), sync, async, local and, if ``niid``, esync/sync-niid."""
    r0 = [
        rec(1, 2.0, 4, 128, 1000, 1000, 1.5, acc=0.5),
        rec(2, 4.0, 4, 128, 1000, 1000, 1.5, acc=0.9375),
        rec(3, 8.0, 4, 128, 1000, 1000, 3.0, acc=0.875),
    ]
    folder = write_worker(
        base, "esync", "hostA", "cpu", 0, 3, 1.0, r0, tail='{"round": 4, "time": 9.'
    )  # killed mid-write
    text = (folder / "rounds.jsonl").read_text().replace("\n", "\n\n   \n", 1)  # blank lines
    (folder / "rounds.jsonl").write_text(text)
    write_worker(
        base,
        "esync",
        "hostA",
        "cpu",
        1,
        3,
        2.0,
        [rec(1, 4.0, 2, 64, 1000, 1000, 2.0), rec(2, 8.0, 2, 64, 1000, 1000, 2.0)],
    )
    write_worker(base, "esync", "hostB", "gpu0", 2, 3, 4.0, [rec(1, 16.0, 1, 32, 1000, 1000, 4.0)])
    write_worker(
        base,
        "sync",
        "hostA",
        "cpu",
        0,
        2,
        1.0,
        [
            rec(1, 8.0, 1, 32, 2000, 2000, 2.0, acc=0.5),
            rec(2, 16.0, 1, 32, 2000, 2000, 2.0, acc=0.75),
            rec(3, 32.0, 1, 32, 2000, 2000, 2.0, acc=0.9375),
        ],
    )
    write_worker(base, "sync", "hostB", "cpu", 1, 2, 2.0, [rec(1, 32.0, 1, 32, 2000, 2000, 8.0)])
    write_worker(
        base, "async", "hostA", "cpu", 0, 1, 1.0, [rec(1, 4.0, 1, 32, 100, 100, 1.0, acc=0.5)]
    )
    write_worker(
        base,
        "local",
        "hostA",
        "cpu",
        0,
        1,
        1.0,
        [rec(1, 1.0, 1, 32, 0, 0, 0.5), rec(2, 2.0, 1, 32, 0, 0, 0.5, acc=0.96875)],
    )
    if niid:
        write_worker(
            base,
            "esync-niid",
            "hostA",
            "cpu",
            0,
            2,
            1.0,
            [
                rec(1, 2.0, 2, 64, 500, 500, 1.0, acc=0.25),
                rec(2, 4.0, 2, 64, 500, 500, 1.0, acc=0.5),
            ],
        )
        write_worker(
            base, "esync-niid", "hostA", "cpu", 1, 2, 2.0, [rec(1, 4.0, 1, 32, 500, 500, 2.0)]
        )
        write_worker(
            base,
            "sync-niid",
            "hostA",
            "cpu",
            0,
            1,
            1.0,
            [rec(1, 8.0, 1, 32, 1000, 1000, 1.0, acc=0.5)],
        )
    return base / NET


def test_esync_cluster_numbers(tmp_path: Path) -> None:
    s = summarize(build_logs(tmp_path) / "esync")
    assert (s["mode"], s["network"], s["split"], s["num_workers"]) == ("esync", NET, "iid", 3)
    assert s["duration_s"] == 16.0
    assert s["samples_per_s"] == 544 / 16 == 34.0
    assert s["bytes_per_s"] == 12000 / 16 == 750.0
    assert s["accuracy"] == [[2.0, 0.5], [4.0, 0.9375], [8.0, 0.875]]
    assert s["final_accuracy"] == 0.875
    assert s["best_accuracy"] == 0.9375


def test_esync_worker_numbers(tmp_path: Path) -> None:
    workers = summarize(build_logs(tmp_path) / "esync")["workers"]
    got = [
        (
            w["rank"],
            w["host"],
            w["device"],
            w["slowdown"],
            w["rounds"],
            w["local_iterations"],
            w["samples_per_s"],
            w["bytes_per_s"],
            w["compute_time_ratio"],
        )
        for w in workers
    ]
    assert got == [
        (0, "hostA", "cpu", 1.0, 3, 12, 48.0, 750.0, 0.75),  # truncated line skipped
        (1, "hostA", "cpu", 2.0, 2, 4, 16.0, 500.0, 0.5),
        (2, "hostB", "gpu0", 4.0, 1, 1, 2.0, 125.0, 0.25),
    ]


def test_sync_and_local(tmp_path: Path) -> None:
    net = build_logs(tmp_path)
    sync = summarize(net / "sync")
    assert (sync["duration_s"], sync["samples_per_s"], sync["bytes_per_s"]) == (32.0, 4.0, 500.0)
    assert [w["compute_time_ratio"] for w in sync["workers"]] == [0.1875, 0.25]
    local = summarize(net / "local")
    assert (local["num_workers"], local["bytes_per_s"], local["samples_per_s"]) == (1, 0.0, 32.0)
    assert local["accuracy"] == [[2.0, 0.96875]]


def test_niid_split(tmp_path: Path) -> None:
    s = summarize(build_logs(tmp_path) / "esync-niid")
    assert (s["mode"], s["split"], s["num_workers"], s["duration_s"]) == (
        "esync-niid",
        "niid",
        2,
        4.0,
    )
    assert s["samples_per_s"] == 160 / 4
    assert (s["final_accuracy"], s["best_accuracy"]) == (0.5, 0.5)


def test_load_worker_skips_truncated_and_blank(tmp_path: Path) -> None:
    meta, records = load_worker(build_logs(tmp_path) / "esync" / "hostA" / "cpu-rank0")
    assert meta["rank"] == 0 and meta["slowdown"] == 1.0
    assert [r["round"] for r in records] == [1, 2, 3]


def test_garbage_in_the_middle_is_an_error(tmp_path: Path) -> None:
    folder = write_worker(
        tmp_path, "sync", "h", "cpu", 0, 1, 1.0, [rec(1, 1.0, 1, 32, 0, 0, 0.5)], tail="oops\n"
    )
    with (folder / "rounds.jsonl").open("a") as f:
        f.write(json.dumps(rec(2, 2.0, 1, 32, 0, 0, 0.5)) + "\n")
    with pytest.raises(SummaryError, match=r"rounds\.jsonl:2"):
        summarize(tmp_path / NET / "sync")


def test_record_without_time_is_an_error(tmp_path: Path) -> None:
    records = [{"round": 1}, rec(2, 2.0, 1, 1, 0, 0, 0)]
    write_worker(tmp_path, "sync", "h", "cpu", 0, 1, 1.0, records)
    with pytest.raises(SummaryError, match=r"rounds\.jsonl:1"):
        summarize(tmp_path / NET / "sync")


def test_missing_mode_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_logs(tmp_path, niid=False)
    missing = tmp_path / NET / "dcasgd"
    with pytest.raises(SummaryError, match="dcasgd does not exist") as info:
        summarize(missing)
    assert "esync" in str(info.value) and "local" in str(info.value)
    assert summary.main(["-b", str(tmp_path), "-n", NET, "-m", "dcasgd"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "'sync'" in err


def test_missing_network_folder(tmp_path: Path) -> None:
    with pytest.raises(SummaryError, match="does not exist either"):
        summarize(tmp_path / "nonet" / "esync")


def test_num_workers_mismatch_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_worker(tmp_path, "sync", "h", "cpu", 0, 4, 1.0, [rec(1, 1.0, 1, 32, 0, 0, 0.5)])
    assert summarize(tmp_path / NET / "sync")["num_workers"] == 1
    assert "found 1 worker folders, meta.json says [4]" in capsys.readouterr().err


def test_no_accuracy_gives_null(tmp_path: Path) -> None:
    write_worker(tmp_path, "sync", "h", "cpu", 0, 1, 1.0, [rec(1, 2.0, 1, 32, 8, 8, 0.5)])
    s = summarize(tmp_path / NET / "sync")
    assert (s["accuracy"], s["final_accuracy"], s["best_accuracy"]) == ([], None, None)


def test_time_to_target() -> None:
    acc = [[2.0, 0.5], [4.0, 0.9375], [8.0, 0.875]]
    assert time_to_target(acc, 0.9) == 4.0
    assert time_to_target(acc, 0.5) == 2.0
    assert time_to_target(acc, 0.95) is None
    assert time_to_target([], 0.1) is None


def test_write_summary_and_stale_reload(tmp_path: Path) -> None:
    mode_dir = build_logs(tmp_path) / "sync"
    path = write_summary(mode_dir)
    assert path == str(mode_dir / "summary.json")
    assert json.loads(Path(path).read_text()) == summarize(mode_dir)
    old = time.time() - 100
    for p in mode_dir.glob("*/*/*"):
        os.utime(p, (old - 10, old - 10))
    Path(path).write_text(json.dumps({"marker": 1}))
    os.utime(path, (old, old))
    assert summary.load_summary(mode_dir) == {"marker": 1}  # fresh: read as is
    os.utime(mode_dir / "hostB" / "cpu-rank1" / "rounds.jsonl")
    assert summary.load_summary(mode_dir)["duration_s"] == 32.0  # stale: recomputed


def test_cli_writes_summary(tmp_path: Path) -> None:
    build_logs(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "summary.py"),
            "-b",
            str(tmp_path),
            "-n",
            NET,
            "-m",
            "esync-niid",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    written = json.loads((tmp_path / NET / "esync-niid" / "summary.json").read_text())
    assert out.stdout.strip().endswith("summary.json")
    assert written["split"] == "niid" and written["duration_s"] == 4.0
    for key in (
        "mode",
        "network",
        "split",
        "num_workers",
        "duration_s",
        "accuracy",
        "final_accuracy",
        "best_accuracy",
        "samples_per_s",
        "bytes_per_s",
        "workers",
    ):
        assert key in written


def test_plateau_accuracy_averages_the_last_fifth_of_the_run() -> None:
    from summary import plateau_accuracy

    acc = [[1.0, 0.5], [5.0, 0.6], [8.0, 0.7], [9.0, 0.8], [10.0, 0.9]]
    assert plateau_accuracy(acc) == pytest.approx(0.8)  # t >= 8: 0.7, 0.8, 0.9
    assert plateau_accuracy([[3.0, 0.25]]) == 0.25
    assert plateau_accuracy([]) is None
