"""Tests of draw.py and report.py on the hand-made logs of tests/support/run_logs.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import draw  # noqa: E402
import report  # noqa: E402
from summary import SummaryError, load_all, time_to_target, write_summary  # noqa: E402
from tests.support.run_logs import NET, build_logs  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = {
    "accuracy_iid.png",
    "accuracy_niid.png",
    "throughput.png",
    "traffic.png",
    "compute_ratio.png",
}
ALL_RUN_MODES = ["esync", "sync", "async", "local", "esync-niid", "sync-niid"]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Logs with iid and niid modes, drawn once for the whole module."""
    base = tmp_path_factory.mktemp("logs")
    build_logs(base)
    return base, draw.draw_all(str(base), NET, 0.9, None)


def check_png(path: Path) -> None:
    """A valid, readable PNG about 800 px wide."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    height, width = plt.imread(path).shape[:2]
    assert 700 <= width <= 1000, (path, width)
    assert 300 <= height <= 1000, (path, height)


def test_draw_all_writes_every_figure(drawn: tuple[Path, list[str]]) -> None:
    base, paths = drawn
    assert {Path(p).name for p in paths} == FIGURES | {"speedup.md"}
    for p in paths:
        assert Path(p).parent == base / NET and Path(p).stat().st_size > 0
    for name in FIGURES:
        check_png(base / NET / name)


def test_no_niid_figure_without_niid_runs(tmp_path: Path) -> None:
    build_logs(tmp_path, niid=False)
    out = tmp_path / "figs"
    paths = draw.draw_all(str(tmp_path), NET, 0.9, str(out))
    assert {Path(p).name for p in paths} == FIGURES - {"accuracy_niid.png"} | {"speedup.md"}
    assert not (out / "accuracy_niid.png").exists()
    assert not (tmp_path / NET / "accuracy_iid.png").exists()  # -o respected
    for p in paths:
        if p.endswith(".png"):
            check_png(Path(p))


def test_speedup_numbers(drawn: tuple[Path, list[str]]) -> None:
    base, _ = drawn
    rows = report.speedup_table(load_all(base, NET), 0.9)
    got = {m: (r["time_to_target_s"], r["esync_speedup"]) for m, r in rows.items()}
    assert got == {
        "esync": (4.0, 1.0),
        "sync": (32.0, 8.0),
        "async": (None, None),
        "local": (2.0, 0.5),
        "esync-niid": (None, None),
        "sync-niid": (None, None),
    }
    assert rows["sync-niid"]["esync_mode"] == "esync-niid"
    niid = {
        m: r["esync_speedup"] for m, r in report.speedup_table(load_all(base, NET), 0.5).items()
    }
    assert niid["sync-niid"] == 8.0 / 4.0
    text = (base / NET / "speedup.md").read_text()
    assert "| sync | iid | 32.0 | 93.75% | 8.00 |" in text
    assert "| async | iid | not reached | 50.00% | not reached |" in text


def test_speedup_without_esync(tmp_path: Path) -> None:
    build_logs(tmp_path, niid=False)
    shutil.rmtree(tmp_path / NET / "esync")
    rows = report.speedup_table(load_all(tmp_path, NET), 0.9)
    assert all(r["esync_mode"] is None and r["esync_speedup"] is None for r in rows.values())
    assert "no ESync run" in draw.speedup_markdown(rows, NET, 0.9)


def test_reads_summary_json_without_worker_logs(tmp_path: Path) -> None:
    net = build_logs(tmp_path, niid=False)
    write_summary(net / "sync")
    shutil.rmtree(net / "sync" / "hostA")
    shutil.rmtree(net / "sync" / "hostB")
    assert load_all(tmp_path, NET)["sync"]["duration_s"] == 32.0
    assert "throughput.png" in {Path(p).name for p in draw.draw_all(str(tmp_path), NET)}


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert draw.main(["-b", str(tmp_path), "-n", NET]) == 2
    assert "no summaries" in capsys.readouterr().err
    with pytest.raises(draw.DrawError):
        draw.draw_all(str(tmp_path), NET)
    build_logs(tmp_path, niid=False)
    assert draw.main(["-b", str(tmp_path), "-n", NET, "--target", "0.5"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5 and all(Path(p).exists() for p in printed)


def test_byte_unit() -> None:
    assert draw.byte_unit(2.5e6) == ("MB/s", 1e6)
    assert draw.byte_unit(750.0) == ("B/s", 1.0)
    assert draw.byte_unit(1500.0) == ("KB/s", 1e3)


def test_report_fields_consistent(drawn: tuple[Path, list[str]]) -> None:
    base, _ = drawn
    md_path, json_path = report.write_report(str(base), NET, ALL_RUN_MODES, 0.9)
    assert (md_path, json_path) == (str(base / NET / "report.md"), str(base / NET / "report.json"))
    rep = json.loads(Path(json_path).read_text())
    summaries = load_all(base, NET)
    assert list(rep["modes"]) == ALL_RUN_MODES and rep["target"] == 0.9
    for mode, row in rep["modes"].items():
        s = summaries[mode]
        assert row == {
            "time_to_target_s": time_to_target(s["accuracy"], 0.9),
            "final_accuracy": s["final_accuracy"],
            "best_accuracy": s["best_accuracy"],
            "plateau_accuracy": s["plateau_accuracy"],
            "samples_per_s": s["samples_per_s"],
            "bytes_per_s": s["bytes_per_s"],
            "min_compute_time_ratio": min(w["compute_time_ratio"] for w in s["workers"]),
            "num_workers": s["num_workers"],
            "split": s["split"],
            "emulation": s["emulation"],
            "device_unit_s": s["device_unit_s"],
            "fidelity": s["fidelity"],
            "device_throughput": s["device_throughput"],
            "time_to_target_units": None,  # these fixtures are not device time
            "server_bytes": [],  # records without server_bytes (logs before several servers)
            "server_balance": None,
        }
    assert rep["modes"]["esync"]["min_compute_time_ratio"] == 0.25
    assert set(rep["esync_vs"]) == {"sync", "async", "local", "sync-niid"}
    modes = rep["modes"]
    assert rep["esync_vs"]["sync"] == {
        "esync_mode": "esync",
        "speedup_to_target": modes["sync"]["time_to_target_s"] / modes["esync"]["time_to_target_s"],
        "throughput_ratio": 34.0 / 4.0,
        "traffic_ratio": 750.0 / 500.0,
        "final_accuracy_diff": 0.875 - 0.9375,
        "plateau_accuracy_diff": modes["esync"]["plateau_accuracy"]
        - modes["sync"]["plateau_accuracy"],
    }
    assert rep["esync_vs"]["sync"]["speedup_to_target"] == 8.0
    assert rep["esync_vs"]["local"]["traffic_ratio"] is None  # local moves no bytes
    assert rep["esync_vs"]["local"]["speedup_to_target"] == 0.5
    assert rep["esync_vs"]["async"]["speedup_to_target"] is None
    assert rep["esync_vs"]["sync-niid"]["esync_mode"] == "esync-niid"
    text = Path(md_path).read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert set(links) == FIGURES
    assert all((base / NET / link).exists() for link in links)
    assert "traffic (B/s)" in text
    plateau = rep["modes"]["sync"]["plateau_accuracy"]
    row = f"| sync | iid | 2 | 32.0 | 93.75% | {plateau:.2%} | 93.75% | 4.0 | 500.0 | 0.188 |"
    assert row in text
    assert "| sync (esync) | 8.00 | 8.50 | 1.50 | -6.25 |" in text


def test_report_cli_and_missing_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["-b", str(tmp_path), "-n", NET]) == 2
    build_logs(tmp_path, niid=False)
    with pytest.raises(SummaryError, match="dcasgd does not exist"):
        report.write_report(str(tmp_path), NET, ["esync", "dcasgd"], 0.9)
    assert report.main(["-b", str(tmp_path), "-n", NET, "--target", "0.9"]) == 0
    rep = json.loads((tmp_path / NET / "report.json").read_text())
    assert list(rep["modes"]) == ["esync", "sync", "async", "local"]
    assert "No figures yet" in (tmp_path / NET / "report.md").read_text()
    capsys.readouterr()
