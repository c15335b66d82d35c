"""Start a whole ESync / SSGD / ASGD cluster on this machine with one command.

    python launch.py -w 4 --slowdowns 1,1,4,16 -m esync -n lenet --rounds 30 -ld logs
    python launch.py --compare esync,sync,async,dcasgd,local -w 4 --slowdowns 1,1,4,16 \\
        --max-time 60 -ld logs

It starts a State Server (esync only), the ps-lite scheduler, one parameter server and the
workers on 127.0.0.1 with free ports, gives each worker its emulated slowdown, forwards every
other flag to main.py, writes each process's output to
``<log_dir>/processes/<network>/<mode>/<name>.log``, shows rank 0's progress, and stops every
process it started whatever happens (end of run, a failing process, Ctrl-C, a time-out).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO

import config

ROOT = os.path.dirname(os.path.abspath(__file__))
COMPARE_MODES = ("esync", "sync", "async", "dcasgd", "local")
PYTHON = sys.executable


class LaunchError(Exception):
    """A process of the run failed; the message says which and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@dataclass
class Proc:
    """One child process and its log file."""

    name: str
    popen: subprocess.Popen
    log_path: str
    log_file: IO[bytes]
    role: str  # state-server | scheduler | server | worker | local

    def tail(self, lines: int = 15) -> str:
        """The last lines of this process's output."""
        if not self.log_file.closed:
            self.log_file.flush()
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Cluster:
    """The processes of one run; ``stop()`` ends them all (process groups, TERM then KILL)."""

    proc_dir: str
    procs: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, role: str, cmd: list[str], env: dict[str, str], cwd: str = ROOT
    ) -> Proc:
        """Start ``cmd`` in its own session, its output in ``<proc_dir>/<name>.log``."""
        os.makedirs(self.proc_dir, exist_ok=True)
        path = os.path.join(self.proc_dir, f"{name}.log")
        log_file = open(path, "wb")
        popen = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = Proc(name, popen, path, log_file, role)
        self.procs.append(proc)
        self._write_pids()
        return proc

    def _write_pids(self) -> None:
        """``pids.json``: name -> pid of every process started, for inspection and tests."""
        with open(os.path.join(self.proc_dir, "pids.json"), "w") as fh:
            json.dump({p.name: p.popen.pid for p in self.procs}, fh)

    def stop(self, grace: float = 5.0) -> None:
        """Terminate every process group still alive, then kill what remains after ``grace``."""
        alive = [p for p in self.procs if p.popen.poll() is None]
        for p in alive:
            _signal_group(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in alive:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # children of a finished leader may still hold the group
            _signal_group(p.popen.pid, signal.SIGKILL)
            try:
                p.popen.wait(5.0)
            except subprocess.TimeoutExpired:
                print(f"warning: {p.name} (pid {p.popen.pid}) did not die", file=sys.stderr)
            p.log_file.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a child: thread limits, unbuffered output, no inherited DMLC role."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def wait_http(url: str, proc: Proc, timeout: float) -> None:
    """Wait until ``url`` answers, or fail when the process dies or time runs out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise LaunchError(
                f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise LaunchError(f"{proc.name} did not answer at {url} within {timeout:.0f} s")


def state_server_cmd(kind: str, port: int) -> list[str]:
    """Command that serves the State Server on 127.0.0.1:port."""
    if kind == "gunicorn":
        conf = os.path.join(ROOT, "StateServer", "gunicorn.conf.py")
        return [PYTHON, "-m", "gunicorn", "-c", conf, "--bind", f"127.0.0.1:{port}"]
    return [
        PYTHON,
        os.path.join(ROOT, "StateServer", "manage.py"),
        "runserver",
        f"127.0.0.1:{port}",
        "--noreload",
    ]


class Progress:
    """Prints rank 0's evaluation records as they appear (at most one line per ``every`` s)."""

    def __init__(self, mode_dir: str, label: str, every: float = 2.0) -> None:
        self.mode_dir = mode_dir
        self.label = label
        self.every = every
        self.offset = 0
        self.path: str | None = None
        self.last_acc: float | None = None
        self.last_printed = -float("inf")
        self.pending: dict | None = None
        self.rounds = 0

    def poll(self, final: bool = False) -> None:
        """Read new records; print the newest evaluation when due (always when ``final``)."""
        self._read()
        due = final or time.monotonic() - self.last_printed >= self.every
        if self.pending is not None and due:
            rec, self.pending = self.pending, None
            self.last_printed = time.monotonic()
            print(
                f"[{self.label}] round {rec['round']:>5}  t={rec['time']:7.1f}s  "
                f"test acc {rec['test_acc']:.3f}  loss {rec.get('test_loss', 0):.4f}",
                flush=True,
            )

    def _read(self) -> None:
        if self.path is None:
            found = glob.glob(
                os.path.join(self.mode_dir, socket.gethostname(), "*-rank0", "rounds.jsonl")
            )
            if not found:
                return
            self.path = found[0]
        with open(self.path) as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            self.rounds = rec.get("round", self.rounds)
            if "test_acc" in rec:
                self.last_acc = rec["test_acc"]
                self.pending = rec


def mode_flags(mode: str) -> list[str]:
    """main.py flags of a compare-mode name."""
    if mode == "dcasgd":
        return ["-m", "async", "-dcasgd", "1"]
    return ["-m", mode]


def run_mode(opts: argparse.Namespace, mode: str, forwarded: list[str]) -> None:
    """Run one mode to the end on a fresh cluster; raises LaunchError when a process fails."""
    base_mode = "async" if mode == "dcasgd" else mode
    mode_dir_name = mode + ("-niid" if opts.split_by_class else "")
    mode_dir = os.path.join(opts.log_dir, opts.network, mode_dir_name)
    shutil.rmtree(os.path.join(mode_dir, socket.gethostname()), ignore_errors=True)
    cluster = Cluster(os.path.join(opts.log_dir, "processes", opts.network, mode_dir_name))
    common = [
        *mode_flags(mode),
        "-n",
        opts.network,
        "-ld",
        opts.log_dir,
        "-s",
        str(opts.split_by_class),
        *forwarded,
    ]
    who = (
        "1 worker (standalone)"
        if mode == "local"
        else f"{opts.workers} workers, slowdowns {','.join(f'{s:g}' for s in opts.slowdowns)}"
    )
    print(f"== {mode_dir_name}: {who}; process logs in {cluster.proc_dir}", flush=True)
    try:
        if base_mode == "local":
            cluster.start("local", "local", [PYTHON, "main.py", *common], child_env(opts.threads))
        else:
            start_distributed(opts, cluster, base_mode, common)
        supervise(opts, cluster, Progress(mode_dir, mode_dir_name))
    finally:
        cluster.stop()


def start_distributed(
    opts: argparse.Namespace, cluster: Cluster, mode: str, common: list[str]
) -> None:
    """State Server (esync), scheduler, server and workers."""
    worker_flags = list(common)
    if mode == "esync" and opts.state_server_at:
        host, port = opts.state_server_at
        worker_flags += ["-ip", host, "-port", str(port)]
    elif mode == "esync":
        port = free_port()
        proc = cluster.start(
            "state-server", "state-server", state_server_cmd(opts.state_server, port), child_env(1)
        )
        wait_http(f"http://127.0.0.1:{port}/", proc, timeout=60)
        worker_flags += ["-ip", "127.0.0.1", "-port", str(port)]
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


def describe_failure(proc: Proc) -> str:
    """Which process died, with its rank when a worker printed it, and its last output."""
    tail = proc.tail()
    rank = ""
    for line in tail.splitlines():
        if line.startswith("[worker ") and "/" in line:
            rank = f" (rank {line.split()[1].split('/')[0]})"
    return (
        f"{proc.name}{rank}, pid {proc.popen.pid}, exited with code "
        f"{proc.popen.returncode}; last output from {proc.log_path}:\n{tail}"
    )


def supervise(opts: argparse.Namespace, cluster: Cluster, progress: Progress) -> None:
    """Wait for the workers to finish and the scheduler/server to exit; fail fast on errors."""
    started = time.monotonic()
    trainers = [p for p in cluster.procs if p.role in ("worker", "local")]
    finished_at: float | None = None
    while True:
        time.sleep(0.25)
        progress.poll()
        for p in cluster.procs:
            code = p.popen.poll()
            if code not in (None, 0):
                raise LaunchError(describe_failure(p))
            if code == 0 and p.role == "state-server":
                raise LaunchError(describe_failure(p))
        if all(p.popen.poll() == 0 for p in trainers):
            finished_at = finished_at or time.monotonic()
            ps_roles = [p for p in cluster.procs if p.role in ("scheduler", "server")]
            if all(p.popen.poll() == 0 for p in ps_roles):
                break
            if time.monotonic() - finished_at > 30:
                raise LaunchError(
                    "workers finished but the scheduler/server did not exit within 30 s"
                )
        if opts.timeout and time.monotonic() - started > opts.timeout:
            raise LaunchError(f"the run took longer than --timeout {opts.timeout:g} s")
    progress.poll(final=True)
    acc = "n/a" if progress.last_acc is None else f"{progress.last_acc:.3f}"
    print(
        f"[{progress.label}] finished: {progress.rounds} rounds in "
        f"{time.monotonic() - started:.1f} s, last test acc {acc}",
        flush=True,
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
    p.add_argument("-w", "--workers", type=int, default=4, help="number of workers")
    p.add_argument(
        "--slowdowns",
        default="1",
        help="comma-separated emulated slowdown per worker, e.g. 1,1,4,16",
    )
    p.add_argument("-m", "--mode", choices=("esync", "sync", "async", "local"), default="esync")
    p.add_argument("-dcasgd", "--dcasgd", type=int, choices=(0, 1), default=0)
    p.add_argument(
        "--compare",
        default="",
        help=f"run these modes in turn, then summary, draw and report "
        f"(choices: {','.join(COMPARE_MODES)})",
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
        default="runserver",
        help="how to serve the State Server",
    )
    p.add_argument(
        "--state-server-at",
        dest="state_server_at",
        type=_host_port,
        default=None,
        metavar="HOST:PORT",
        help="esync: use this running State Server instead of starting one",
    )
    p.add_argument(
        "--target",
        type=float,
        default=0.9,
        help="--compare: accuracy for the time-to-accuracy table",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="fail a mode that runs longer than this many seconds (0: no limit)",
    )
    return p


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
    modes = [m.strip() for m in opts.compare.split(",") if m.strip()]
    bad = [m for m in modes if m not in COMPARE_MODES]
    if bad:
        parser.error(
            f"--compare: unknown mode(s) {', '.join(bad)} (choose from {', '.join(COMPARE_MODES)})"
        )
    if not modes:
        modes = ["dcasgd" if opts.mode == "async" and opts.dcasgd else opts.mode]
    opts.modes = modes
    if "--slowdown" in forwarded:
        parser.error("use --slowdowns (one value per worker) with launch.py")
    # main.py validates every forwarded flag before anything starts
    check = subprocess.run(
        [PYTHON, "main.py", *mode_flags(modes[0]), "-n", opts.network, *forwarded, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=child_env(1),
    )
    if check.returncode != 0:
        sys.stderr.write(check.stderr)
        parser.exit(2)
    return opts, forwarded


def report(opts: argparse.Namespace) -> None:
    """summary.py for every mode run, draw.py, then report.md / report.json."""
    import draw
    import report as report_mod
    import summary

    suffix = "-niid" if opts.split_by_class else ""
    for mode in opts.modes:
        path = summary.write_summary(os.path.join(opts.log_dir, opts.network, mode + suffix))
        print(f"summary: {path}")
    for path in draw.draw_all(
        opts.log_dir, opts.network, opts.target, os.path.join(opts.log_dir, opts.network)
    ):
        print(f"figure: {path}")
    # every mode with logs under <log_dir>/<network>/, so an iid and a -s 1 comparison that
    # share a log dir end up in one report
    present = list(summary.load_all(opts.log_dir, opts.network))
    md, js = report_mod.write_report(opts.log_dir, opts.network, present, opts.target)
    print(f"report: {md}\nreport: {js}\n")
    with open(js) as fh:
        print_table(json.load(fh))


def print_table(report: dict) -> None:
    """The headline numbers of report.json, one line per mode."""
    target = report["target"]
    print(
        f"{'mode':<12} {f'to {target:.0%} (s)':>11} {'plateau acc':>11} {'samples/s':>10} "
        f"{'MB/s':>7} {'min compute':>11} {'ESync speedup':>13}"
    )
    for mode, row in report["modes"].items():
        speedup = report["esync_vs"].get(mode, {}).get("speedup_to_target")
        cells = [
            "-" if row["time_to_target_s"] is None else f"{row['time_to_target_s']:.1f}",
            "-" if row.get("plateau_accuracy") is None else f"{row['plateau_accuracy']:.3f}",
            f"{row['samples_per_s']:.0f}",
            f"{row['bytes_per_s'] / 1e6:.1f}",
            "-"
            if row["min_compute_time_ratio"] is None
            else f"{row['min_compute_time_ratio']:.2f}",
            "-" if speedup is None else f"{speedup:.2f}x",
        ]
        print(
            f"{mode:<12} {cells[0]:>11} {cells[1]:>11} {cells[2]:>10} {cells[3]:>7} "
            f"{cells[4]:>11} {cells[5]:>13}"
        )


def main(argv: list[str] | None = None) -> int:
    opts, forwarded = parse(argv)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for mode in opts.modes:
            run_mode(opts, mode, forwarded)
        if opts.compare:
            report(opts)
    except LaunchError as exc:
        print(f"launch: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("launch: interrupted; every process was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
