"""Device-time emulation, measured: fidelity, run-to-run spread, seconds against rounds.

    python -m bench.device_time                      # everything below, three runs each
    python -m bench.device_time --only default --runs 1 --max-time 60

Scenarios (each run is one ``launch.py --compare`` in a fresh log folder):

* ``default``: ESync, SSGD and standalone on the default cluster (4 workers, slowdowns
  1,1,4,16, iid). Prints per run the fidelity of every mode, ESync's and SSGD's time and
  rounds to the target accuracy, the speedup in seconds next to the speedup in rounds x the
  nominal per-round device-time ratio (S_max x T0 for both: one slowest batch a round), every
  ESync worker's compute-time ratio, throughput in batches per device unit T0 (ESync against
  the ideal sum(1 / S_i), SSGD against p / S_max, standalone against 1) and the plateaus.
* ``sixteen``: ESync on 16 workers (1,1,1,1,2,2,2,2,4,4,4,4,16,16,16,16): fidelity.
* ``niid``: ESync-M and SSGD on the split-by-class data: seconds to the target.
* ``share``: the ``default`` scenario under ``--emulation share`` (the earlier emulation,
  devices as shares of the cores), once, for the side-by-side comparison.

The device unit is probed once (``main.py --probe-device``) and calibrated for each cluster
(trainer/calibrate.py); every run of a scenario uses the same T0, so the runs differ only by
the host's noise, which is what the spread measures. Figures that move with the machine's load
are ratios within one run. Nothing here is a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from launcher.supervision import PYTHON, ROOT, child_env
from summary import load_summary
from trainer import calibrate, layout
from trainer.slowdown import Schedule

DEFAULT = "1,1,4,16"
SIXTEEN = "1,1,1,1,2,2,2,2,4,4,4,4,16,16,16,16"
TARGET = 0.9
SCENARIOS = ("default", "share", "sixteen", "niid")


def probe_s(network: str) -> float:
    out = subprocess.run(
        [PYTHON, "main.py", "-m", "local", "-n", network, "--probe-device"],
        cwd=ROOT,
        env=child_env(1),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["probe_s"])


def unit_for(probe: float, slowdowns: str) -> float:
    schedules = [Schedule.parse(s) for s in slowdowns.split(",")]
    return calibrate.plan_unit(probe, schedules, calibrate.machine_cores()).unit_s


def compare(modes: str, slowdowns: str, unit: float, opts: argparse.Namespace, *extra: str):
    """One ``launch.py --compare`` run; its log folder."""
    log_dir = tempfile.mkdtemp(prefix="esync-bench-device-")
    workers = len(slowdowns.split(","))
    argv = [PYTHON, "launch.py", "--compare", modes, "-w", str(workers), "--slowdowns"]
    argv += [slowdowns, "-n", opts.network, "--max-time", f"{opts.max_time:g}"]
    argv += ["--rounds", "1000000", "-e", "0", "--eval-interval", "0.25", "--dashboard", "0"]
    argv += ["--checkpoint-every", "0", "-ld", log_dir, *extra]
    if "--emulation" not in extra:
        argv += ["--device-unit", f"{unit:.9g}"]
    run = subprocess.run(argv, cwd=ROOT, env=child_env(1), capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(
            f"launch.py failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        )
    return Path(log_dir) / opts.network


def to_target(summary: dict[str, Any]) -> tuple[float | None, int | None]:
    """(seconds, rounds) of rank 0's first evaluation at or above TARGET."""
    rank0 = next(w for w in layout.worker_dirs(Path(summary["_dir"])) if w.rank == 0)
    for line in rank0.rounds.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("test_acc", 0.0) >= TARGET:
            return rec.get("eval_time", rec["time"]), rec.get("eval_round", rec["round"])
    return None, None


def summaries(base: Path, modes: str, split: str = "") -> dict[str, dict[str, Any]]:
    found = {}
    for mode in modes.split(","):
        folder = base / (f"{mode}-niid" if split else mode)
        found[mode] = {**load_summary(folder), "_dir": str(folder)}
    return found


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def default_run(unit: float, opts: argparse.Namespace, *extra: str) -> dict[str, Any]:
    base = compare("esync,sync,local", DEFAULT, unit, opts, *extra)
    s = summaries(base, "esync,sync,local")
    (te, re), (ts, rs) = to_target(s["esync"]), to_target(s["sync"])
    slowdowns = [float(x) for x in DEFAULT.split(",")]
    return {
        "fidelity": {m: s[m]["fidelity"] for m in s},
        "esync_s": te,
        "esync_rounds": re,
        "sync_s": ts,
        "sync_rounds": rs,
        "speedup_s": ts / te if te and ts else None,
        "speedup_rounds": rs / re if re and rs else None,  # x nominal round ratio, 1
        "compute_ratios": [round(w["compute_time_ratio"], 3) for w in s["esync"]["workers"]],
        "esync_units": s["esync"]["device_throughput"],
        "ideal_units": sum(1 / x for x in slowdowns),
        "sync_units": s["sync"]["device_throughput"],
        "sync_ideal": len(slowdowns) / max(slowdowns),
        "local_units": s["local"]["device_throughput"],
        **{f"{m}_sps": s[m]["samples_per_s"] for m in s},
        "plateau": {m: s[m]["plateau_accuracy"] for m in s},
    }


def print_default(runs: list[dict[str, Any]], unit: float, title: str = "") -> None:
    head = title or f"T0 = {unit * 1e3:.2f} ms"
    print(f"\n== default cluster {DEFAULT}, {head}, target {TARGET:.0%}")
    for i, r in enumerate(runs, 1):
        fid = ", ".join(f"{m} {v:.2%}" for m, v in r["fidelity"].items() if v is not None)
        fid = fid or "- (not device time)"
        pl = ", ".join(f"{m} {fmt(v, '.4f')}" for m, v in r["plateau"].items())
        print(
            f"run {i}: fidelity {fid}\n"
            f"  to target: ESync {fmt(r['esync_s'], '.2f')} s / {r['esync_rounds']} rounds, "
            f"SSGD {fmt(r['sync_s'], '.2f')} s / {r['sync_rounds']} rounds; speedup "
            f"{fmt(r['speedup_s'], '.2f')}x in seconds, {fmt(r['speedup_rounds'], '.2f')}x in "
            "rounds x 1.00 (nominal round ratio)\n"
            f"  ESync compute ratios {r['compute_ratios']}\n"
            f"  samples/s: ESync {r['esync_sps']:.0f}, SSGD {r['sync_sps']:.0f}, standalone "
            f"{r['local_sps']:.0f}\n"
            f"  batches per T0: ESync {fmt(r['esync_units'], '.3f')} (ideal "
            f"{r['ideal_units']:.3f}), SSGD {fmt(r['sync_units'], '.3f')} (ideal "
            f"{r['sync_ideal']:.3f}), standalone {fmt(r['local_units'], '.3f')}\n  plateau {pl}"
        )
    for key in ("esync_s", "sync_s"):
        values = [r[key] for r in runs if r[key]]
        if len(values) > 1:
            print(f"spread of {key}: max/min = {max(values) / min(values):.3f} over {values}")


def sixteen_run(unit: float, opts: argparse.Namespace) -> float | None:
    s = summaries(compare("esync", SIXTEEN, unit, opts), "esync")
    return s["esync"]["fidelity"]


def niid_run(unit: float, opts: argparse.Namespace) -> tuple[float | None, float | None]:
    s = summaries(compare("esync-m,sync", DEFAULT, unit, opts, "-s", "1"), "esync-m,sync", "n")
    return to_target(s["esync-m"])[0], to_target(s["sync"])[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-time", type=float, default=90.0)
    p.add_argument("--network", default="lenet")
    p.add_argument("--only", choices=SCENARIOS, action="append")
    opts = p.parse_args(argv)
    wanted = opts.only or list(SCENARIOS)
    probe = probe_s(opts.network)
    print(f"probe: {probe * 1e3:.2f} ms per batch of {opts.network}", flush=True)
    if "default" in wanted:
        unit = unit_for(probe, DEFAULT)
        print_default([default_run(unit, opts) for _ in range(opts.runs)], unit)
    if "share" in wanted:
        print_default([default_run(0.0, opts, "--emulation", "share")], 0.0, "share emulation")
    if "sixteen" in wanted:
        unit = unit_for(probe, SIXTEEN)
        fid = [sixteen_run(unit, opts) for _ in range(opts.runs)]
        print(f"\n== 16 workers, T0 = {unit * 1e3:.2f} ms: ESync fidelity {fid}")
    if "niid" in wanted:
        unit = unit_for(probe, DEFAULT)
        for i in range(opts.runs):
            em, ss = niid_run(unit, opts)
            ratio = ss / em if em and ss else None
            print(
                f"\n== split by class, run {i + 1}: ESync-M {fmt(em, '.2f')} s, SSGD "
                f"{fmt(ss, '.2f')} s to {TARGET:.0%}: {fmt(ratio, '.2f')}x",
                flush=True,
            )
    print(f"(min fidelity printed per mode; summaries stay in {tempfile.gettempdir()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
