"""Fault injection: kill random processes of a running cluster and measure the recovery.

    python -m bench.faults                       # the default cluster, 60 s, 3 faults, seed 1
    python -m bench.faults --seed 7 --faults 4 --max-time 90
    python -m bench.faults --soak 1200           # 20 min, a random fault every 60 s

With ``--soak S`` the run has S s of training and a fault every ``--every`` s (60) of wall
time until it ends, each a ``kill -9`` or a ``SIGSTOP`` held ``--stop-for`` s (then
``SIGCONT``) of a random process; it passes when the run ends at >= 90 % accuracy and no
fault cost more than one checkpoint interval. The fault matrix is bench/fault_matrix.py.

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
    fault: str = "kill -9"
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


def inject(run: LauncherRun, rng: random.Random, log_dir: str, stop_for: float = 0.0) -> Injection:
    """Kill one random process now (``stop_for`` > 0: or, by a coin toss, SIGSTOP it for
    that long); the launcher's reaction is read later."""
    name, pid = pick_victim(rng, current_pids(log_dir))
    stop = stop_for > 0 and rng.random() < 0.5
    fault = "SIGSTOP" if stop else "kill -9"
    shot = Injection(name, pid, time.monotonic() - run.started, rank0_round(log_dir), fault)
    send_signal(pid, signal.SIGSTOP if stop else signal.SIGKILL)
    if stop:
        threading.Timer(stop_for, send_signal, (pid, signal.SIGCONT)).start()
    print(f"  t={shot.at:6.1f}s {fault} {name} (pid {pid}) at round {shot.last_round}", flush=True)
    return shot


def send_signal(pid: int, sig: int) -> None:
    """``sig`` to ``pid``, unless it is gone already."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


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
    """The run with ``opts.faults`` kills at seeded moments (``--soak``: a fault every
    ``--every`` s until it ends); returns them and the exit code."""
    rng = random.Random(opts.seed)
    if opts.soak:
        moments = [opts.every * k for k in range(1, 10_000)]
        restarts, stop_for = 10_000, opts.stop_for
    else:
        moments = sorted(rng.uniform(0.15, 0.75) * opts.max_time for _ in range(opts.faults))
        restarts, stop_for = opts.faults + 1, 0.0
    argv = launch_argv(opts, log_dir, restarts) + ["--failure-timeout", "20"] * bool(opts.soak)
    run = LauncherRun(argv).start()
    shots: list[Injection] = []
    try:
        for moment in moments:
            while run.proc.poll() is None and (
                rank0_round(log_dir) == 0 or time.monotonic() - run.started < moment
            ):
                time.sleep(0.2)
            if run.proc.poll() is not None:
                break
            shots.append(inject(run, rng, log_dir, stop_for))
            settle(run, shots[-1], log_dir, wait=90)
        code = run.proc.wait(opts.max_time * 4 + 300)
    finally:
        run.stop()
    return shots, code


def plateau(log_dir: str) -> float | None:
    return summary.summarize(layout.mode_dir(log_dir, config.NETWORK, MODE))["plateau_accuracy"]


def print_table(shots: list[Injection]) -> None:
    print("\n| # | fault | target | at (s) | detected after (s) | recovered | rounds lost |")
    print("|---:|---|---|---:|---:|---|---:|")
    for i, s in enumerate(shots, 1):
        lost = None if s.resumed_after_round is None else s.last_round - s.resumed_after_round
        detected = "-" if s.detected_after is None else f"{s.detected_after:.1f}"
        print(
            f"| {i} | {s.fault} | {s.target} | {s.at:.1f} | {detected} | "
            f"{'yes' if s.recovered else 'NO'}"
            f" | {'-' if lost is None else max(0, lost)} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faults", type=int, default=3)
    p.add_argument("--max-time", dest="max_time", type=float, default=60.0)
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=5)
    p.add_argument("--soak", type=float, default=0.0, help="S s of training, faults all along")
    p.add_argument("--every", type=float, default=60.0, help="--soak: s between faults")
    p.add_argument("--stop-for", dest="stop_for", type=float, default=60.0)
    opts = p.parse_args(argv)
    if opts.soak:
        opts.max_time = opts.soak
    with tempfile.TemporaryDirectory(prefix="esync-faults-") as tmp:
        what = f"a fault every {opts.every:g} s" if opts.soak else f"seed {opts.seed}"
        print(f"disturbed run: {MODE}, 4 workers 1,1,4,16, {opts.max_time:g} s, {what}")
        shots, code = disturbed_run(opts, os.path.join(tmp, "disturbed"))
        print_table(shots)
        print(f"\ndisturbed run exit code {code}")
        if opts.soak:
            return soak_verdict(opts, shots, code, os.path.join(tmp, "disturbed"))
        calm = LauncherRun(launch_argv(opts, os.path.join(tmp, "calm"), 0)).start()
        calm_code = calm.proc.wait(opts.max_time * 3 + 120)
        accs = plateau(os.path.join(tmp, "disturbed")), plateau(os.path.join(tmp, "calm"))
        print(f"undisturbed run exit code {calm_code}")
        print(f"plateau accuracy: with faults {accs[0]:.4f}, without {accs[1]:.4f}")
    return 0 if code == 0 and calm_code == 0 and all(s.recovered for s in shots) else 1


def soak_verdict(opts: argparse.Namespace, shots: list[Injection], code: int, log_dir: str) -> int:
    """The soak passes at >= 90 % final accuracy, with no fault costing more than one
    checkpoint interval of rounds."""
    final = summary.summarize(layout.mode_dir(log_dir, config.NETWORK, MODE))["final_accuracy"]
    lost = [
        s.last_round - s.resumed_after_round for s in shots if s.resumed_after_round is not None
    ]
    worst = max(lost, default=0)
    print(
        f"soak: {len(shots)} faults, final accuracy {final}, most rounds lost to one fault "
        f"{worst} (checkpoint interval {opts.checkpoint_every})"
    )
    ok = code == 0 and final is not None and final >= 0.9 and worst <= opts.checkpoint_every
    return 0 if ok and all(s.recovered for s in shots) else 1


if __name__ == "__main__":
    sys.exit(main())
