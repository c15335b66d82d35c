"""Summarise the run records of one mode into ``summary.json``.

Usage::

    python summary.py -b logs -n lenet -m esync        # writes logs/lenet/esync/summary.json

``-m`` is a mode folder of any mode of :mod:`trainer.registry`, iid or non-iid (folder names
from :mod:`trainer.layout`). Reads every worker folder
``<base>/<network>/<mode>/<host>/<device>-rank<r>/`` (format in ``docs/log-format.md``):
``meta.json`` plus ``rounds.jsonl``. Blank lines and an unparseable
*last* line (a worker killed mid-write) are skipped; an unparseable line anywhere else is an
error naming the file and line.

Definitions (exact, tests assert them):

Per worker, over its records (one record per round):

* ``wall_s`` = ``time`` of its last record (seconds since its ``started_at``; 0 if no records)
* ``rounds`` = number of records
* ``local_iterations`` = sum of ``local_iterations``
* ``samples_per_s`` = sum(``samples``) / wall_s
* ``bytes_per_s`` = sum(``bytes_pushed`` + ``bytes_pulled``) / wall_s
* ``server_bytes`` = element-wise sum of the records' ``server_bytes`` (bytes pushed + pulled
  per parameter server; ``[]`` for logs without it)
* ``compute_time_ratio`` = sum(``compute_s``) / wall_s
* ``slowdown_schedule`` = meta.json's ``[[from_s, factor], ...]`` (``[[0, slowdown]]`` for old logs)
* ``timeline`` = ``[time, local_iterations, slowdown]`` of every record (the slowdown in force
  at the end of the round; meta.json's initial slowdown where a record has none)
* device emulation only (meta.json's ``emulation`` is ``device``; else all ``null``):
  ``overruns`` = sum(``overruns``), batches that missed their deadline;
  ``overrun_fraction`` = overruns / local_iterations;
  ``device_throughput`` = samples_per_s x ``device_unit_s`` / ``batch_size``, in batches per
  device unit T0 (a lone slowdown-1 device: 1)

Cluster:

* ``duration_s`` = max worker ``wall_s``
* ``samples_per_s`` = total samples of all workers / duration_s
* ``bytes_per_s`` = total bytes (pushed + pulled) of all workers / duration_s
* ``server_bytes`` = element-wise sum of the workers' ``server_bytes``; ``server_balance`` =
  its smallest / largest entry (1.0 for one server, ``null`` without it)
* ``accuracy`` = ``[time, test_acc]`` of the rank-0 records that carry ``test_acc``, file order
* ``final_accuracy`` = last ``test_acc`` of that list, ``best_accuracy`` = its max
* ``plateau_accuracy`` = mean ``test_acc`` of the evaluations in the last 20 % of rank 0's
  training time (one evaluation of a small test set is noisy: 1 of digits' 359 images is 0.28 pp)
  (both ``null`` when there is none)
* ``num_workers`` = number of worker folders found (a warning goes to stderr when it differs
  from ``num_workers`` in a meta.json)
* ``emulation`` and ``device_unit_s`` = rank 0's meta.json (``share`` for old logs)
* ``fidelity`` = 1 - sum(overruns) / sum(local_iterations) over every worker: the share of
  batches that took their device time exactly (device emulation only, else ``null``);
  ``device_throughput`` = samples_per_s x device_unit_s / batch_size (ideal for ESync:
  sum(1 / S_i)); ``fidelity_warnings`` = one text per worker whose share of batches on time
  is below ``config.FIDELITY_WARNING`` (also printed to stderr)
* ``accuracy`` rows use ``eval_time`` (the device time of the round the evaluated parameters
  belong to) where a record has it, else ``time``

Every rate whose denominator is 0 (no records yet) is 0.0.
``time_to_target(accuracy, target)`` is the first time with accuracy >= target, else None.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

import config
from trainer import layout, registry
from trainer.layout import META_NAME, ROUNDS_NAME, SUMMARY_NAME

Record = dict[str, Any]


class SummaryError(Exception):
    """Bad or missing run records (the CLI turns it into exit code 2)."""


def warn(message: str) -> None:
    """Print a warning to stderr."""
    print(f"warning: {message}", file=sys.stderr)


def read_rounds(path: Path) -> list[Record]:
    """Parse ``rounds.jsonl``; skip blank lines and an unparseable last line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    last = nonblank[-1] if nonblank else -1
    records: list[Record] = []
    for i in nonblank:
        try:
            record = json.loads(lines[i])
        except json.JSONDecodeError as exc:
            if i == last:
                warn(f"{path}:{i + 1}: skipping truncated last line")
                continue
            raise SummaryError(f"{path}:{i + 1}: unparseable line ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("time"), int | float):
            raise SummaryError(f"{path}:{i + 1}: expected a JSON object with a numeric 'time'")
        records.append(record)
    return records


def _meta_from_path(folder: Path) -> dict[str, Any]:
    """Fallback meta derived from the folder's path when meta.json is missing.

    A worker killed before it wrote meta.json still has records worth summarising.
    """
    worker = layout.parse_worker_dir(folder)
    return {"host": worker.host, "device": worker.device, "rank": worker.rank}


def load_worker(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Record]]:
    """Return ``(meta, records)`` of one worker folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SummaryError(f"worker folder {folder} does not exist")
    meta_path = folder / META_NAME
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SummaryError(f"{meta_path}: unparseable ({exc.msg})") from exc
    else:
        warn(f"{meta_path} missing; host/device/rank taken from the folder names")
        meta = {}
    meta = {**_meta_from_path(folder), **meta}
    return meta, read_rounds(folder / ROUNDS_NAME)


def _rate(amount: float, seconds: float) -> float:
    """``amount / seconds``, 0.0 when ``seconds`` is 0."""
    return amount / seconds if seconds > 0 else 0.0


def _sum(records: list[Record], key: str) -> float:
    return sum(r.get(key, 0) for r in records)


def _server_bytes(rows: Iterable[list[int] | None]) -> list[int]:
    """Element-wise sum of per-server byte lists (missing ones skipped)."""
    total: list[int] = []
    for row in rows:
        if row:
            total = [a + b for a, b in zip_longest(total, row, fillvalue=0)]
    return total


def _balance(per_server: list[int]) -> float | None:
    return (min(per_server) / max(per_server) if max(per_server) else 1.0) if per_server else None


def worker_stats(meta: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """Per-worker statistics (definitions in the module docstring)."""
    wall = float(records[-1]["time"]) if records else 0.0
    samples = _sum(records, "samples")
    nbytes = _sum(records, "bytes_pushed") + _sum(records, "bytes_pulled")
    compute = _sum(records, "compute_s")
    device = meta.get("emulation") == "device"
    batches = _sum(records, "local_iterations")
    overruns = _sum(records, "overruns") if device else None
    return {
        "rank": meta.get("rank"),
        "host": meta.get("host"),
        "device": meta.get("device"),
        "slowdown": meta.get("slowdown"),
        "rounds": len(records),
        "local_iterations": _sum(records, "local_iterations"),
        "wall_s": wall,
        "samples": samples,
        "bytes": nbytes,
        "server_bytes": _server_bytes(r.get("server_bytes") for r in records),
        "compute_s": compute,
        "wait_s": _sum(records, "wait_s"),
        "query_s": _sum(records, "query_s"),
        "comm_s": _sum(records, "comm_s"),
        "eval_s": _sum(records, "eval_s"),
        "samples_per_s": _rate(samples, wall),
        "bytes_per_s": _rate(nbytes, wall),
        "compute_time_ratio": _rate(compute, wall),
        "overruns": overruns,
        "overrun_fraction": _rate(overruns, batches) if device else None,
        "device_throughput": _device_throughput(meta, _rate(samples, wall)),
        "slowdown_schedule": meta.get("slowdown_schedule", [[0.0, meta.get("slowdown")]]),
        "timeline": [
            [r["time"], r.get("local_iterations", 1), r.get("slowdown", meta.get("slowdown"))]
            for r in records
        ],
    }


def _device_throughput(meta: dict[str, Any], samples_per_s: float) -> float | None:
    """Samples per second in batches per device unit (device emulation only)."""
    unit, batch = meta.get("device_unit_s"), meta.get("batch_size")
    if meta.get("emulation") != "device" or not unit or not batch:
        return None
    return samples_per_s * unit / batch


def fidelity(stats: list[dict[str, Any]]) -> tuple[float | None, list[str]]:
    """Share of every worker's batches that were on time, and a warning per worker below
    ``config.FIDELITY_WARNING`` (device emulation only)."""
    device = [w for w in stats if w["overruns"] is not None]
    batches = sum(w["local_iterations"] for w in device)
    if not device or not batches:
        return None, []
    warnings = [
        f"rank {w['rank']} (slowdown {w['slowdown']:g}, {w['host']}): "
        f"{1 - w['overrun_fraction']:.1%} of its {w['local_iterations']:.0f} batches on time "
        f"(< {config.FIDELITY_WARNING:.0%}); the host could not keep up with its device: give "
        "a larger --device-unit or use fewer workers"
        for w in device
        if w["local_iterations"] and 1 - w["overrun_fraction"] < config.FIDELITY_WARNING
    ]
    return 1.0 - sum(w["overruns"] for w in device) / batches, warnings


PLATEAU_SHARE = 0.2  # plateau_accuracy averages the evaluations of this last share of the run


def plateau_accuracy(accuracy: Sequence[Sequence[float]]) -> float | None:
    """Mean accuracy of the evaluations in the last ``PLATEAU_SHARE`` of the run's time."""
    if not accuracy:
        return None
    since = (1.0 - PLATEAU_SHARE) * accuracy[-1][0]
    tail = [acc for t, acc in accuracy if t >= since]
    return sum(tail) / len(tail)


REBALANCE_FACTOR = 2.0  # workers this many times apart in speed count for re-balancing


def rebalance_rounds(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """After each moment a device changes speed: how many rounds until the local iterations
    follow the new speeds again.

    A round is balanced when, for every two workers whose slowdowns (then in force) differ by
    ``REBALANCE_FACTOR`` or more, the faster one did more local iterations in it. Rounds are
    counted on rank 0's timeline from the first round ending after the change (1: balanced at
    once); None when no balanced round follows.
    """
    workers = [w for w in summary["workers"] if w.get("timeline")]
    moments = sorted({t for w in workers for t, _ in w.get("slowdown_schedule", [])[1:]})
    if not workers or not moments:
        return []
    rounds = len(min(workers, key=lambda w: len(w["timeline"]))["timeline"])
    found = []
    for moment in moments:
        after = [i for i in range(rounds) if workers[0]["timeline"][i][0] > moment]
        balanced = next((i for i in after if _balanced(workers, i)), None)
        count = None if balanced is None else balanced - after[0] + 1
        found.append({"at_s": moment, "rounds": count})
    return found


def _balanced(workers: list[dict[str, Any]], i: int) -> bool:
    rows = [(w["timeline"][i][2], w["timeline"][i][1]) for w in workers]  # (slowdown, k)
    return all(
        k_fast > k_slow
        for s_fast, k_fast in rows
        for s_slow, k_slow in rows
        if s_slow >= REBALANCE_FACTOR * s_fast
    )


def time_to_target(accuracy: Sequence[Sequence[float]], target: float) -> float | None:
    """First time whose accuracy is >= ``target``; None when it is never reached."""
    for seconds, acc in accuracy:
        if acc >= target:
            return float(seconds)
    return None


def _listing(base_net: Path) -> str:
    """Human-readable list of what exists under ``<base>/<network>/``."""
    if not base_net.is_dir():
        parent = base_net.parent
        found = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
        return f"{base_net} does not exist either; {parent} holds: {found or 'nothing'}"
    found = sorted(p.name for p in base_net.iterdir() if p.is_dir())
    return f"{base_net} holds: {found or 'nothing'}"


def find_workers(mode_dir: str | os.PathLike[str]) -> list[Path]:
    """Every ``<host>/<device>-rank<r>/`` folder below ``mode_dir`` (error when none)."""
    mode_dir = Path(mode_dir)
    workers = [worker.path for worker in layout.worker_dirs(mode_dir)]
    if not workers:
        what = "has no worker folders" if mode_dir.is_dir() else "does not exist"
        raise SummaryError(f"{mode_dir} {what}; {_listing(mode_dir.parent)}")
    return workers


def _split_of(mode_dir: Path, metas: list[dict[str, Any]]) -> str:
    """``iid``/``niid`` from the folder name, cross-checked with meta.json."""
    split = layout.split_of(mode_dir.name)
    other = {m["split"] for m in metas if "split" in m} - {split}
    if other:
        warn(f"{mode_dir}: folder name says {split} but meta.json says {sorted(other)}")
    return split


def _check_workers(mode_dir: Path, metas: list[dict[str, Any]]) -> None:
    """Warn on a worker count or rank set that does not match meta.json."""
    declared = {m["num_workers"] for m in metas if "num_workers" in m}
    if declared - {len(metas)}:
        warn(f"{mode_dir}: found {len(metas)} worker folders, meta.json says {sorted(declared)}")
    ranks = [m.get("rank") for m in metas]
    if len(set(ranks)) != len(ranks):
        warn(f"{mode_dir}: duplicate ranks {sorted(ranks)} (stale folders from another run?)")


def _accuracy(workers: list[tuple[dict[str, Any], list[Record]]]) -> tuple[list, list]:
    """``[time, test_acc]`` and ``[time, test_loss]`` pairs of the rank-0 worker."""
    rank0 = [recs for meta, recs in workers if meta.get("rank") == 0]
    if not rank0:
        warn("no rank-0 worker folder: no accuracy curve")
        return [], []
    evals = [r for r in rank0[0] if r.get("test_acc") is not None]
    acc = [[float(r.get("eval_time", r["time"])), float(r["test_acc"])] for r in evals]
    loss = [
        [float(r.get("eval_time", r["time"])), float(r["test_loss"])]
        for r in evals
        if "test_loss" in r
    ]
    return acc, loss


def summarize(mode_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary dict of one mode folder (definitions in the module docstring)."""
    mode_dir = Path(mode_dir)
    workers = [load_worker(folder) for folder in find_workers(mode_dir)]
    metas = [meta for meta, _ in workers]
    _check_workers(mode_dir, metas)
    stats = sorted(
        (worker_stats(m, r) for m, r in workers),
        key=lambda w: (w["rank"] is None, w["rank"] or 0, str(w["host"])),
    )
    duration = max(w["wall_s"] for w in stats)
    samples = sum(w["samples"] for w in stats)
    nbytes = sum(w["bytes"] for w in stats)
    per_server = _server_bytes(w["server_bytes"] for w in stats)
    accuracy, loss = _accuracy(workers)
    accs = [a for _, a in accuracy]
    on_time, warnings = fidelity(stats)
    for text in warnings:
        warn(f"{mode_dir.name}: {text}")
    rank0 = next((m for m in metas if m.get("rank") == 0), metas[0])
    return {
        "mode": mode_dir.name,
        "network": metas[0].get("network", mode_dir.parent.name),
        "dataset": metas[0].get("dataset"),
        "split": _split_of(mode_dir, metas),
        "num_workers": len(stats),
        "duration_s": duration,
        "total_samples": samples,
        "total_bytes": nbytes,
        "samples_per_s": _rate(samples, duration),
        "bytes_per_s": _rate(nbytes, duration),
        "server_bytes": per_server,
        "server_balance": _balance(per_server),
        "accuracy": accuracy,
        "loss": loss,
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "plateau_accuracy": plateau_accuracy(accuracy),
        "emulation": rank0.get("emulation", "share"),
        "device_unit_s": rank0.get("device_unit_s"),
        "fidelity": on_time,
        "fidelity_warnings": warnings,
        "device_throughput": _device_throughput(rank0, _rate(samples, duration)),
        "workers": stats,
    }


def write_summary(mode_dir: str | os.PathLike[str]) -> str:
    """Summarise ``mode_dir`` and write ``<mode_dir>/summary.json``; return its path."""
    summary = summarize(mode_dir)
    path = Path(mode_dir) / SUMMARY_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


def _is_stale(mode_dir: Path, summary_path: Path) -> bool:
    """True when a worker file is newer than ``summary.json``."""
    written = summary_path.stat().st_mtime
    logs = [p for w in layout.worker_dirs(mode_dir) for p in (w.rounds, w.meta) if p.exists()]
    return any(p.stat().st_mtime > written for p in logs)


def load_summary(mode_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``summary.json`` of ``mode_dir``, recomputed (not written) when missing or stale."""
    mode_dir = Path(mode_dir)
    path = mode_dir / SUMMARY_NAME
    if path.exists() and not _is_stale(mode_dir, path):
        return json.loads(path.read_text(encoding="utf-8"))
    return summarize(mode_dir)


def load_all(base: str | os.PathLike[str], network: str) -> dict[str, dict[str, Any]]:
    """Summaries of every registry mode under ``<base>/<network>/``, keyed by mode folder.

    Order: the registry's, iid folders first (``layout.mode_dir_names``), so that tables and
    legends list the modes the same way everywhere. A mode counts when its folder holds
    ``summary.json`` or worker folders.
    """
    found: dict[str, dict[str, Any]] = {}
    for name in known_mode_dirs():
        mode_dir = layout.mode_dir(base, network, name)
        if (mode_dir / SUMMARY_NAME).exists() or layout.worker_dirs(mode_dir):
            found[name] = load_summary(mode_dir)
    return found


def known_mode_dirs() -> list[str]:
    """Every mode folder name the registry can produce (iid ones, then non-iid ones)."""
    return layout.mode_dir_names(registry.names())


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None when either is None or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def cell(value: float | None, spec: str, missing: str = "-") -> str:
    """``value`` formatted with ``spec``, or ``missing`` when it is None.

    Every table of report.md, speedup.md and the console shows a missing number this way.
    """
    return missing if value is None else format(value, spec)


def reference_of(mode_dir: str) -> str:
    """The mode folder ``mode_dir`` is compared with: the registry's reference, same split.

    A non-iid run is only comparable with a non-iid reference run (same data partition).
    """
    return layout.same_split(registry.REFERENCE, mode_dir)


def speedup_table(summaries: dict[str, dict[str, Any]], target: float) -> dict[str, dict[str, Any]]:
    """Per mode folder: time to ``target`` and ESync's speedup = its time / ESync's time.

    The one place the speedup is computed; ``esync_mode`` is None when the reference of the
    same split did not run (then ``esync_speedup`` is None too). The reference itself gets 1.0
    when it reached the target.
    """
    times = {m: time_to_target(s.get("accuracy") or [], target) for m, s in summaries.items()}
    table = {}
    for mode, summary in summaries.items():
        reference = reference_of(mode)
        table[mode] = {
            "split": summary.get("split", "iid"),
            "time_to_target_s": times[mode],
            "final_accuracy": summary.get("final_accuracy"),
            "esync_mode": reference if reference in summaries else None,
            "esync_speedup": ratio(times[mode], times.get(reference)),
        }
    return table


def byte_unit(largest: float) -> tuple[str, float]:
    """(unit, divisor) for a bytes/s axis whose largest value is ``largest``."""
    if largest >= 1e6:
        return "MB/s", 1e6
    if largest >= 1e3:
        return "KB/s", 1e3
    return "B/s", 1.0


def tool_parser(description: str, target: bool = False) -> argparse.ArgumentParser:
    """The flags summary.py, draw.py and report.py share: -b, -n (and --target)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "-b",
        "--base",
        default=config.REPORT_LOG_DIR,
        help=f"log directory (default: {config.REPORT_LOG_DIR})",
    )
    parser.add_argument("-n", "--network", required=True, help="network name, e.g. lenet")
    if target:
        parser.add_argument(
            "--target",
            type=float,
            default=config.TARGET_ACCURACY,
            help=f"test accuracy for time-to-target (default: {config.TARGET_ACCURACY})",
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = tool_parser("Write <base>/<network>/<mode>/summary.json")
    parser.add_argument(
        "-m", "--mode", required=True, help=f"mode folder, one of {', '.join(known_mode_dirs())}"
    )
    return parser.parse_args(argv)


def run_tool(action: Callable[[], Sequence[str]], errors: tuple[type[Exception], ...] = ()) -> int:
    """Run a report tool: print the paths it wrote (exit 0) or its error (exit 2)."""
    try:
        paths = action()
    except (SummaryError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    known = known_mode_dirs()
    if args.mode not in known:
        warn(f"unknown mode {args.mode!r} (known: {', '.join(known)}); reading it anyway")
    return run_tool(lambda: [write_summary(layout.mode_dir(args.base, args.network, args.mode))])


if __name__ == "__main__":
    sys.exit(main())
