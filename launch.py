"""Start a whole ESync / SSGD / ASGD cluster with one command, on this machine or over ssh.

    python launch.py -w 4 --slowdowns 1,1,4,16 -m esync -n lenet --rounds 30 -ld logs
    python launch.py --compare esync,sync,async,local -w 4 --slowdowns 1,1,4,16 \\
        --max-time 60 -ld logs
    python launch.py -H hosts.txt --interface eth0 -m esync --rounds 300 -ld logs

It starts a State Server (for the modes that use one), the ps-lite scheduler, one parameter
server and the workers on 127.0.0.1 with free ports, gives each worker its emulated slowdown,
forwards every other flag to main.py, writes each process's output to the run's process
folder (trainer/layout.py), shows rank 0's progress, and stops every process it started
whatever happens (end of run, a failing process, Ctrl-C, a time-out). The processes are
supervised by supervisor.py; the comparison report is report.py's.

With ``-H HOSTFILE`` the workers run on the host file's hosts instead, started over ssh
(remote.py: host file format, probing, the remote command, copying the records back); the
services stay here (or go to the first host with ``--services-on first``). Local and remote
processes go through one code path: ``remote.Where.start``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import config
import remote
from supervisor import (
    PYTHON,
    ROOT,
    Cluster,
    LaunchError,
    child_env,
    start_state_server,
    state_server_cmd,
)
from trainer import calibrate, layout, registry
from trainer.options import add_emulation_arguments
from trainer.records import RecordTail
from trainer.slowdown import Schedule, ScheduleError


def parse_slowdowns(text: str, workers: int) -> list[str]:
    """``1,1,4,16`` -> one emulated device per worker (one entry is used for every worker).

    An entry is a factor ``S``, a schedule ``S0/S1@T1/...`` or the path of a CSV trace (ending
    in ``.csv``); each is checked here, before any process starts.
    """
    entries = [v.strip() for v in text.split(",") if v.strip()]
    if len(entries) == 1:
        entries = entries * workers
    if len(entries) != workers:
        raise argparse.ArgumentTypeError(
            f"--slowdowns has {len(entries)} values for {workers} workers"
        )
    for entry in entries:
        try:
            remote.check_slowdown(entry)
        except ScheduleError as exc:
            raise argparse.ArgumentTypeError(f"--slowdowns: {exc}") from None
    return entries


def schedule_of(entry: str) -> Schedule:
    """The schedule of one ``--slowdowns`` entry (checked by parse_slowdowns)."""
    return Schedule.from_trace(entry) if entry.endswith(".csv") else Schedule.parse(entry)


def probe_device(opts: argparse.Namespace, forwarded: list[str]) -> float:
    """Seconds of one training batch of this network on an idle worker process (main.py
    --probe-device, with the threads and flags the workers get)."""
    argv = [PYTHON, "main.py", "-m", "local", "-n", opts.network, *forwarded, "--probe-device"]
    run = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, env=child_env(opts.threads), timeout=300
    )
    lines = run.stdout.strip().splitlines()
    try:
        return float(json.loads(lines[-1])["probe_s"])
    except (IndexError, KeyError, ValueError):
        raise LaunchError(
            f"the device probe failed (exit code {run.returncode}): "
            f"{(run.stderr or run.stdout).strip()[-800:]}"
        ) from None


def device_unit(opts: argparse.Namespace, forwarded: list[str]) -> list[str]:
    """main.py's emulation flags for every mode of this launch; with device emulation the
    device unit T0, the same for every mode (calibrated here unless --device-unit is given),
    and what it means for this machine. UnitError for a mix that cannot fit."""
    flags = ["--emulation", opts.emulation, "--evaluator", opts.evaluator]
    if opts.emulation != "device":
        return flags
    distributed = any(registry.get(m).distributed for m in opts.modes)
    schedules = [schedule_of(e) for e in opts.slowdowns] if distributed else [Schedule.constant(1)]
    probe_s = probe_device(opts, forwarded) if opts.device_unit is None else float("nan")
    plan = calibrate.plan_unit(
        probe_s, schedules, calibrate.machine_cores(), opts.threads, opts.device_unit
    )
    if opts.device_unit is None:
        print(f"devices: {plan.describe(len(schedules))}", flush=True)
    else:
        print(f"devices: device unit T0 = {plan.unit_s * 1e3:.2f} ms (--device-unit)", flush=True)
    return [*flags, "--device-unit", f"{plan.unit_s:.9g}"]


def slowdown_flags(entry: str) -> list[str]:
    """main.py's flags of one ``--slowdowns`` entry."""
    return ["--slowdown-trace", entry] if entry.endswith(".csv") else ["--slowdown", entry]


class Progress:
    """Prints rank 0's evaluation records as they appear (at most one line per ``every`` s).

    Rank 0's records are looked for in the folders of ``hosts`` (default: this machine); a
    remote rank 0's records are read once they have been copied back, at the end.
    """

    def __init__(
        self, mode_dir: str, label: str, every: float = 2.0, hosts: Sequence[str] = ()
    ) -> None:
        self.mode_dir = mode_dir
        self.label = label
        self.every = every
        self.hosts = list(hosts) or [socket.gethostname()]
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
            rnd, at = rec.get("eval_round", rec["round"]), rec.get("eval_time", rec["time"])
            print(
                f"[{self.label}] round {rnd:>5}  t={at:7.1f}s  "
                f"test acc {rec['test_acc']:.3f}  loss {rec.get('test_loss', 0):.4f}",
                flush=True,
            )

    def _new_records(self) -> list[dict]:
        if self.tail is None:
            rank0 = [
                w for h in self.hosts for w in layout.worker_dirs(self.mode_dir, h) if not w.rank
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


def run_mode(opts: argparse.Namespace, plan: remote.Plan, mode: str, forwarded: list[str]) -> None:
    """Run one mode to the end; after a failure, restart the cluster from the newest
    checkpoint up to ``--max-restarts`` times, then raise the LaunchError. The records of
    remote workers are copied back here at the end, whether the run succeeded or failed."""
    spec = registry.get(mode)
    run_dir = layout.mode_dir_name(mode, bool(opts.split_by_class))
    mode_dir = layout.mode_dir(opts.log_dir, opts.network, run_dir)
    if not spec.distributed:  # standalone training runs here, whatever the host file says
        plan = remote.Plan(remote.Where(), [])
    if "--resume" not in forwarded:
        start_afresh(mode_dir, plan)
    flags = ["-m", mode, "-n", opts.network, "-ld", opts.log_dir, "-s", str(opts.split_by_class)]
    flags += forwarded
    slowdowns = ",".join(opts.slowdowns)
    who = f"{opts.workers} workers, slowdowns {slowdowns}" if spec.distributed else "standalone"
    proc_dir = layout.process_dir(opts.log_dir, opts.network, run_dir)
    print(f"== {run_dir}: {who}; process logs in {proc_dir}", flush=True)
    progress = Progress(str(mode_dir), run_dir, hosts=plan.hostnames())
    started = time.monotonic()
    try:
        run_attempts(opts, plan, spec, proc_dir, flags, progress)
    except LaunchError:
        collect_records(plan, mode_dir)
        raise
    collect_records(plan, mode_dir)
    progress.finished(time.monotonic() - started)


def run_attempts(
    opts: argparse.Namespace,
    plan: remote.Plan,
    spec: registry.ModeSpec,
    proc_dir: Path,
    flags: list[str],
    progress: Progress,
) -> None:
    """The first attempt, then up to ``--max-restarts`` restarts with ``--resume``."""
    mode_dir = Path(progress.mode_dir)
    for attempt in range(opts.max_restarts + 1):
        try:
            run_cluster(
                opts,
                plan,
                spec,
                proc_dir / f"restart{attempt}" if attempt else proc_dir,
                flags + (["--resume"] if attempt and "--resume" not in flags else []),
                progress,
                last=attempt == opts.max_restarts,
            )
            return
        except LaunchError as exc:
            if attempt == opts.max_restarts:
                raise
            announce_restart(exc, attempt + 1, opts.max_restarts, mode_dir, plan)


def start_afresh(mode_dir: Path, plan: remote.Plan | None = None) -> None:
    """Remove the records, the checkpoints and the saved model of an earlier run: this host's,
    the copies of the remote hosts' records here, and the remote hosts' own."""
    hosts = plan.remote_hosts() if plan else []
    for name in [socket.gethostname(), *(w.hostname for w in hosts)]:
        shutil.rmtree(mode_dir / name, ignore_errors=True)
    shutil.rmtree(layout.checkpoint_dir(mode_dir), ignore_errors=True)
    for name in (layout.MODEL_PARAMS, layout.MODEL_INFO):
        (mode_dir / name).unlink(missing_ok=True)
    remote.clean_records(hosts, mode_dir)


def collect_records(plan: remote.Plan, mode_dir: Path) -> None:
    """Copy the remote hosts' record folders here; say where rank 0's model stays."""
    hosts = plan.remote_hosts()
    if not hosts:
        return
    print(
        f"launch: copying the records of {', '.join(w.label for w in hosts)} to {mode_dir}",
        flush=True,
    )
    remote.fetch_records(hosts, mode_dir)
    for where in hosts:
        if any(w.rank == 0 for w in layout.worker_dirs(mode_dir, where.hostname)):
            print(
                f"launch: rank 0 ran on {where.label}: the saved model and the checkpoints' "
                f"parameters stay there, in {where.label}:{where.path(mode_dir)}",
                flush=True,
            )


def announce_restart(
    exc: LaunchError, attempt: int, limit: int, mode_dir: Path, plan: remote.Plan | None = None
) -> None:
    """What died, and where the restarted cluster continues from."""
    rounds = layout.checkpoint_rounds(layout.checkpoint_dir(mode_dir))
    found = remote.checkpoint_rounds(plan.remote_hosts(), mode_dir) if plan else None
    if rounds and (found is None or rounds[-1] >= found[1]):
        source = f"the checkpoint after round {rounds[-1]} in {layout.checkpoint_dir(mode_dir)}"
    elif found:
        source = f"the checkpoint after round {found[1]} on {found[0]}"
    else:
        source = "the start (no checkpoint yet)"
    print(
        f"launch: {exc}\nlaunch: restart {attempt} of {limit}: the whole cluster, from {source}",
        file=sys.stderr,
        flush=True,
    )


def run_cluster(
    opts: argparse.Namespace,
    plan: remote.Plan,
    spec: registry.ModeSpec,
    proc_dir: Path,
    flags: list[str],
    progress: Progress,
    last: bool = True,
) -> None:
    """Start the processes of one attempt and supervise them to the end (stopped whatever
    happens, on every host); LaunchError when one fails (``last``: the dashboard hears of it)."""
    cluster = Cluster(proc_dir)
    try:
        with cluster:
            flags = flags + service_flags(opts, plan, cluster, spec)
            try:
                start_trainers(opts, plan, cluster, spec, flags)
                cluster.wait_trainers(
                    ("worker", "local"),
                    ("scheduler", "server"),
                    timeout=opts.timeout,
                    grace=config.PS_EXIT_GRACE_S,
                    on_tick=progress.poll,
                    restart_roles=("state-server",),
                )
                linger(opts, cluster)
            except LaunchError as exc:
                if last:
                    report_failure(flags, f"{opts.network}/{progress.label}", exc)
                raise
    finally:  # the ssh clients are gone: kill what a hang-up did not end on the hosts
        remote.stop_leftovers(plan.remote_hosts(), proc_dir)


def linger(opts: argparse.Namespace, cluster: Cluster) -> None:
    """Keep the State Server (and its dashboard with the final state) up a while."""
    if opts.dashboard and opts.dashboard_linger > 0 and cluster.of_role("state-server"):
        print(f"dashboard: stays up {opts.dashboard_linger:g} s more", flush=True)
        time.sleep(opts.dashboard_linger)


def start_trainers(
    opts: argparse.Namespace,
    plan: remote.Plan,
    cluster: Cluster,
    spec: registry.ModeSpec,
    flags: list[str],
) -> None:
    """The standalone trainer, or the MXNet cluster."""
    if spec.distributed:
        start_distributed(opts, plan, cluster, spec, flags)
    else:
        argv = [PYTHON, "main.py", *flags]
        plan.services.start(cluster, "local", "local", argv, {}, opts.threads)


def state_server(opts: argparse.Namespace, plan: remote.Plan, cluster: Cluster) -> tuple[str, str]:
    """(host, port) of the State Server the workers use: the given one or a new one (on the
    services' host, at the advertised address)."""
    if opts.state_server_at:
        host, port = opts.state_server_at
        return host, str(port)
    where = plan.services
    if not where.remote:
        _, url = start_state_server(
            cluster, opts.state_server, host=plan.advertise, workers=opts.workers
        )
        host, _, port = url.removeprefix("http://").rpartition(":")
        return host, port
    # remote: not waited for here (this machine may not reach the cluster network); the
    # workers retry it for --state-retry seconds
    (free,) = where.free_ports(1, plan.advertise)
    cmd = state_server_cmd(opts.state_server, plan.advertise, free, opts.workers)
    where.start(cluster, "state-server", "state-server", cmd, {})
    return plan.advertise, str(free)


def service_flags(
    opts: argparse.Namespace, plan: remote.Plan, cluster: Cluster, spec: registry.ModeSpec
) -> list[str]:
    """main.py flags that point the trainers at the State Server: its address for the modes
    that ask it (Alg. 2), and its dashboard for every mode (unless --dashboard 0)."""
    if not (spec.state_server or opts.dashboard):
        return []
    host, port = state_server(opts, plan, cluster)
    flags = ["-ip", host, "-port", port] if spec.state_server else []
    if opts.dashboard:
        url = f"http://{host}:{port}"
        flags += ["--report-progress", url]
        print(f"dashboard: {url}/dashboard/", flush=True)
    return flags


def report_failure(flags: list[str], run: str, exc: LaunchError) -> None:
    """Tell the dashboard the run failed for good (it is stopped right after)."""
    if "--report-progress" not in flags:
        return
    url = flags[flags.index("--report-progress") + 1]
    body = json.dumps({"msg_type": "run", "run": run, "failed": str(exc)[:500]}).encode()
    request = urllib.request.Request(f"{url}/progress/", body, {"Content-Type": "application/json"})
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=2).close()


def start_distributed(
    opts: argparse.Namespace,
    plan: remote.Plan,
    cluster: Cluster,
    spec: registry.ModeSpec,
    common: list[str],
) -> None:
    """Scheduler, server and workers, each where the plan puts it (the State Server flags
    are in ``common`` already)."""
    worker_flags = common
    (port,) = plan.services.free_ports(1, plan.advertise)
    dmlc = {
        "DMLC_PS_ROOT_URI": plan.advertise,
        "DMLC_PS_ROOT_PORT": str(port),
        "DMLC_NUM_SERVER": "1",
        "DMLC_NUM_WORKER": str(len(plan.workers)),
    }
    for role in ("scheduler", "server"):
        env = {**dmlc, **plan.services_env(), "DMLC_ROLE": role}
        plan.services.start(cluster, role, role, [PYTHON, "main.py"], env)
    for i, (where, slowdown) in enumerate(plan.workers):
        where.start(
            cluster,
            f"worker{i}-{where.label}" if where.remote else f"worker{i}",
            "worker",
            [PYTHON, "main.py", *worker_flags, *slowdown_flags(slowdown)],
            {**dmlc, "DMLC_INTERFACE": plan.interface, "DMLC_ROLE": "worker"},
            opts.threads,
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
    p.add_argument(
        "-w",
        "--workers",
        type=int,
        default=None,
        help=f"number of workers (default {config.WORKERS}; with -H the host file's slots)",
    )
    p.add_argument(
        "--slowdowns",
        default=config.SLOWDOWNS,
        help="comma-separated emulated device per worker: a factor (1,1,4,16), a schedule "
        "S0/S1@T1/... (1/16@30 turns a fast device 16x slower after 30 s), or a CSV trace file",
    )
    registry.add_mode_arguments(p, config.LAUNCH_MODE)
    p.add_argument(
        "--compare",
        default="",
        help=f"run these modes in turn, then summary, draw and report "
        f"(choices: {','.join(registry.names())}; or {', '.join(registry.GROUPS)})",
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
        "--dashboard",
        type=int,
        choices=(0, 1),
        default=config.LAUNCH_DASHBOARD,
        help="1: start a State Server for every mode and have every worker report its "
        "progress to its live dashboard (printed as dashboard: URL)",
    )
    p.add_argument(
        "--dashboard-linger",
        dest="dashboard_linger",
        type=float,
        default=config.DASHBOARD_LINGER_S,
        help="keep the dashboard up this many seconds after a mode finished",
    )
    p.add_argument(
        "--target",
        type=float,
        default=config.TARGET_ACCURACY,
        help="--compare: accuracy for the time-to-accuracy table",
    )
    p.add_argument(
        "--max-restarts",
        dest="max_restarts",
        type=int,
        default=config.MAX_RESTARTS,
        help="when a process dies, restart the whole cluster from the newest checkpoint "
        "(main.py --checkpoint-every) up to this many times",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=config.RUN_TIMEOUT_S,
        help="fail a mode that runs longer than this many seconds (0: no limit)",
    )
    add_emulation_arguments(p)
    add_ssh_arguments(p)
    return p


def add_ssh_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of a cluster started over ssh (``-H``; docs/deployment.md)."""
    g = p.add_argument_group("other hosts, over ssh")
    g.add_argument(
        "-H",
        "--hostfile",
        default=None,
        metavar="FILE",
        help="start the workers on the hosts of FILE over ssh: one line per host, "
        "'host [slots=N] [slowdown=S[,S...]]' (# comments); -w is the total of the slots",
    )
    g.add_argument(
        "--interface",
        default=None,
        help="-H: the cluster network's interface on every host (DMLC_INTERFACE), e.g. eth0",
    )
    g.add_argument(
        "--services-on",
        dest="services_on",
        choices=("launcher", "first"),
        default="launcher",
        help="-H: run the State Server, the scheduler and the parameter server on this machine "
        "(default) or on the host file's first host",
    )
    g.add_argument(
        "--advertise",
        default=None,
        metavar="ADDR",
        help="-H: the services' address the workers connect to (default: the address of "
        "--interface on the services' host)",
    )
    g.add_argument(
        "--ssh-option",
        dest="ssh_options",
        action="append",
        default=[],
        metavar="OPTION",
        help="-H: an extra ssh -o option, e.g. IdentityFile=~/.ssh/cluster (repeatable; "
        "BatchMode=yes always; ~/.ssh/config applies)",
    )
    g.add_argument(
        "--remote-root",
        dest="remote_root",
        default=None,
        metavar="PATH",
        help="-H: this repository's path on the hosts (default: the same as here)",
    )
    g.add_argument(
        "--remote-python",
        dest="remote_python",
        default=None,
        metavar="PATH",
        help="-H: python on the hosts (default: <remote-root>/.venv/bin/python)",
    )


def read_hostfile(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """``opts.hosts`` (the host file's lines, or None without -H) and ``opts.workers``."""
    opts.hosts = None
    if not opts.hostfile:
        given = [
            flag
            for flag, value in (
                ("--interface", opts.interface),
                ("--services-on", opts.services_on != "launcher"),
                ("--advertise", opts.advertise),
                ("--ssh-option", opts.ssh_options),
                ("--remote-root", opts.remote_root),
                ("--remote-python", opts.remote_python),
            )
            if value
        ]
        if given:
            parser.error(f"{', '.join(given)}: only with -H HOSTFILE")
        opts.workers = config.WORKERS if opts.workers is None else opts.workers
        return
    if not opts.interface:
        parser.error(
            "-H needs --interface: the cluster network's interface on the hosts, e.g. eth0"
        )
    try:
        text = Path(opts.hostfile).read_text()
    except OSError as exc:
        parser.error(f"-H: cannot read {opts.hostfile}: {exc.strerror}")
    try:
        opts.hosts = remote.parse_hostfile(text, opts.hostfile)
    except remote.HostfileError as exc:
        parser.error(f"-H: bad host file:\n{exc}")
    slots = sum(h.slots for h in opts.hosts)
    if opts.workers is not None and opts.workers != slots:
        parser.error(f"-w {opts.workers}, but {opts.hostfile} has {slots} slots (leave -w out)")
    opts.workers = slots


def place_slowdowns(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """``opts.slowdowns`` (one entry per worker) and, with -H, ``opts.worker_hosts``."""
    given = len([v for v in opts.slowdowns.split(",") if v.strip()])
    try:
        opts.slowdowns = parse_slowdowns(opts.slowdowns, opts.workers)
        if opts.hosts:
            default = opts.slowdowns[:1] if given == 1 else opts.slowdowns
            placed = remote.assign_slowdowns(opts.hosts, default)
            opts.worker_hosts = [host for host, _ in placed]
            opts.slowdowns = [entry for _, entry in placed]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))


def compare_modes(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The mode names of ``--compare`` (argparse error naming the unknown ones)."""
    try:
        return registry.select(text)
    except registry.UnknownModeError as exc:
        parser.error(f"--compare: {exc}")


BUDGET_FLAGS = ("--max-time", "--rounds", "-e", "--eval-duration", "--eval-interval")


def fair_compare_flags(forwarded: list[str]) -> tuple[list[str], str]:
    """``--compare`` without budget flags: the same training time for every mode and
    time-based evaluation (round-based evaluation hides when a mode with long rounds reaches
    the target, and a round budget stops ASGD's fast workers early)."""
    given = [f for f in forwarded if f.split("=")[0] in BUDGET_FLAGS]
    if given:
        return forwarded, f"budget and evaluation as given on the command line ({' '.join(given)})"
    fair = [
        *("--max-time", f"{config.COMPARE_SECONDS:g}", "--rounds", str(config.COMPARE_ROUNDS)),
        *("-e", "0", "--eval-interval", f"{config.COMPARE_EVAL_INTERVAL_S:g}"),
    ]
    note = (
        f"every mode trains for {config.COMPARE_SECONDS:g} s and is evaluated every "
        f"{config.COMPARE_EVAL_INTERVAL_S:g} s of training (set --max-time, --rounds, -e or "
        "--eval-interval to choose otherwise)"
    )
    return [*fair, *forwarded], note


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Launcher options, and the flags to forward to main.py."""
    parser = build_parser()
    opts, forwarded = parser.parse_known_args(argv)
    read_hostfile(parser, opts)
    if opts.workers < 1:
        parser.error("-w must be >= 1")
    if opts.max_restarts < 0:
        parser.error(f"--max-restarts must be >= 0, got {opts.max_restarts}")
    place_slowdowns(parser, opts)
    registry.resolve_mode(parser, opts)
    opts.modes = compare_modes(parser, opts.compare) or [opts.mode]
    if opts.compare:
        forwarded, opts.budget = fair_compare_flags(forwarded)
        print(f"compare: {opts.budget}", flush=True)
    if "--slowdown" in forwarded or "--slowdown-trace" in forwarded:
        parser.error("use --slowdowns (one entry per worker) with launch.py")
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


def make_plan(opts: argparse.Namespace) -> remote.Plan:
    """Where every process goes. With -H, every host is probed first (at once, one ssh
    command each); remote.ProbeError lists every problem found, before anything starts."""
    here = remote.Where()
    if not opts.hosts:
        return remote.Plan(here, [(here, s) for s in opts.slowdowns])
    root = opts.remote_root or ROOT
    python = opts.remote_python or f"{root.rstrip('/')}/.venv/bin/python"
    ssh = remote.Ssh(tuple(opts.ssh_options))
    problems, advertise = [], opts.advertise
    if opts.services_on == "launcher" and not advertise:
        try:
            advertise = remote.local_address(opts.interface)
        except OSError:
            problems.append(
                f"  this machine: no IPv4 address on {opts.interface} to give the workers "
                "(give --advertise ADDR: this machine's address on the cluster network)"
            )
    try:
        found = remote.probe_hosts([h.host for h in opts.hosts], ssh, root, python, opts.interface)
    except remote.ProbeError as exc:
        problems.append(str(exc))
    if problems:
        raise remote.ProbeError("\n".join(problems))
    services = found[opts.hosts[0].host] if opts.services_on == "first" else here
    workers = [(found[h], s) for h, s in zip(opts.worker_hosts, opts.slowdowns, strict=True)]
    plan = remote.Plan(services, workers, advertise or services.address, opts.interface)
    counts = Counter(w.label for w, _ in workers)
    print(
        f"cluster: services on {services.label} at {plan.advertise}; workers on "
        + ", ".join(f"{host} ({n})" for host, n in counts.items()),
        flush=True,
    )
    return plan


def main(argv: list[str] | None = None) -> int:
    opts, forwarded = parse(argv)
    try:
        plan = make_plan(opts)
    except remote.ProbeError as exc:
        print(f"launch: cannot start the cluster (nothing was started):\n{exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        forwarded = forwarded + device_unit(opts, forwarded)
    except calibrate.UnitError as exc:
        print(f"launch: cannot emulate these devices (nothing was started): {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"launch: FAILED: {exc}", file=sys.stderr)
        return 1
    try:
        for mode in opts.modes:
            run_mode(opts, plan, mode, forwarded)
        if opts.compare:
            import report

            run_dirs = [layout.mode_dir_name(m, bool(opts.split_by_class)) for m in opts.modes]
            print(f"compare: {opts.budget}", flush=True)
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
