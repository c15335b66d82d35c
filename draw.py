"""Draw the comparison figures of one network from the per-mode summaries.

Usage::

    python draw.py -b logs -n lenet --target 0.9            # figures go to logs/lenet/

Reads ``<base>/<network>/<mode>/summary.json`` for every mode of :mod:`trainer.registry`,
iid and non-iid (a mode folder with worker logs but no, or a stale, summary.json is summarised
on the fly by ``summary.load_summary``); colours and legend names come from the registry too.
Writes:

* ``accuracy_iid.png`` / ``accuracy_niid.png``: test accuracy vs wall-clock seconds of rank 0;
  a standalone run (a registry mode that is not distributed) is a dotted horizontal line at its
  final accuracy (its non-iid run on the niid figure, its iid run when there is no non-iid one).
  ``accuracy_niid.png`` only when a non-iid mode folder exists.
* ``throughput.png``: cluster samples/s per mode (bars; iid and niid side by side).
* ``traffic.png``: cluster KVStore traffic (pushed + pulled) per mode, in B/s, KB/s or MB/s
  (decimal: 1 KB = 10^3 B, 1 MB = 10^6 B) depending on the largest value.
* ``compute_ratio.png``: compute-time ratio of every worker (x: emulated device: slowdown S),
  one bar per mode, one panel per split.
* ``speedup.md``: time to ``--target`` accuracy per mode and ESync's speedup
  = baseline time / ESync time (same split), as computed by ``summary.speedup_table``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

import config  # noqa: E402
from summary import (  # noqa: E402
    byte_unit,
    cell,
    load_all,
    run_tool,
    speedup_table,
    tool_parser,
)
from trainer import layout, registry  # noqa: E402
from trainer.layout import SPLITS  # noqa: E402

Summary = dict[str, Any]
DPI = 120
WIDTH_IN = 6.8  # 816 px at DPI
UNKNOWN_COLOR = "gray"  # a mode folder that is not in the registry
STANDALONE = tuple(name for name, spec in registry.MODES.items() if not spec.distributed)


class DrawError(Exception):
    """Nothing to draw (the CLI turns it into exit code 2)."""


def split_name(split: str) -> str:
    """``iid`` or ``non-iid``: how legends and titles name a split."""
    return "iid" if split == "iid" else "non-iid"


def label(mode: str) -> str:
    """Legend name of a mode-dir, e.g. ``ESync (non-iid)``; the folder name if unregistered."""
    spec = registry.MODES.get(layout.mode_of(mode))
    name = spec.label if spec else layout.mode_of(mode)
    return f"{name} (non-iid)" if layout.split_of(mode) == "niid" else name


def color(mode: str, unknown: str | None = UNKNOWN_COLOR) -> str | None:
    """Colour of a mode-dir's curves and bars (both splits alike); ``unknown`` if unregistered."""
    spec = registry.MODES.get(layout.mode_of(mode))
    return spec.color if spec else unknown


def is_standalone(mode: str) -> bool:
    """True for a registry mode without a cluster: drawn as a reference line, not a curve."""
    return layout.mode_of(mode) in STANDALONE


def of_split(summaries: dict[str, Summary], split: str) -> dict[str, Summary]:
    """The summaries of one split, order kept."""
    return {m: s for m, s in summaries.items() if s.get("split", "iid") == split}


def _save(fig: plt.Figure, path: Path) -> str:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return str(path)


def _title(summaries: dict[str, Summary], what: str) -> str:
    first = next(iter(summaries.values()))
    dataset = f" on {first['dataset']}" if first.get("dataset") else ""
    return f"{first.get('network', '')}{dataset}: {what}"


def _local_line(summaries: dict[str, Summary], split: str) -> tuple[str, float] | None:
    """(mode-dir, accuracy) of the standalone run drawn as the dotted reference line.

    The run of the figure's split, else the iid one (a standalone run sees the whole training
    set either way, so the split hardly matters to it).
    """
    for mode in STANDALONE:
        for mode_dir in (layout.mode_dir_name(mode, split == "niid"), mode):
            summary = summaries.get(mode_dir)
            if summary is not None:
                acc = summary.get("final_accuracy")
                acc = summary.get("best_accuracy") if acc is None else acc
                if acc is not None:
                    return mode_dir, acc
    return None


def plot_accuracy(
    summaries: dict[str, Summary], split: str, target: float | None, path: Path
) -> str:
    """Test accuracy vs wall-clock seconds of the distributed modes of one split."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.4))
    curves = 0
    for mode, summary in of_split(summaries, split).items():
        if is_standalone(mode) or not summary.get("accuracy"):
            continue
        curves += 1
        xs, ys = zip(*summary["accuracy"], strict=True)
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=3,
            linewidth=1.6,
            color=color(mode, unknown=None),
            label=label(mode),
        )
    local = _local_line(summaries, split)
    if local is not None:
        ax.axhline(
            local[1],
            color=color(local[0]),
            linestyle=":",
            linewidth=2,
            label=f"{label(local[0])} final: {local[1]:.1%}",
        )
    if target is not None:
        ax.axhline(target, color="black", linewidth=0.8, alpha=0.35, label=f"target {target:.0%}")
    if curves == 0:
        ax.text(
            0.5, 0.5, "no distributed run with test accuracy", ha="center", transform=ax.transAxes
        )
    ax.set_title(_title(summaries, f"test accuracy vs time ({split_name(split)} split)"))
    ax.set_xlabel("rank 0's device time since start (s)")
    ax.set_ylabel("test accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _bar_groups(summaries: dict[str, Summary]) -> tuple[list[str], list[str]]:
    """(registry modes present, in registry order; splits present, in order)."""
    bases = [m for m in registry.names() if any(layout.mode_of(k) == m for k in summaries)]
    splits = [s for s in SPLITS if of_split(summaries, s)]
    return bases, splits


def _mode_bars(ax: Axes, summaries: dict[str, Summary], key: str, scale: float, fmt: str) -> None:
    """Grouped bars: x = base mode, one bar per split, value printed on top."""
    bases, splits = _bar_groups(summaries)
    width = 0.8 / len(splits)
    for j, split in enumerate(splits):
        xs, values, colors = [], [], []
        for i, base in enumerate(bases):
            summary = summaries.get(layout.mode_dir_name(base, split == "niid"))
            if summary is not None:
                xs.append(i + (j - (len(splits) - 1) / 2) * width)
                values.append(summary[key] / scale)
                colors.append(color(base))
        bars = ax.bar(
            xs,
            values,
            width * 0.92,
            color=colors,
            edgecolor="black",
            linewidth=0.6,
            hatch="//" if split == "niid" else None,
            label=split_name(split),
        )
        ax.bar_label(bars, labels=[format(v, fmt) for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(bases)), [label(b) for b in bases])
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    if len(splits) > 1:
        ax.legend(fontsize=9)


def plot_throughput(summaries: dict[str, Summary], path: Path) -> str:
    """Cluster data throughput (samples/s) per mode."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.0))
    _mode_bars(ax, summaries, "samples_per_s", 1.0, ",.0f")
    ax.set_title(_title(summaries, "data throughput (all workers)"))
    ax.set_ylabel("training samples / s")
    fig.tight_layout()
    return _save(fig, path)


def plot_traffic(summaries: dict[str, Summary], path: Path) -> str:
    """Cluster KVStore traffic (bytes pushed + pulled per second) per mode."""
    unit, scale = byte_unit(max(s["bytes_per_s"] for s in summaries.values()))
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.0))
    _mode_bars(ax, summaries, "bytes_per_s", scale, ",.1f")
    ax.set_title(_title(summaries, "traffic load (push + pull, all workers)"))
    ax.set_ylabel(f"traffic ({unit})")
    fig.tight_layout()
    return _save(fig, path)


SlotKey = tuple[str, str, float, int]


def _slot_key(w: dict[str, Any]) -> tuple[str, str, float]:
    slowdown = w.get("slowdown")
    return (
        str(w.get("host")),
        str(w.get("device")),
        float(slowdown) if isinstance(slowdown, int | float) else float("nan"),
    )


def _worker_slots(summaries: dict[str, Summary]) -> dict[str, list[tuple[SlotKey, dict]]]:
    """Per mode, every worker keyed by the emulated device it ran as.

    ps-lite hands out ranks in arrival order, so rank r is a different device in each run;
    the key is (host, device, slowdown, n-th such worker), which is the same across modes.
    """
    keyed: dict[str, list[tuple[SlotKey, dict]]] = {}
    for mode, summary in summaries.items():
        seen: dict[tuple[str, str, float], int] = {}
        rows = []
        for w in sorted(summary["workers"], key=lambda w: (_slot_key(w), w["rank"])):
            base = _slot_key(w)
            seen[base] = seen.get(base, 0) + 1
            rows.append(((*base, seen[base]), w))
        keyed[mode] = rows
    return keyed


def _slot_label(key: SlotKey, many_hosts: bool, numbered: bool) -> str:
    host, device, slowdown, n = key
    speed = "S=?" if slowdown != slowdown else f"S={slowdown:g}"
    where = f"{host}/{device}" if many_hosts else device
    return f"{speed}\n{where}" + (f" #{n}" if numbered else "")


def _ratio_panel(ax: Axes, summaries: dict[str, Summary], title: str) -> None:
    """One panel of compute-time ratio bars: x = emulated device, one bar per mode."""
    keyed = _worker_slots(summaries)
    slots = sorted(
        {k for rows in keyed.values() for k, _ in rows},
        key=lambda k: (k[0], -k[2] if k[2] == k[2] else 0.0, k[1], k[3]),
    )
    many_hosts = len({k[0] for k in slots}) > 1
    numbered = len({k[:3] for k in slots}) < len(slots)
    width = 0.8 / len(summaries)
    for i, key in enumerate(slots):
        present = [m for m in summaries if any(k == key for k, _ in keyed[m])]
        for j, mode in enumerate(present):
            w = next(w for k, w in keyed[mode] if k == key)
            x = i + (j - (len(present) - 1) / 2) * width
            value = w["compute_time_ratio"]
            bars = ax.bar(
                [x],
                [value],
                width * 0.92,
                color=color(mode),
                edgecolor="black",
                linewidth=0.5,
                label=label(mode) if i == 0 or key == slots[0] else None,
            )
            if len(slots) * len(summaries) <= 24:
                ax.bar_label(bars, labels=[f"{value:.2f}"], fontsize=7, padding=1)
    handles = {label(m): plt.Rectangle((0, 0), 1, 1, color=color(m)) for m in summaries}
    ax.set_xticks(
        range(len(slots)), [_slot_label(k, many_hosts, numbered) for k in slots], fontsize=8
    )
    ax.set_xlim(-0.5, len(slots) - 0.5)
    top = max(1.0, *(w["compute_time_ratio"] for s in summaries.values() for w in s["workers"]))
    ax.set_ylim(0, top * 1.35)
    ax.set_yticks([t for t in ax.get_yticks() if t <= top + 1e-9])
    ax.set_ylabel("compute time / wall time")
    ax.set_xlabel("worker (emulated slowdown S; ranks differ between runs)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        list(handles.values()),
        list(handles),
        fontsize=8,
        ncol=min(len(summaries), 5),
        loc="upper center",
    )


def plot_compute_ratio(summaries: dict[str, Summary], path: Path) -> str:
    """Compute-time ratio per worker and mode (cf. the paper's Fig. 5)."""
    splits = [s for s in SPLITS if of_split(summaries, s)]
    fig, axes = plt.subplots(
        len(splits), 1, figsize=(WIDTH_IN, 3.6 * len(splits) + 0.4), squeeze=False
    )
    for ax, split in zip(axes[:, 0], splits, strict=True):
        _ratio_panel(
            ax,
            of_split(summaries, split),
            f"{split_name(split)} split: share of wall-clock time spent computing",
        )
    fig.suptitle(_title(summaries, "compute-time ratio per worker"), fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def speedup_markdown(table: dict[str, dict[str, Any]], network: str, target: float) -> str:
    """Markdown table of ``summary.speedup_table`` (per mode folder)."""
    lines = [
        f"# {network}: time to {target:.1%} test accuracy",
        "",
        "ESync speedup = baseline time to target / ESync time to target (same split);"
        " *not reached* when either run never reached the target.",
        "",
        "| mode | split | time to target (s) | final accuracy | ESync speedup |",
        "|---|---|---:|---:|---:|",
    ]
    never = "not reached"
    for mode, row in table.items():
        speed = (
            "no ESync run"
            if row["esync_mode"] is None
            else cell(row["esync_speedup"], ".2f", never)
        )
        lines.append(
            f"| {mode} | {row['split']} | {cell(row['time_to_target_s'], '.1f', never)}"
            f" | {cell(row['final_accuracy'], '.2%', 'n/a')} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def _schedule_changes(summary: Summary) -> list[float]:
    """The moments (s) at which any worker's emulated slowdown changes."""
    return sorted({t for w in summary["workers"] for t, _ in w.get("slowdown_schedule", [])[1:]})


def plot_local_iterations(summary: Summary, path: Path) -> str:
    """Local iterations per round of every worker against time, schedule changes marked."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.2))
    for w in sorted(summary["workers"], key=lambda w: str(w.get("slowdown_schedule"))):
        if not w.get("timeline"):
            continue
        times, iterations, _ = zip(*w["timeline"], strict=True)
        steps = "/".join(f"{f:g}@{t:g}" if t else f"{f:g}" for t, f in w["slowdown_schedule"])
        ax.plot(times, iterations, marker=".", linewidth=1.2, label=f"rank {w['rank']}: S={steps}")
    for moment in _schedule_changes(summary):
        ax.axvline(moment, color="black", linestyle="--", linewidth=1, alpha=0.6)
    ax.set_title(_title({"x": summary}, f"{label(summary['mode'])}: local steps per round"))
    ax.set_xlabel("device time since start (s); dashed: a device changes speed")
    ax.set_ylabel("local iterations in the round")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def draw_all(
    base: str, network: str, target: float = config.TARGET_ACCURACY, outdir: str | None = None
) -> list[str]:
    """Draw every figure and ``speedup.md`` of ``<base>/<network>``; return the paths."""
    summaries = load_all(base, network)
    if not summaries:
        raise DrawError(f"no summaries or worker logs of any mode under {Path(base) / network}")
    out = Path(outdir) if outdir else Path(base) / network
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_accuracy(summaries, split, target, out / f"accuracy_{split}.png")
        for split in SPLITS
        if of_split(summaries, split)
    ]
    written += [
        plot_throughput(summaries, out / "throughput.png"),
        plot_traffic(summaries, out / "traffic.png"),
        plot_compute_ratio(summaries, out / "compute_ratio.png"),
    ]
    reference = summaries.get(registry.REFERENCE)
    if reference is not None and _schedule_changes(reference):
        written.append(plot_local_iterations(reference, out / "local_iterations.png"))
    speedup = out / "speedup.md"
    speedup.write_text(
        speedup_markdown(speedup_table(summaries, target), network, target), encoding="utf-8"
    )
    return written + [str(speedup)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = tool_parser("Draw the comparison figures of one network", target=True)
    parser.add_argument(
        "-o", "--outdir", default=None, help="output folder (default: <base>/<network>)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    return run_tool(
        lambda: draw_all(args.base, args.network, args.target, args.outdir), (DrawError,)
    )


if __name__ == "__main__":
    sys.exit(main())
