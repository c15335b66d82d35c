"""The fault matrix: every kind of fault, on every kind of process, in every phase of a run.

    python -m bench.fault_matrix                  # 2 x 5 x 3 = 30 runs, ~1 min each
    python -m bench.fault_matrix --faults stop --targets state-server --phases mid-run

Each cell is one run of the default cluster (esync, 4 workers with slowdowns 1,1,4,16, lenet
on digits, ``--checkpoint-every 3 --max-restarts 2 --failure-timeout 20``) with one fault:

* fault: ``kill -9``, or ``SIGSTOP`` held for ``--stop-for`` s (60) and then ``SIGCONT``
  (a hung process: alive as far as its exit status tells);
* target: the scheduler, the parameter server, a fast worker (slowdown 1), the slow worker
  (slowdown 16), the State Server;
* phase: start-up (as soon as the target has a pid, before rank 0's first round), mid-run
  (the round after the first checkpoint), during a checkpoint write (the moment the second
  checkpoint's first file appears; the table says whether the write was still under way).

Per cell it prints: detected after (s from the fault to the launcher's first line about it),
recovered after (s until rank 0 records a round past the one it had reached), rounds lost
(the round reached before the fault minus the round the run went on from; at most one
checkpoint interval), and the final test accuracy. The run's time budget is device time, so
the time a fault costs comes on top of it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import config
import summary
from bench.faults import MODE, LauncherRun, current_pids, launch_argv, rank0_round, send_signal
from trainer import layout

FAULTS = ("kill", "stop")
TARGETS = {  # name in pids.json (workers in --slowdowns order: 1, 1, 4, 16)
    "scheduler": "scheduler",
    "server": "server",
    "fast worker": "worker0",
    "slow worker": "worker3",
    "state-server": "state-server",
}
PHASES = ("start-up", "mid-run", "checkpoint")
# the launcher's lines about a fault: a restart of the cluster or in place, a hang, a failure
NOTICED = r"restart \d+ of|restarted as pid|has not answered|FAILED|exited with code"
CLUSTER_RESTART = r"restart \d+ of \d+: the whole cluster"  # launcher/local.announce_restart


@dataclass
class Cell:
    fault: str
    target: str
    phase: str
    injected_at: float = 0.0
    reached: int = 0  # rank 0's round when the fault came
    mid_write: bool | None = None  # the checkpoint phase: a temporary file was there
    detected_after: float | None = None
    recovered_after: float | None = None
    resumed_after: int | None = None
    accuracy: float | None = None
    exit_code: int | None = None

    def lost(self) -> int | None:
        if self.resumed_after is None:
            return None
        return max(0, self.reached - self.resumed_after)


def checkpoint_folder(log_dir: str):
    return layout.checkpoint_dir(layout.mode_dir(log_dir, config.NETWORK, MODE))


def wait_for_phase(
    run: LauncherRun, phase: str, name: str, log_dir: str, deadline: float, every: int
) -> tuple[int, bool | None]:
    """Block until ``phase`` begins; returns the target's pid and whether a checkpoint write
    was under way (the pid as seen then: pids.json is rewritten as processes start).

    Mid-run is the round after the first checkpoint (``every``: --checkpoint-every), so that
    a restart has one to go back to; the checkpoint phase is the write of the second one (a
    run of the slowest device at 16 x T0 may have fewer than 10 rounds in 30 s here)."""
    seen: set[str] = set()
    while time.monotonic() < deadline and run.proc.poll() is None:
        pids = _pids(log_dir)
        if phase == "start-up" and name in pids:
            return pids[name], None
        if phase == "mid-run" and name in pids and rank0_round(log_dir) > every:
            return pids[name], None
        if phase == "checkpoint" and name in pids and rank0_round(log_dir) > every:
            folder = checkpoint_folder(log_dir)
            names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
            new = names - seen if seen else set()
            seen |= names or {""}
            if new:
                return pids[name], any(".tmp" in n for n in names)
        time.sleep(0.002 if phase == "checkpoint" else 0.05)
    raise TimeoutError(f"the run never reached the {phase} phase")


def _pids(log_dir: str) -> dict[str, int]:
    try:
        return current_pids(log_dir)
    except (OSError, ValueError):
        return {}


def inject(cell: Cell, pid: int, stop_for: float) -> None:
    if cell.fault == "kill":
        send_signal(pid, signal.SIGKILL)
        return
    send_signal(pid, signal.SIGSTOP)
    threading.Timer(stop_for, send_signal, (pid, signal.SIGCONT)).start()


def observe(run: LauncherRun, cell: Cell, log_dir: str, wait: float) -> None:
    """Detection from the launcher's output, recovery from rank 0's records, until the run
    ends (or ``wait`` s). The recovery is the first round rank 0 records past the one reached
    or, after a cluster restart, past every round it had on file when the restart came: the
    round after a checkpoint, or rounds that go on while a stopped scheduler is not yet
    found, are written before the restart and are not a recovery."""
    deadline = time.monotonic() + wait
    seen: list[tuple[float, int]] = []  # (s since the start, rank 0's newest round)
    while time.monotonic() < deadline and run.proc.poll() is None:
        if cell.detected_after is None:
            noticed = run.first_line_after(cell.injected_at, NOTICED)
            if noticed:
                cell.detected_after = noticed[0] - cell.injected_at
        seen.append((time.monotonic() - run.started, rank0_round(log_dir)))
        time.sleep(0.2)
    # a restart in place ("... restarted as pid N (restart 1 of at most 2)") loses nothing
    restart = run.first_line_after(cell.injected_at, CLUSTER_RESTART)
    after, beyond = cell.injected_at, cell.reached
    if restart is None:  # in place (State Server) or not noticed: the run went on
        cell.resumed_after = cell.reached
    else:
        found = re.search(r"after round (\d+)", restart[1])
        cell.resumed_after = int(found[1]) if found else 0
        after = restart[0]
        beyond = max([cell.reached] + [r for t, r in seen if t <= after])
    recovered = next((t for t, r in seen if t > after and r > beyond), None)
    if recovered is not None:
        cell.recovered_after = recovered - cell.injected_at


def run_cell(cell: Cell, opts: argparse.Namespace, tmp: str) -> Cell:
    log_dir = os.path.join(tmp, f"{cell.fault}-{cell.target}-{cell.phase}".replace(" ", "_"))
    argv = launch_argv(opts, log_dir, restarts=2) + ["--failure-timeout", "20"]
    run = LauncherRun(argv).start()
    try:
        name = TARGETS[cell.target]
        deadline = time.monotonic() + 180
        pid, cell.mid_write = wait_for_phase(
            run, cell.phase, name, log_dir, deadline, opts.checkpoint_every
        )
        cell.reached = rank0_round(log_dir)
        cell.injected_at = time.monotonic() - run.started
        inject(cell, pid, opts.stop_for)
        observe(run, cell, log_dir, wait=240)
        cell.exit_code = run.proc.wait(opts.max_time * 4 + 300)
    except TimeoutError as exc:
        print(f"  {exc}", flush=True)
    finally:
        run.stop()
    try:
        found = summary.summarize(layout.mode_dir(log_dir, config.NETWORK, MODE))
        cell.accuracy = found.get("final_accuracy")
    except (OSError, ValueError, KeyError):
        cell.accuracy = None
    return cell


def row(cell: Cell) -> str:
    def num(value: float | None, fmt: str = ".1f") -> str:
        return "-" if value is None else format(value, fmt)

    phase = cell.phase
    if cell.phase == "checkpoint":
        phase += " (mid-write)" if cell.mid_write else " (just after)"
    lost = cell.lost()
    return (
        f"| {'kill -9' if cell.fault == 'kill' else 'SIGSTOP'} | {cell.target} | {phase} | "
        f"{num(cell.detected_after)} | {num(cell.recovered_after)} | "
        f"{'-' if lost is None else lost} | {num(cell.accuracy, '.3f')} | {cell.exit_code} |"
    )


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[list[str]]]:
    """The options, and the chosen faults, targets and phases (argparse errors list the
    choices)."""
    choices = {"--faults": FAULTS, "--targets": tuple(TARGETS), "--phases": PHASES}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, allowed in choices.items():
        parser.add_argument(flag, default=",".join(allowed), help=f"of {', '.join(allowed)}")
    parser.add_argument("--max-time", dest="max_time", type=float, default=30.0)
    parser.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=3)
    parser.add_argument("--stop-for", dest="stop_for", type=float, default=60.0)
    opts = parser.parse_args(argv)
    chosen = []
    for flag, allowed in choices.items():
        text = getattr(opts, flag[2:])
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or any(t not in allowed for t in items):
            parser.error(f"{flag} {text!r}: choose from {', '.join(allowed)}")
        chosen.append(items)
    return opts, chosen


def main(argv: list[str] | None = None) -> int:
    opts, chosen = parse(argv)
    print(
        f"fault matrix: {MODE}, 4 workers 1,1,4,16, {opts.max_time:g} s of device time per run, "
        f"--checkpoint-every {opts.checkpoint_every}, SIGSTOP held {opts.stop_for:g} s",
        flush=True,
    )
    print("\n| fault | target | phase | detected after (s) | recovered after (s) | rounds lost "
          "| final accuracy | exit |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|", flush=True)
    cells = []
    with tempfile.TemporaryDirectory(prefix="esync-fault-matrix-") as tmp:
        for fault, target, phase in itertools.product(*chosen):
            cells.append(run_cell(Cell(fault, target, phase), opts, tmp))
            print(row(cells[-1]), flush=True)
    bad = [
        c
        for c in cells
        if c.exit_code != 0 or (c.lost() or 0) > opts.checkpoint_every or c.accuracy is None
    ]
    print(f"\n{len(cells) - len(bad)} of {len(cells)} cells recovered within one checkpoint "
          "interval and finished", flush=True)  # fmt: skip
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
