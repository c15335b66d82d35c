"""Write ``report.md`` and ``report.json`` comparing the modes of one network.

Usage::

    python report.py -b logs -n lenet --modes esync,sync,local --target 0.9 [--draw]

``--modes`` defaults to every mode found under ``<base>/<network>/``; ``--draw`` runs
``draw.draw_all`` first so that the report can embed fresh figures.

Per mode (from its summary, see ``summary.py``): ``time_to_target_s``, ``final_accuracy``,
``best_accuracy``, ``samples_per_s``, ``bytes_per_s``, ``min_compute_time_ratio`` (min over
workers), ``num_workers``, ``split``.

``esync_vs[<baseline>]`` compares the ESync mode of the same split (``esync`` or
``esync-niid``) with every other requested mode of that split:

* ``speedup_to_target`` = baseline time_to_target_s / ESync time_to_target_s
* ``throughput_ratio`` = ESync samples_per_s / baseline samples_per_s
* ``traffic_ratio`` = ESync bytes_per_s / baseline bytes_per_s
* ``final_accuracy_diff`` = ESync final_accuracy - baseline final_accuracy
* ``plateau_accuracy_diff`` = the same for plateau_accuracy (mean of the last 20 % of the run)

A ratio is null when a side is missing (e.g. target not reached) or the denominator is 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from summary import (
    ALL_MODES,
    SummaryError,
    byte_unit,
    esync_of,
    load_all,
    load_summary,
    ratio,
    time_to_target,
)

FIGURES = (
    "accuracy_iid.png",
    "accuracy_niid.png",
    "throughput.png",
    "traffic.png",
    "compute_ratio.png",
)


def mode_row(summary: dict[str, Any], target: float) -> dict[str, Any]:
    """The per-mode entry of report.json."""
    ratios = [w["compute_time_ratio"] for w in summary["workers"]]
    return {
        "time_to_target_s": time_to_target(summary.get("accuracy") or [], target),
        "final_accuracy": summary.get("final_accuracy"),
        "best_accuracy": summary.get("best_accuracy"),
        "plateau_accuracy": summary.get("plateau_accuracy"),
        "samples_per_s": summary["samples_per_s"],
        "bytes_per_s": summary["bytes_per_s"],
        "min_compute_time_ratio": min(ratios) if ratios else None,
        "num_workers": summary["num_workers"],
        "split": summary.get("split", "iid"),
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def compare(esync: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """ESync-vs-baseline ratios of two ``mode_row`` entries."""
    return {
        "speedup_to_target": ratio(baseline["time_to_target_s"], esync["time_to_target_s"]),
        "throughput_ratio": ratio(esync["samples_per_s"], baseline["samples_per_s"]),
        "traffic_ratio": ratio(esync["bytes_per_s"], baseline["bytes_per_s"]),
        "final_accuracy_diff": _diff(esync["final_accuracy"], baseline["final_accuracy"]),
        "plateau_accuracy_diff": _diff(esync["plateau_accuracy"], baseline["plateau_accuracy"]),
    }


def build_report(
    summaries: dict[str, dict[str, Any]], network: str, target: float
) -> dict[str, Any]:
    """The report.json content of the given mode summaries."""
    rows = {mode: mode_row(s, target) for mode, s in summaries.items()}
    versus = {}
    for mode in rows:
        reference = esync_of(mode)
        if mode != reference and reference in rows:
            versus[mode] = {"esync_mode": reference, **compare(rows[reference], rows[mode])}
    return {"network": network, "target": target, "modes": rows, "esync_vs": versus}


def _fmt(value: float | None, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def _mode_table(rows: dict[str, dict[str, Any]], target: float) -> list[str]:
    unit, scale = byte_unit(max(r["bytes_per_s"] for r in rows.values()))
    lines = [
        f"| mode | split | workers | time to {target:.0%} (s) | final acc | plateau acc"
        f" | best acc | samples/s | traffic ({unit}) | min compute ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in rows.items():
        lines.append(
            f"| {mode} | {r['split']} | {r['num_workers']}"
            f" | {_fmt(r['time_to_target_s'], '.1f', 'not reached')}"
            f" | {_fmt(r['final_accuracy'], '.2%')} | {_fmt(r.get('plateau_accuracy'), '.2%')}"
            f" | {_fmt(r['best_accuracy'], '.2%')}"
            f" | {r['samples_per_s']:,.1f} | {r['bytes_per_s'] / scale:,.1f}"
            f" | {_fmt(r['min_compute_time_ratio'], '.3f')} |"
        )
    return lines


def _versus_table(versus: dict[str, dict[str, Any]]) -> list[str]:
    if not versus:
        return ["No ESync run next to a baseline of the same split: no comparison."]
    lines = [
        "| ESync vs | speedup to target | throughput ratio | traffic ratio"
        " | final acc diff (pp) | plateau acc diff (pp) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, v in versus.items():
        diff, plateau = (
            None if v.get(k) is None else 100 * v[k]
            for k in ("final_accuracy_diff", "plateau_accuracy_diff")
        )
        lines.append(
            f"| {mode} ({v['esync_mode']}) | {_fmt(v['speedup_to_target'], '.2f')}"
            f" | {_fmt(v['throughput_ratio'], '.2f')}"
            f" | {_fmt(v['traffic_ratio'], '.2f')} | {_fmt(diff, '+.2f')}"
            f" | {_fmt(plateau, '+.2f')} |"
        )
    return lines


def render_markdown(report: dict[str, Any], folder: Path) -> str:
    """report.md text; embeds the figures of ``FIGURES`` that exist in ``folder``."""
    lines = [
        f"# {report['network']}: ESync vs baselines",
        "",
        f"Target accuracy: {report['target']:.1%}. Times are wall-clock seconds of rank 0"
        " since it started training; rates are cluster totals over the run duration.",
        "",
        "## Per mode",
        "",
        *_mode_table(report["modes"], report["target"]),
        "",
        "## ESync vs each baseline",
        "",
        "speedup = baseline time / ESync time; throughput and traffic ratios = ESync /"
        " baseline; accuracy diff = ESync - baseline in percentage points;"
        " '-' = not available (target not reached or zero denominator).",
        "",
        *_versus_table(report["esync_vs"]),
        "",
        "## Figures",
        "",
    ]
    figures = [name for name in FIGURES if (folder / name).exists()]
    lines += [f"![{name[:-4]}]({name})\n" for name in figures] or [
        "No figures yet: run `python draw.py` first (or `report.py --draw`)."
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_report(base: str, network: str, modes: list[str], target: float) -> tuple[str, str]:
    """Write ``<base>/<network>/report.md`` and ``report.json``; return both paths."""
    folder = Path(base) / network
    summaries = {mode: load_summary(folder / mode) for mode in modes}
    report = build_report(summaries, network, target)
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, folder), encoding="utf-8")
    return str(md_path), str(json_path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description="Write report.md / report.json of a network")
    parser.add_argument("-b", "--base", default="logs", help="log directory (default: logs)")
    parser.add_argument("-n", "--network", required=True, help="network name, e.g. lenet")
    parser.add_argument(
        "--modes", default="", help="comma-separated mode folders (default: every one found)"
    )
    parser.add_argument(
        "--target", type=float, default=0.9, help="test accuracy for time-to-target (default: 0.9)"
    )
    parser.add_argument("--draw", action="store_true", help="run draw.py's draw_all first")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        modes = modes or list(load_all(args.base, args.network))
        if not modes:
            raise SummaryError(
                f"no mode of {', '.join(ALL_MODES)} under {Path(args.base) / args.network}"
            )
        if args.draw:
            from draw import draw_all

            draw_all(args.base, args.network, args.target)
        paths = write_report(args.base, args.network, modes, args.target)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
