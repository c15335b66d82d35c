"""Where each worker's wall-clock time went, from a run's records (a profile of one mode).

    python bench/breakdown.py -b logs -n lenet -m esync

Prints one row per worker: slowdown, rounds, local iterations per round, milliseconds per
batch and per State Server query, and the share of wall time spent computing (emulated
slowdown included), querying the State Server, in KVStore push/pull (waiting for the other
workers included), evaluating, and elsewhere (Python overhead, records, checksums).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from summary import SummaryError, load_worker  # noqa: E402

PARTS = ("compute_s", "query_s", "comm_s", "eval_s", "wait_s")


def breakdown(mode_dir: str) -> list[dict]:
    """One row per worker folder under ``mode_dir``."""
    rows = []
    for host in sorted(os.listdir(mode_dir)):
        host_dir = os.path.join(mode_dir, host)
        if not os.path.isdir(host_dir):
            continue
        for name in sorted(os.listdir(host_dir)):
            if "-rank" not in name:
                continue
            meta, records = load_worker(os.path.join(host_dir, name))
            if not records:
                continue
            wall = records[-1]["time"]
            iters = sum(r["local_iterations"] for r in records)
            queries = sum(max(0, r["local_iterations"] - 1) + 1 for r in records)
            row = {
                "worker": f"{host}/{name}",
                "slowdown": meta.get("slowdown", 1.0),
                "rounds": len(records),
                "iters_per_round": iters / len(records),
                "ms_per_batch": 1e3 * sum(r["compute_s"] for r in records) / max(iters, 1),
                "ms_per_query": 1e3 * sum(r["query_s"] for r in records) / queries,
            }
            for part in PARTS:
                row[part] = sum(r[part] for r in records) / wall if wall else 0.0
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-b", "--base", default="logs")
    parser.add_argument("-n", "--network", default="lenet")
    parser.add_argument("-m", "--mode", default="esync")
    args = parser.parse_args(argv)
    mode_dir = os.path.join(args.base, args.network, args.mode)
    if not os.path.isdir(mode_dir):
        print(f"error: no run folder {mode_dir}", file=sys.stderr)
        return 2
    try:
        rows = breakdown(mode_dir)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"| {args.mode} worker | S | rounds | iters/round | ms/batch | ms/query | compute "
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
