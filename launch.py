"""Start a whole ESync / SSGD / ASGD cluster on this machine with one command.

    python launch.py -w 4 --slowdowns 1,1,4,16 -m esync -n lenet --rounds 30 -ld logs
    python launch.py --compare esync,sync,async,local -w 4 --slowdowns 1,1,4,16 \\
        --max-time 60 -ld logs

It starts a State Server (for the modes that use one), the ps-lite scheduler, one parameter
server and the workers on 127.0.0.1 with free ports, gives each worker its emulated slowdown,
forwards every other flag to main.py, writes each process's output to the run's process
folder (trainer/layout.py), shows rank 0's progress, and stops every process it started
whatever happens (end of run, a failing process, Ctrl-C, a time-out). The processes are
supervised by supervisor.py; the comparison report is report.py's.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time

import config
from supervisor import PYTHON, ROOT, Cluster, LaunchError, child_env, free_port, start_state_server
from trainer import layout, registry
from trainer.records import RecordTail


def parse_slowdowns(text: str, workers: int) -> list[float]:
    """``1,1,4,16`` -> one factor >= 1 per worker (one value is used for every worker)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slowdowns {text!r}: not a list of numbers") from None
    if len(values) == 1:
        values = values * workers
    if len(values) != workers:
        raise argparse.ArgumentTypeError(
            f"--slowdowns has {len(values)} values for {workers} workers"
        )
    if any(not v >= 1.0 or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError("every slowdown must be a finite number >= 1")
    return values


class Progress:
    """Prints rank 0's evaluation records as they appear (at most one line per ``every`` s)."""

    def __init__(self, mode_dir: str, label: str, every: float = 2.0) -> None:
        self.mode_dir = mode_dir
        self.label = label
        self.every = every
        self.tail: RecordTail | None = None
        self.last_printed = -float("inf")
        self.pending: dict | None = None
        self.last_acc: float | None = None
        self.rounds = 0

    def poll(self, final: bool = False) -> None:
        """Read new records; print the newest evaluation when due (always when ``final``)."""
        for rec in self._new_records():
            self.rounds = rec.get("round", self.rounds)
            if "test_acc" in rec:
                self.last_acc, self.pending = rec["test_acc"], rec
        due = final or time.monotonic() - self.last_printed >= self.every
        if self.pending is not None and due:
            rec, self.pending = self.pending, None
            self.last_printed = time.monotonic()
            print(
                f"[{self.label}] round {rec['round']:>5}  t={rec['time']:7.1f}s  "
                f"test acc {rec['test_acc']:.3f}  loss {rec.get('test_loss', 0):.4f}",
                flush=True,
            )

    def _new_records(self) -> list[dict]:
        if self.tail is None:
            rank0 = [
                w for w in layout.worker_dirs(self.mode_dir, socket.gethostname()) if not w.rank
            ]
            if not rank0:
                return []
            self.tail = RecordTail(rank0[0].rounds)
        return self.tail.read_new()

    def finished(self, seconds: float) -> None:
        """The closing line of a mode."""
        self.poll(final=True)
        acc = "n/a" if self.last_acc is None else f"{self.last_acc:.3f}"
        print(
            f"[{self.label}] finished: {self.rounds} rounds in {seconds:.1f} s, "
            f"last test acc {acc}",
            flush=True,
        )


def run_mode(opts: argparse.Namespace, mode: str, forwarded: list[str]) -> None:
    """Run one mode to the end on a fresh cluster; raises LaunchError when a process fails."""
    spec = registry.get(mode)
    run_dir = layout.mode_dir_name(mode, bool(opts.split_by_class))
    mode_dir = layout.mode_dir(opts.log_dir, opts.network, run_dir)
    shutil.rmtree(mode_dir / socket.gethostname(), ignore_errors=True)
    cluster = Cluster(layout.process_dir(opts.log_dir, opts.network, run_dir))
    common = ["-m", mode, "-n", opts.network, "-ld", opts.log_dir, "-s", str(opts.split_by_class)]
    common += forwarded
    slowdowns = ",".join(f"{s:g}" for s in opts.slowdowns)
    who = f"{opts.workers} workers, slowdowns {slowdowns}" if spec.distributed else "standalone"
    print(f"== {run_dir}: {who}; process logs in {cluster.proc_dir}", flush=True)
    progress = Progress(str(mode_dir), run_dir)
    started = time.monotonic()
    with cluster:
        if spec.distributed:
            start_distributed(opts, cluster, spec, common)
        else:
            cluster.start("local", "local", [PYTHON, "main.py", *common], child_env(opts.threads))
        cluster.wait_trainers(
            ("worker", "local"),
            ("scheduler", "server"),
            timeout=opts.timeout,
            grace=config.PS_EXIT_GRACE_S,
            on_tick=progress.poll,
        )
    progress.finished(time.monotonic() - started)


def state_server_flags(opts: argparse.Namespace, cluster: Cluster) -> list[str]:
    """``-ip``/``-port`` of the State Server the workers use: the given one or a new one."""
    if opts.state_server_at:
        host, port = opts.state_server_at
        return ["-ip", host, "-port", str(port)]
    _, url = start_state_server(cluster, opts.state_server)
    host, _, port = url.removeprefix("http://").rpartition(":")
    return ["-ip", host, "-port", port]


def start_distributed(
    opts: argparse.Namespace, cluster: Cluster, spec: registry.ModeSpec, common: list[str]
) -> None:
    """State Server (when the mode uses one), scheduler, server and workers."""
    worker_flags = common + (state_server_flags(opts, cluster) if spec.state_server else [])
    dmlc = {
        "DMLC_PS_ROOT_URI": "127.0.0.1",
        "DMLC_PS_ROOT_PORT": str(free_port()),
        "DMLC_NUM_SERVER": "1",
        "DMLC_NUM_WORKER": str(opts.workers),
        "DMLC_INTERFACE": "lo",
    }
    for role in ("scheduler", "server"):
        cluster.start(role, role, [PYTHON, "main.py"], child_env(1, {**dmlc, "DMLC_ROLE": role}))
    for i, slowdown in enumerate(opts.slowdowns):
        cluster.start(
            f"worker{i}",
            "worker",
            [PYTHON, "main.py", *worker_flags, "--slowdown", f"{slowdown:g}"],
            child_env(opts.threads, {**dmlc, "DMLC_ROLE": "worker"}),
        )


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run an emulated heterogeneous cluster on this machine. Flags not listed "
        "here are forwarded to every main.py (see python main.py --help)."
    )
    p.add_argument("-w", "--workers", type=int, default=config.WORKERS, help="number of workers")
    p.add_argument(
        "--slowdowns",
        default=config.SLOWDOWNS,
        help="comma-separated emulated slowdown per worker, e.g. 1,1,4,16",
    )
    registry.add_mode_arguments(p, config.LAUNCH_MODE)
    p.add_argument(
        "--compare",
        default="",
        help=f"run these modes in turn, then summary, draw and report "
        f"(choices: {','.join(registry.names())})",
    )
    p.add_argument("-n", "--network", default=config.NETWORK)
    p.add_argument("-ld", "--log-dir", dest="log_dir", default=config.LOG_DIR)
    p.add_argument(
        "-s",
        "--split-by-class",
        dest="split_by_class",
        type=int,
        choices=(0, 1),
        default=config.SPLIT_BY_CLASS,
    )
    p.add_argument(
        "--threads", type=int, default=config.NUM_THREADS, help="OMP/MKL threads per worker process"
    )
    p.add_argument(
        "--state-server",
        choices=("runserver", "gunicorn"),
        default=config.STATE_SERVER_KIND,
        help="how to serve the State Server",
    )
    p.add_argument(
        "--state-server-at",
        dest="state_server_at",
        type=_host_port,
        default=None,
        metavar="HOST:PORT",
        help="use this running State Server instead of starting one",
    )
    p.add_argument(
        "--target",
        type=float,
        default=config.TARGET_ACCURACY,
        help="--compare: accuracy for the time-to-accuracy table",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=config.RUN_TIMEOUT_S,
        help="fail a mode that runs longer than this many seconds (0: no limit)",
    )
    return p


def compare_modes(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The mode names of ``--compare`` (argparse error naming the unknown ones)."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in registry.MODES]
    if bad:
        parser.error(
            f"--compare: unknown mode(s) {', '.join(bad)} "
            f"(choose from {', '.join(registry.names())})"
        )
    return modes


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Launcher options, and the flags to forward to main.py."""
    parser = build_parser()
    opts, forwarded = parser.parse_known_args(argv)
    if opts.workers < 1:
        parser.error("-w must be >= 1")
    try:
        opts.slowdowns = parse_slowdowns(opts.slowdowns, opts.workers)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    registry.resolve_mode(parser, opts)
    opts.modes = compare_modes(parser, opts.compare) or [opts.mode]
    if "--slowdown" in forwarded:
        parser.error("use --slowdowns (one value per worker) with launch.py")
    # main.py validates every forwarded flag before anything starts
    check = subprocess.run(
        [PYTHON, "main.py", "-m", opts.modes[0], "-n", opts.network, *forwarded, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=child_env(1),
    )
    if check.returncode != 0:
        sys.stderr.write(check.stderr)
        parser.exit(2)
    return opts, forwarded


def main(argv: list[str] | None = None) -> int:
    opts, forwarded = parse(argv)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for mode in opts.modes:
            run_mode(opts, mode, forwarded)
        if opts.compare:
            import report

            run_dirs = [layout.mode_dir_name(m, bool(opts.split_by_class)) for m in opts.modes]
            report.write_all(opts.log_dir, opts.network, run_dirs, opts.target)
    except LaunchError as exc:
        print(f"launch: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("launch: interrupted; every process was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
