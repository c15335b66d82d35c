"""Start-up false alarms: start the same cluster many times while CPU burners load the machine.

    python -m bench.startup_alarms                 # 20 starts, 2 burners, the issue's cluster
    python -m bench.startup_alarms --starts 5 --burners 0

Each start is ``launch.py --compare esync,esync-nova,esync-prox,sync -s 1 -w 4 --slowdowns
1,1,4,16 -n lenet --dataset digits`` cut to a few rounds: a slow start-up is what once made
the watchdog take a starving scheduler for a dead one (#24). ``--burners`` processes spin on
the CPU the whole time (two fill this 2-core machine). It prints, per start, the exit code,
the seconds it took and whether any process printed a watchdog FAILURE line, then the count
of false alarms (a FAILURE or exit code 5 in a run where nothing was killed). A real death
is still found within ``--failure-timeout``: tests/unit/test_watchdog.py (the decision) and
tests/e2e/test_failures_netns.py (a kill on emulated hosts) show it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from launcher.supervision import PYTHON, ROOT, child_env

MODES = "esync,esync-nova,esync-prox,sync"
FAILURE = re.compile(r"FAILURE: .*")


@dataclass
class Start:
    code: int
    seconds: float
    failures: list[str]

    @property
    def false_alarm(self) -> bool:
        return self.code == 5 or bool(self.failures)


def burn() -> None:
    """Spin forever (a CPU-bound neighbour)."""
    while True:
        pass


def one_start(log_dir: Path, rounds: int, timeout: float) -> Start:
    argv = [PYTHON, "launch.py", "--compare", MODES, "-s", "1", "-w", "4"]
    argv += ["--slowdowns", "1,1,4,16", "-n", "lenet", "--dataset", "digits"]
    argv += ["--rounds", str(rounds), "-e", "0", "--eval-interval", "0.5", "-ld", str(log_dir)]
    started = time.monotonic()
    res = subprocess.run(
        argv, cwd=ROOT, env=child_env(1), capture_output=True, text=True, timeout=timeout
    )
    text = res.stdout + res.stderr
    for log in log_dir.rglob("*.log"):
        text += log.read_text(errors="replace")
    return Start(res.returncode, time.monotonic() - started, FAILURE.findall(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=20, help="cluster starts (default 20)")
    parser.add_argument("--burners", type=int, default=2, help="CPU burners (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (default 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per start")
    args = parser.parse_args(argv)
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
    for b in burners:
        b.start()
    starts: list[Start] = []
    try:
        for i in range(args.starts):
            with tempfile.TemporaryDirectory(prefix="esync-startup-") as tmp:
                s = one_start(Path(tmp), args.rounds, args.timeout)
            starts.append(s)
            note = "; ".join(s.failures)[:200] or "no watchdog failure"
            print(f"start {i + 1:2d}: exit {s.code}, {s.seconds:5.1f} s, {note}", flush=True)
    finally:
        for b in burners:
            b.terminate()
            b.join()
    alarms = sum(s.false_alarm for s in starts)
    other = sum(s.code != 0 and not s.false_alarm for s in starts)
    median = sorted(s.seconds for s in starts)[len(starts) // 2]
    print(
        f"\n{len(starts)} starts with {args.burners} CPU burners: {alarms} false alarms, "
        f"{other} other failures; median {median:.1f} s a start"
    )
    return 1 if alarms or other else 0


if __name__ == "__main__":
    sys.exit(main())
