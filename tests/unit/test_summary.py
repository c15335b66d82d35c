"""Tests of summary.py on hand-made run records with known numbers
(tests/support/run_logs.py: every rate is exact in binary floating point, hence ``==``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import summary
from summary import SummaryError, load_worker, summarize, time_to_target, write_summary
from tests.support.run_logs import NET, build_logs, rec, write_worker


def test_esync_cluster_numbers(tmp_path: Path) -> None:
    s = summarize(build_logs(tmp_path) / "esync")
    assert (s["mode"], s["network"], s["split"], s["num_workers"]) == ("esync", NET, "iid", 3)
    assert s["duration_s"] == 16.0
    assert s["samples_per_s"] == 544 / 16 == 34.0
    assert s["bytes_per_s"] == 12000 / 16 == 750.0
    assert s["accuracy"] == [[2.0, 0.5], [4.0, 0.9375], [8.0, 0.875]]
    assert s["final_accuracy"] == 0.875
    assert s["best_accuracy"] == 0.9375


def test_bytes_per_server_are_summed_per_worker_and_over_the_cluster(tmp_path: Path) -> None:
    def two(rnd: int, per_server: list[int]) -> dict:
        return {**rec(rnd, 1.0 * rnd, 1, 32, 150, 150, 0.5), "server_bytes": per_server}

    write_worker(
        tmp_path, "sync", "hostA", "cpu", 0, 2, 1.0, [two(1, [200, 100]), two(2, [200, 100])]
    )
    write_worker(tmp_path, "sync", "hostA", "cpu", 1, 2, 1.0, [two(1, [200, 100])])
    s = summarize(tmp_path / NET / "sync")
    assert [w["server_bytes"] for w in s["workers"]] == [[400, 200], [200, 100]]
    assert s["server_bytes"] == [600, 300] and s["server_balance"] == 0.5
    assert sum(s["server_bytes"]) == s["total_bytes"]
    write_worker(tmp_path, "local", "hostA", "cpu", 0, 1, 1.0, [rec(1, 1.0, 1, 32, 0, 0, 0.5)])
    alone = summarize(tmp_path / NET / "local")
    assert alone["server_bytes"] == [] and alone["server_balance"] is None


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


def test_plateau_accuracy_averages_the_last_fifth_of_the_run() -> None:
    from summary import plateau_accuracy

    acc = [[1.0, 0.5], [5.0, 0.6], [8.0, 0.7], [9.0, 0.8], [10.0, 0.9]]
    assert plateau_accuracy(acc) == pytest.approx(0.8)  # t >= 8: 0.7, 0.8, 0.9
    assert plateau_accuracy([[3.0, 0.25]]) == 0.25
    assert plateau_accuracy([]) is None
