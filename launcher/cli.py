"""launch.py's command line: its own flags (the ones it shares with main.py come from
trainer.options.shared_parser), their checks, and ``main`` with its exit codes."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import sys
from collections import Counter
from pathlib import Path

import config
from argtypes import host_port, positive_int, server_count
from launcher import ssh
from launcher.devices import device_unit, parse_slowdowns
from launcher.local import run_mode
from launcher.supervision import ROOT, LaunchError, run_token
from trainer import calibrate, layout, options, registry, sharding


class ExactParser(argparse.ArgumentParser):
    """A parser that takes no single-dash flag for another: argparse (3.11) reads main.py's
    ``-l 0.5`` as this parser's ``-ld 0.5`` by prefix, and ``allow_abbrev=False`` only stops
    that for ``--`` flags. ``-w4`` (a short flag glued to its value) still works."""

    def _get_option_tuples(self, option_string: str) -> list[tuple]:
        found = super()._get_option_tuples(option_string)
        if option_string[1:2] in self.prefix_chars:
            return found  # --long flags: allow_abbrev (off) decides
        return [match for match in found if match[1] == option_string[:2]]


# the launcher's plain number flags: (flag, type, default, help); dest is the flag's name
NUMBERS = (
    (
        "--servers",
        server_count,
        None,
        f"parameter servers; ps-lite shards the keys over them (default {config.SERVERS}, or "
        "with -H the total of the host file's servers=): those the host file does not place run "
        "with the scheduler (docs/deployment.md, 'Several parameter servers')",
    ),
    (
        "--bigarray-bound",
        positive_int,
        None,
        "MXNET_KVSTORE_BIGARRAY_BOUND on every node: an array of this many elements or more is "
        f"split over all servers (MXNet's default {sharding.DEFAULT_BIGARRAY_BOUND:,})",
    ),
    (
        "--dashboard-linger",
        float,
        config.DASHBOARD_LINGER_S,
        "keep the dashboard up this many seconds after a mode finished",
    ),
    (
        "--target",
        float,
        config.TARGET_ACCURACY,
        "--compare: accuracy for the time-to-accuracy table",
    ),
    (
        "--max-restarts",
        int,
        config.MAX_RESTARTS,
        "when a process dies, restart the whole cluster from the newest checkpoint "
        "(main.py --checkpoint-every) up to this many times",
    ),
    (
        "--timeout",
        float,
        config.RUN_TIMEOUT_S,
        "fail a mode that runs longer than this many seconds (0: no limit)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    p = ExactParser(
        description="Run an emulated heterogeneous cluster on this machine. Flags not listed "
        "here are forwarded to every main.py (see python main.py --help).",
        parents=[options.shared_parser()],
        # a forwarded flag is never an abbreviation of one of ours (--max is not --max-restarts)
        allow_abbrev=False,
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
    p.add_argument(
        "--state-server",
        choices=("runserver", "gunicorn"),
        default=config.STATE_SERVER_KIND,
        help="how to serve the State Server",
    )
    p.add_argument(
        "--state-server-at",
        type=host_port,
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
    for flag, kind, default, text in NUMBERS:
        p.add_argument(flag, type=kind, default=default, help=text)
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
        choices=("launcher", "first"),
        default="launcher",
        help="-H: run the State Server, the scheduler and the parameter servers the host file "
        "does not place (servers=) on this machine (default) or on the host file's first host",
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
        default=None,
        metavar="PATH",
        help="-H: this repository's path on the hosts (default: the same as here)",
    )
    g.add_argument(
        "--remote-python",
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
        opts.servers = config.SERVERS if opts.servers is None else opts.servers
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
        opts.hosts = ssh.parse_hostfile(text, opts.hostfile)
    except ssh.HostfileError as exc:
        parser.error(f"-H: bad host file:\n{exc}")
    slots = sum(h.slots for h in opts.hosts)
    if opts.workers is not None and opts.workers != slots:
        parser.error(f"-w {opts.workers}, but {opts.hostfile} has {slots} slots (leave -w out)")
    if slots < 1:
        parser.error(f"-H: {opts.hostfile} has no worker (every line says slots=0)")
    opts.workers = slots
    placed = sum(h.servers for h in opts.hosts)
    if opts.servers is not None and opts.servers < placed:
        parser.error(
            f"--servers {opts.servers}, but {opts.hostfile} places {placed} servers (give at "
            f"least {placed}: the ones beyond the host file's run with the scheduler)"
        )
    if placed > config.MAX_SERVERS:
        parser.error(f"-H: {opts.hostfile} places {placed} servers (at most {config.MAX_SERVERS})")
    opts.servers = max(placed, opts.servers or 0) or config.SERVERS


def place_slowdowns(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """``opts.slowdowns`` (one entry per worker) and, with -H, ``opts.worker_hosts``."""
    given = len([v for v in opts.slowdowns.split(",") if v.strip()])
    try:
        opts.slowdowns = parse_slowdowns(opts.slowdowns, opts.workers)
        if opts.hosts:
            default = opts.slowdowns[:1] if given == 1 else opts.slowdowns
            placed = ssh.assign_slowdowns(opts.hosts, default)
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
    # main.py's own parser checks every forwarded flag here, before anything starts
    options.build_parser().parse_args(["-m", opts.modes[0], "-n", opts.network, *forwarded])
    return opts, forwarded


def make_plan(opts: argparse.Namespace) -> ssh.Plan:
    """Where every process goes. With -H, every host is probed first (at once, one ssh
    command each); ssh.ProbeError lists every problem found, before anything starts."""
    here = ssh.Where()
    if not opts.hosts:
        return ssh.Plan(here, [(here, s) for s in opts.slowdowns], servers=[here] * opts.servers)
    root = opts.remote_root or ROOT
    python = opts.remote_python or f"{root.rstrip('/')}/.venv/bin/python"
    shell = ssh.Ssh(tuple(opts.ssh_options))
    problems, advertise = [], opts.advertise
    if opts.services_on == "launcher" and not advertise:
        try:
            advertise = ssh.local_address(opts.interface)
        except OSError:
            problems.append(
                f"  this machine: no IPv4 address on {opts.interface} to give the workers "
                "(give --advertise ADDR: this machine's address on the cluster network)"
            )
    try:
        found = ssh.probe_hosts([h.host for h in opts.hosts], shell, root, python, opts.interface)
    except ssh.ProbeError as exc:
        problems.append(str(exc))
    if problems:
        raise ssh.ProbeError("\n".join(problems))
    services = found[opts.hosts[0].host] if opts.services_on == "first" else here
    workers = [(found[h], s) for h, s in zip(opts.worker_hosts, opts.slowdowns, strict=True)]
    servers = [found[h.host] for h in opts.hosts for _ in range(h.servers)]
    servers += [services] * (opts.servers - len(servers))  # the rest with the scheduler
    plan = ssh.Plan(services, workers, advertise or services.address, opts.interface, servers)
    warn_if_public(plan.advertise)
    counts = Counter(w.label for w, _ in workers)
    on = Counter(w.label for w in plan.server_places())
    print(
        f"cluster: services on {services.label} at {plan.advertise}; servers on "
        + ", ".join(f"{host} ({n})" for host, n in on.items())
        + "; workers on "
        + ", ".join(f"{host} ({n})" for host, n in counts.items()),
        flush=True,
    )
    return plan


def warn_if_public(address: str) -> None:
    """ps-lite's ports take any connection on every interface and unpickle what they are sent
    (docs/security.md): on a public address, anyone on the internet can run code."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(address).is_global:
            print(
                f"launch: warning: the cluster address {address} is public; MXNet's ps-lite "
                "ports have no authentication (anyone who reaches them can run code on the "
                "hosts): use a private network or a firewall (docs/security.md)",
                file=sys.stderr,
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    opts, forwarded = parse(argv)
    run_token()  # every write to the State Server needs it (docs/security.md)
    try:
        plan = make_plan(opts)
    except ssh.ProbeError as exc:
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
