"""Where each worker's wall-clock time went, from a run's records (a profile of one mode).

    python -m bench.breakdown -b logs -n lenet -m esync        # from the repository root

Prints one row per worker: slowdown, rounds, local iterations per round, milliseconds per
batch and per State Server query, and the share of wall time spent computing (emulated
slowdown included), querying the State Server, in KVStore push/pull (waiting for the other
workers included), evaluating, and elsewhere (Python overhead, records, checksums).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import config
from summary import Record, SummaryError, load_worker
from trainer import layout, registry

PARTS = ("compute_s", "query_s", "comm_s", "eval_s", "wait_s")


def worker_row(worker: layout.WorkerDir, meta: dict[str, Any], records: list[Record]) -> dict:
    """The profile of one worker with at least one record.

    Each part is a share of the worker's wall time, so that workers of different speeds and
    run lengths compare directly.
    """
    wall = records[-1]["time"]
    iters = sum(r["local_iterations"] for r in records)
    queries = sum(max(0, r["local_iterations"] - 1) + 1 for r in records)
    row = {
        "worker": f"{worker.host}/{worker.path.name}",
        "slowdown": meta.get("slowdown", 1.0),
        "rounds": len(records),
        "iters_per_round": iters / len(records),
        "ms_per_batch": 1e3 * sum(r["compute_s"] for r in records) / max(iters, 1),
        "ms_per_query": 1e3 * sum(r["query_s"] for r in records) / queries,
    }
    for part in PARTS:
        row[part] = sum(r[part] for r in records) / wall if wall else 0.0
    return row


def breakdown(mode_dir: str | Path) -> list[dict]:
    """One row per worker folder under ``mode_dir`` that holds records."""
    rows = []
    for worker in layout.worker_dirs(mode_dir):
        meta, records = load_worker(worker.path)
        if records:
            rows.append(worker_row(worker, meta, records))
    return rows


def print_rows(mode: str, rows: list[dict]) -> None:
    """Markdown table of ``breakdown`` rows, slowest emulated device first."""
    print(
        f"| {mode} worker | S | rounds | iters/round | ms/batch | ms/query | compute "
        "| query | kvstore | eval | other |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: -r["slowdown"]):
        print(
            f"| {r['worker']} | {r['slowdown']:g} | {r['rounds']} | "
            f"{r['iters_per_round']:.1f} | {r['ms_per_batch']:.1f} | {r['ms_per_query']:.2f} | "
            + " | ".join(f"{100 * r[p]:.0f}%" for p in PARTS)
            + " |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-b", "--base", default=config.REPORT_LOG_DIR)
    parser.add_argument("-n", "--network", default=config.NETWORK)
    parser.add_argument("-m", "--mode", default=registry.REFERENCE, help="mode folder")
    args = parser.parse_args(argv)
    mode_dir = layout.mode_dir(args.base, args.network, args.mode)
    if not mode_dir.is_dir():
        print(f"error: no run folder {mode_dir}", file=sys.stderr)
        return 2
    try:
        rows = breakdown(mode_dir)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_rows(args.mode, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
