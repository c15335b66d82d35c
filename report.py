"""Write ``report.md`` and ``report.json`` comparing the modes of one network.

Usage::

    python report.py -b logs -n lenet --modes esync,sync,local --target 0.9 [--draw]

``--modes`` defaults to every mode folder (of every mode of :mod:`trainer.registry`) found
under ``<base>/<network>/``; ``--draw`` runs ``draw.draw_all`` first so that the report can
embed fresh figures. ``write_all`` is the whole pipeline (summaries, figures, report, console
table) that ``launch.py --compare`` runs after training.

Per mode (from its summary, see ``summary.py``): ``time_to_target_s``, ``final_accuracy``,
``best_accuracy``, ``samples_per_s``, ``bytes_per_s``, ``min_compute_time_ratio`` (min over
workers), ``num_workers``, ``split``, and under device emulation ``emulation``,
``device_unit_s``, ``fidelity`` (share of batches on time), ``device_throughput`` (batches per
device unit T0) and ``time_to_target_units`` (time_to_target_s / T0); ``server_bytes`` and
``server_balance`` (bytes per parameter server and smallest / largest, from the summary).

``esync_vs[<baseline>]`` compares the reference mode (``trainer.registry.REFERENCE``, ESync)
of the same split with every other requested mode of that split:

* ``speedup_to_target`` = baseline time_to_target_s / ESync time_to_target_s (computed by
  ``speedup_table`` only; draw.py's ``speedup.md`` and ``print_table`` show the same numbers)
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
    SummaryError,
    byte_unit,
    cell,
    known_mode_dirs,
    load_all,
    load_summary,
    ratio,
    rebalance_rounds,
    run_tool,
    speedup_table,
    time_to_target,
    tool_parser,
    write_summary,
)
from trainer import layout

Summary = dict[str, Any]

FIGURES = (
    "accuracy_iid.png",
    "accuracy_niid.png",
    "throughput.png",
    "traffic.png",
    "compute_ratio.png",
    "local_iterations.png",
)


def mode_row(summary: dict[str, Any], target: float) -> dict[str, Any]:
    """The per-mode entry of report.json."""
    ratios = [w["compute_time_ratio"] for w in summary["workers"]]
    to_target = time_to_target(summary.get("accuracy") or [], target)
    unit = summary.get("device_unit_s")
    return {
        "time_to_target_s": to_target,
        "final_accuracy": summary.get("final_accuracy"),
        "best_accuracy": summary.get("best_accuracy"),
        "plateau_accuracy": summary.get("plateau_accuracy"),
        "samples_per_s": summary["samples_per_s"],
        "bytes_per_s": summary["bytes_per_s"],
        "min_compute_time_ratio": min(ratios) if ratios else None,
        "num_workers": summary["num_workers"],
        "split": summary.get("split", "iid"),
        "emulation": summary.get("emulation", "share"),
        "device_unit_s": unit,
        "fidelity": summary.get("fidelity"),
        "device_throughput": summary.get("device_throughput"),
        "time_to_target_units": ratio(to_target, unit),
        "server_bytes": summary.get("server_bytes") or [],
        "server_balance": summary.get("server_balance"),
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def compare(esync: dict[str, Any], baseline: dict[str, Any], speedup: float | None) -> dict:
    """ESync-vs-baseline ratios of two ``mode_row`` entries (``speedup`` from speedup_table)."""
    return {
        "speedup_to_target": speedup,
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
    for mode, speed in speedup_table(summaries, target).items():
        reference = speed["esync_mode"]
        if reference not in (None, mode):
            versus[mode] = {
                "esync_mode": reference,
                **compare(rows[reference], rows[mode], speed["esync_speedup"]),
            }
    rebalance = {m: rebalance_rounds(s) for m, s in summaries.items() if rebalance_rounds(s)}
    return {
        "network": network,
        "target": target,
        "modes": rows,
        "esync_vs": versus,
        "rebalance": rebalance,
    }


def _mode_table(rows: dict[str, dict[str, Any]], target: float) -> list[str]:
    unit, scale = byte_unit(max(r["bytes_per_s"] for r in rows.values()))
    lines = [
        f"| mode | split | workers | time to {target:.0%} (s) | final acc | plateau acc"
        f" | best acc | samples/s | traffic ({unit}) | min compute ratio"
        " | batches / T0 | fidelity |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in rows.items():
        lines.append(
            f"| {mode} | {r['split']} | {r['num_workers']}"
            f" | {cell(r['time_to_target_s'], '.1f', 'not reached')}"
            f" | {cell(r['final_accuracy'], '.2%')} | {cell(r.get('plateau_accuracy'), '.2%')}"
            f" | {cell(r['best_accuracy'], '.2%')}"
            f" | {r['samples_per_s']:,.1f} | {r['bytes_per_s'] / scale:,.1f}"
            f" | {cell(r['min_compute_time_ratio'], '.3f')}"
            f" | {cell(r.get('device_throughput'), '.3f')} | {cell(r.get('fidelity'), '.1%')} |"
        )
    return lines


def emulation_line(rows: dict[str, dict[str, Any]]) -> str:
    """How the devices were emulated, for the report's head and the console table."""
    units = {r["device_unit_s"] for r in rows.values() if r.get("emulation") == "device"}
    fidelities = [r["fidelity"] for r in rows.values() if r.get("fidelity") is not None]
    if not units:
        kinds = sorted({r.get("emulation", "share") for r in rows.values()})
        return (
            f"Emulation: {', '.join(kinds)} (not device time: the figures include the "
            "contention of the host's cores)."
        )
    unit = ", ".join(f"{u * 1e3:.2f} ms" for u in sorted(units))
    return (
        f"Device time: every batch of a device of slowdown S takes S x T0, T0 = {unit}; "
        f"fidelity (share of batches on time) {min(fidelities):.1%} at the lowest."
    )


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
            f"| {mode} ({v['esync_mode']}) | {cell(v['speedup_to_target'], '.2f')}"
            f" | {cell(v['throughput_ratio'], '.2f')}"
            f" | {cell(v['traffic_ratio'], '.2f')} | {cell(diff, '+.2f')}"
            f" | {cell(plateau, '+.2f')} |"
        )
    return lines


def _server_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Bytes per parameter server, when a mode ran with more than one."""
    several = {m: r for m, r in rows.items() if len(r.get("server_bytes") or []) > 1}
    if not several:
        return []
    lines = [
        "## Parameter servers",
        "",
        "bytes pushed + pulled by every worker on each server (MXNet's key partition,"
        " trainer/sharding.py); balance = smallest / largest",
        "",
        "| mode | servers | MB per server | balance |",
        "|---|---:|---|---:|",
    ]
    for mode, r in several.items():
        per = ", ".join(f"{b / 1e6:,.1f}" for b in r["server_bytes"])
        lines.append(
            f"| {mode} | {len(r['server_bytes'])} | {per} | {cell(r['server_balance'], '.3f')} |"
        )
    return [*lines, ""]


def _rebalance_lines(rebalance: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The re-balancing table, when a device changed speed during the run."""
    if not rebalance:
        return []
    lines = [
        "## Devices that changed speed",
        "",
        "rounds until every worker at least 2x faster than another does more local iterations"
        " per round than it (1 = at once; '-' = never within the run)",
        "",
        "| mode | change at (s) | rounds to re-balance |",
        "|---|---:|---:|",
    ]
    for mode, changes in rebalance.items():
        lines += [f"| {mode} | {c['at_s']:g} | {cell(c['rounds'], 'd')} |" for c in changes]
    return [*lines, ""]


def render_markdown(report: dict[str, Any], folder: Path) -> str:
    """report.md text; embeds the figures of ``FIGURES`` that exist in ``folder``."""
    lines = [
        f"# {report['network']}: ESync vs baselines",
        "",
        f"Target accuracy: {report['target']:.1%}. Times are seconds of rank 0's device"
        " clock since it started training (its evaluations are off the clock); rates are"
        " cluster totals over the run duration.",
        "",
        emulation_line(report["modes"]),
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
        *_server_lines(report["modes"]),
        *_rebalance_lines(report.get("rebalance", {})),
        "## Figures",
        "",
    ]
    figures = [name for name in FIGURES if (folder / name).exists()]
    lines += [f"![{name[:-4]}]({name})\n" for name in figures] or [
        "No figures yet: run `python draw.py` first (or `report.py --draw`)."
    ]
    return "\n".join(lines).rstrip() + "\n"


def save_report(report: dict[str, Any], folder: Path) -> tuple[str, str]:
    """Write ``report.md`` and ``report.json`` of ``report`` into ``folder``; return both paths."""
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, folder), encoding="utf-8")
    return str(md_path), str(json_path)


def _build(base: str, network: str, modes: list[str], target: float) -> dict[str, Any]:
    """The report of the mode folders ``modes`` under ``<base>/<network>``."""
    summaries = {mode: load_summary(layout.mode_dir(base, network, mode)) for mode in modes}
    return build_report(summaries, network, target)


def write_report(base: str, network: str, modes: list[str], target: float) -> tuple[str, str]:
    """Write ``<base>/<network>/report.md`` and ``report.json``; return both paths."""
    report = _build(base, network, modes, target)
    return save_report(report, Path(base) / network)


def print_table(report: dict) -> None:
    """The headline numbers of report.json, one line per mode (launch.py's console output)."""
    target = report["target"]
    print(emulation_line(report["modes"]))
    print(
        f"{'mode':<12} {f'to {target:.0%} (s)':>11} {'plateau acc':>11} {'samples/s':>10} "
        f"{'MB/s':>7} {'min compute':>11} {'batches/T0':>10} {'fidelity':>8} "
        f"{'ESync speedup':>13}"
    )
    for mode, row in report["modes"].items():
        speedup = report["esync_vs"].get(mode, {}).get("speedup_to_target")
        cells = [
            cell(row["time_to_target_s"], ".1f"),
            cell(row.get("plateau_accuracy"), ".3f"),
            f"{row['samples_per_s']:.0f}",
            f"{row['bytes_per_s'] / 1e6:.1f}",
            cell(row["min_compute_time_ratio"], ".2f"),
            cell(row.get("device_throughput"), ".3f"),
            cell(row.get("fidelity"), ".1%"),
            "-" if speedup is None else f"{speedup:.2f}x",
        ]
        print(
            f"{mode:<12} {cells[0]:>11} {cells[1]:>11} {cells[2]:>10} {cells[3]:>7} "
            f"{cells[4]:>11} {cells[5]:>10} {cells[6]:>8} {cells[7]:>13}"
        )


def write_all(log_dir: str, network: str, mode_dirs: list[str], target: float) -> dict:
    """Everything after a comparison run; return the report dict.

    Writes summary.json of each of ``mode_dirs`` (the runs just made), draws the figures and
    writes report.md/json over every mode folder present under ``<log_dir>/<network>`` (so an
    iid and a non-iid comparison sharing a log dir end up in one report), prints the paths
    and then the console table.
    """
    from draw import draw_all  # matplotlib only when figures are drawn

    for mode_dir in mode_dirs:
        print(f"summary: {write_summary(layout.mode_dir(log_dir, network, mode_dir))}")
    for path in draw_all(log_dir, network, target):
        print(f"figure: {path}")
    report = _build(log_dir, network, list(load_all(log_dir, network)), target)
    md, js = save_report(report, Path(log_dir) / network)
    print(f"report: {md}\nreport: {js}\n")
    print_table(report)
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = tool_parser("Write report.md / report.json of a network", target=True)
    parser.add_argument(
        "--modes", default="", help="comma-separated mode folders (default: every one found)"
    )
    parser.add_argument("--draw", action="store_true", help="run draw.py's draw_all first")
    return parser.parse_args(argv)


def report_paths(args: argparse.Namespace) -> tuple[str, str]:
    """What ``main`` does: (draw, then) write report.md / report.json; returns their paths."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    modes = modes or list(load_all(args.base, args.network))
    if not modes:
        raise SummaryError(
            f"no mode of {', '.join(known_mode_dirs())} under {Path(args.base) / args.network}"
        )
    if args.draw:
        from draw import draw_all

        draw_all(args.base, args.network, args.target)
    return write_report(args.base, args.network, modes, args.target)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    return run_tool(lambda: report_paths(args))


if __name__ == "__main__":
    sys.exit(main())
