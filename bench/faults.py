"""Fault injection: kill random processes of a running cluster and measure the recovery.

    python -m bench.faults                       # the default cluster, 60 s, 3 faults, seed 1
    python -m bench.faults --seed 7 --faults 4 --max-time 90

Runs ``launch.py`` (checkpoints every few rounds, ``--max-restarts``) on the default cluster
and, at moments drawn from the seed, ``kill -9``s a random process: a worker, the parameter
server, the scheduler or the State Server. For each injection it prints what was killed and
when, how long the launcher took to notice (its restart line), whether the run went on, and
how many rounds were lost (the last round recorded before the kill minus the round it resumed
after). Then it runs the same cluster undisturbed and prints both plateau accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import config
import summary
from launcher.supervision import PYTHON, ROOT, child_env
from trainer import layout

TARGETS = ("worker", "server", "scheduler", "state-server")
MODE = "esync"


@dataclass
class Injection:
    """One kill and what followed."""

    target: str
    pid: int
    at: float  # seconds since the launcher started
    last_round: int  # rank 0's newest record before the kill
    detected_after: float | None = None
    resumed_after_round: int | None = None
    recovered: bool = False


@dataclass
class LauncherRun:
    """A launch.py process whose output lines are collected with their arrival times."""

    argv: list[str]
    started: float = field(default_factory=time.monotonic)
    lines: list[tuple[float, str]] = field(default_factory=list)

    def start(self) -> LauncherRun:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=child_env(1),
            text=True,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip()))

    def first_line_after(self, t: float, pattern: str) -> tuple[float, str] | None:
        return next(((at, ln) for at, ln in self.lines if at >= t and re.search(pattern, ln)), None)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(120)


def launch_argv(opts: argparse.Namespace, log_dir: str, restarts: int) -> list[str]:
    """The default cluster, time-limited, with checkpoints and whole-cluster restarts."""
    return [
        PYTHON,
        "launch.py",
        "-w",
        "4",
        "--slowdowns",
        "1,1,4,16",
        "-m",
        MODE,
        "-n",
        config.NETWORK,
        "--rounds",
        "100000",
        "--max-time",
        str(opts.max_time),
        "-e",
        "0",
        "--eval-interval",
        "1",
        "--checkpoint-every",
        str(opts.checkpoint_every),
        "--max-restarts",
        str(restarts),
        "-ld",
        log_dir,
    ]


def current_pids(log_dir: str) -> dict[str, int]:
    """name -> pid of the newest attempt's processes (restarts write their own pids.json)."""
    folder = layout.process_dir(log_dir, config.NETWORK, MODE)
    attempts = sorted(
        folder.glob(f"restart*/{layout.PIDS_NAME}"), key=lambda p: int(p.parent.name[7:])
    )
    newest = attempts[-1] if attempts else folder / layout.PIDS_NAME
    with open(newest) as fh:
        return json.load(fh)


def rank0_round(log_dir: str) -> int:
    """rank 0's newest recorded round (0 before the first)."""
    folder = layout.mode_dir(log_dir, config.NETWORK, MODE)
    for worker in layout.worker_dirs(folder):
        if worker.rank == 0 and worker.rounds.exists():
            lines = worker.rounds.read_text().splitlines()
            return json.loads(lines[-1])["round"] if lines else 0
    return 0


def pick_victim(rng: random.Random, pids: dict[str, int]) -> tuple[str, int]:
    """A random kind of process, then a random process of that kind."""
    kind = rng.choice(TARGETS)
    names = [n for n in pids if n == kind or (kind == "worker" and n.startswith(kind))]
    name = rng.choice(names)
    return name, pids[name]


def inject(run: LauncherRun, rng: random.Random, log_dir: str) -> Injection:
    """Kill one random process now; the launcher's reaction is read later."""
    name, pid = pick_victim(rng, current_pids(log_dir))
    shot = Injection(name, pid, time.monotonic() - run.started, rank0_round(log_dir))
    os.kill(pid, signal.SIGKILL)
    print(f"  t={shot.at:6.1f}s kill -9 {name} (pid {pid}) at round {shot.last_round}", flush=True)
    return shot


def settle(run: LauncherRun, shot: Injection, log_dir: str, wait: float) -> None:
    """What the launcher did about ``shot``: detection time, resume round, recovery."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and shot.detected_after is None:
        seen = run.first_line_after(shot.at, r"restart \d+ of|restarted|FAILED")
        if seen:
            shot.detected_after = seen[0] - shot.at
            found = re.search(r"after round (\d+)", seen[1])
            if found:  # the whole cluster restarted from that checkpoint
                shot.resumed_after_round = int(found[1])
            elif "the start" in seen[1]:  # restarted before the first checkpoint
                shot.resumed_after_round = 0
            else:  # restarted in place (State Server): nothing was lost
                shot.resumed_after_round = shot.last_round
        time.sleep(0.2)
    before = rank0_round(log_dir)
    while time.monotonic() < deadline and not shot.recovered:
        shot.recovered = rank0_round(log_dir) > max(before, shot.last_round)
        time.sleep(0.5)


def disturbed_run(opts: argparse.Namespace, log_dir: str) -> tuple[list[Injection], int]:
    """The run with ``opts.faults`` kills at seeded moments; returns them and the exit code."""
    rng = random.Random(opts.seed)
    moments = sorted(rng.uniform(0.15, 0.75) * opts.max_time for _ in range(opts.faults))
    run = LauncherRun(launch_argv(opts, log_dir, opts.faults + 1)).start()
    shots: list[Injection] = []
    try:
        for moment in moments:
            while rank0_round(log_dir) == 0 or time.monotonic() - run.started < moment:
                time.sleep(0.2)
            shots.append(inject(run, rng, log_dir))
            settle(run, shots[-1], log_dir, wait=90)
        code = run.proc.wait(opts.max_time * 4 + 300)
    finally:
        run.stop()
    return shots, code


def plateau(log_dir: str) -> float | None:
    return summary.summarize(layout.mode_dir(log_dir, config.NETWORK, MODE))["plateau_accuracy"]


def print_table(shots: list[Injection]) -> None:
    print("\n| # | killed | at (s) | detected after (s) | recovered | rounds lost |")
    print("|---:|---|---:|---:|---|---:|")
    for i, s in enumerate(shots, 1):
        lost = None if s.resumed_after_round is None else s.last_round - s.resumed_after_round
        detected = "-" if s.detected_after is None else f"{s.detected_after:.1f}"
        print(
            f"| {i} | {s.target} | {s.at:.1f} | {detected} | {'yes' if s.recovered else 'NO'}"
            f" | {'-' if lost is None else max(0, lost)} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faults", type=int, default=3)
    p.add_argument("--max-time", dest="max_time", type=float, default=60.0)
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=5)
    opts = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="esync-faults-") as tmp:
        print(f"disturbed run: {MODE}, 4 workers 1,1,4,16, {opts.max_time:g} s, seed {opts.seed}")
        shots, code = disturbed_run(opts, os.path.join(tmp, "disturbed"))
        print_table(shots)
        print(f"\ndisturbed run exit code {code}")
        calm = LauncherRun(launch_argv(opts, os.path.join(tmp, "calm"), 0)).start()
        calm_code = calm.proc.wait(opts.max_time * 3 + 120)
        accs = plateau(os.path.join(tmp, "disturbed")), plateau(os.path.join(tmp, "calm"))
        print(f"undisturbed run exit code {calm_code}")
        print(f"plateau accuracy: with faults {accs[0]:.4f}, without {accs[1]:.4f}")
    return 0 if code == 0 and calm_code == 0 and all(s.recovered for s in shots) else 1


if __name__ == "__main__":
    sys.exit(main())
