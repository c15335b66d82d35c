"""Tests of report.py's console table and full pipeline, and of the registry-driven helpers of
draw.py and bench/breakdown.py, on the hand-made logs of tests/support/run_logs.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import draw
import report
from bench import breakdown
from summary import load_all
from tests.support.run_logs import NET, build_logs
from trainer import registry

FIGURES = {"accuracy_iid.png", "throughput.png", "traffic.png", "compute_ratio.png"}
EMULATION = (
    "Emulation: share (not device time: the figures include the contention of the host's cores)."
)
HEADER = (
    "mode          to 90% (s) plateau acc  samples/s    MB/s min compute batches/T0 fidelity "
    "ESync speedup"
)


def test_cell_formats_or_names_the_missing_value() -> None:
    assert report.cell(2.5, ".1f") == "2.5"
    assert report.cell(None, ".1f") == "-"
    assert report.cell(None, ".2f", "not reached") == "not reached"
    assert report.cell(0.5, ".2%", "n/a") == "50.00%"


def test_print_table_one_row_per_mode_with_speedup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_logs(tmp_path)
    rep = report.build_report(load_all(tmp_path, NET), NET, 0.9)
    capsys.readouterr()
    report.print_table(rep)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [EMULATION, HEADER]  # these logs are not device time: no fidelity
    assert [line.split()[0] for line in lines[2:]] == list(rep["modes"])
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["sync"] == (
        "sync                32.0       0.938          4     0.0        0.19          -        -"
        "         8.00x"
    )
    assert rows["local"].endswith(" 0.50x") and rows["esync"].endswith(" -")
    assert rows["async"].split()[1] == "-" and rows["async"].endswith(" -")  # never reached 90%


def test_write_all_writes_summaries_figures_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = build_logs(tmp_path)
    rep = report.write_all(str(tmp_path), NET, ["esync", "sync", "esync-niid"], 0.9)
    for mode in ("esync", "sync", "esync-niid"):
        assert json.loads((net / mode / "summary.json").read_text())["mode"] == mode
    assert not (net / "async" / "summary.json").exists()  # only the given mode dirs
    for name in FIGURES | {"accuracy_niid.png", "speedup.md", "report.md"}:
        assert (net / name).stat().st_size > 0, name
    assert json.loads((net / "report.json").read_text()) == rep
    # every mode present is in the report, not only the ones just summarised
    assert list(rep["modes"]) == ["esync", "sync", "async", "local", "esync-niid", "sync-niid"]
    assert rep["esync_vs"]["sync"]["speedup_to_target"] == 8.0
    out = capsys.readouterr().out
    assert f"summary: {net / 'esync-niid' / 'summary.json'}" in out
    assert f"figure: {net / 'traffic.png'}" in out
    assert (
        f"report: {net / 'report.md'}\nreport: {net / 'report.json'}\n\n{EMULATION}\n{HEADER}\n"
        in out
    )
    assert out.rstrip().splitlines()[-1].startswith("sync-niid")


def test_speedup_md_shows_the_report_speedups(tmp_path: Path) -> None:
    net = build_logs(tmp_path, niid=False)
    rep = report.write_all(str(tmp_path), NET, ["sync"], 0.9)
    text = (net / "speedup.md").read_text()
    speedup = rep["esync_vs"]["sync"]["speedup_to_target"]
    assert f"| sync | iid | 32.0 | 93.75% | {speedup:.2f} |" in text


def test_labels_and_colours_come_from_the_registry() -> None:
    for name, spec in registry.MODES.items():
        assert draw.label(name) == spec.label
        assert draw.color(name) == spec.color
        niid = f"{name}-niid"
        assert draw.label(niid) == f"{spec.label} (non-iid)" and draw.color(niid) == spec.color
        assert draw.is_standalone(name) == (not spec.distributed)
    assert (draw.label("mystery"), draw.color("mystery")) == ("mystery", draw.UNKNOWN_COLOR)
    assert draw.color("mystery", unknown=None) is None


def test_standalone_line_prefers_the_same_split() -> None:
    local = next(name for name, spec in registry.MODES.items() if not spec.distributed)
    summaries = {
        local: {"final_accuracy": 0.75},
        f"{local}-niid": {"final_accuracy": None, "best_accuracy": 0.5},
    }
    assert draw._local_line(summaries, "iid") == (local, 0.75)
    assert draw._local_line(summaries, "niid") == (f"{local}-niid", 0.5)
    del summaries[f"{local}-niid"]
    assert draw._local_line(summaries, "niid") == (local, 0.75)
    assert draw._local_line({}, "iid") is None


def test_breakdown_rows(tmp_path: Path) -> None:
    net = build_logs(tmp_path, niid=False)
    rows = breakdown.breakdown(net / "esync")
    assert [r["worker"] for r in rows] == ["hostA/cpu-rank0", "hostA/cpu-rank1", "hostB/gpu0-rank2"]
    assert rows[0]["rounds"] == 3 and rows[0]["iters_per_round"] == 4.0
    assert rows[0]["compute_s"] == 6.0 / 8.0
    assert breakdown.main(["-b", str(tmp_path), "-n", NET, "-m", "nomode"]) == 2
