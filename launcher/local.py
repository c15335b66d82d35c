"""One mode's cluster: the State Server, the ps-lite scheduler and server and the workers,
each where the plan puts it (this machine or, with ``-H``, other hosts: launcher/ssh.py),
supervised to the end and restarted from the newest checkpoint after a failure."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import config
from launcher import ssh
from launcher.console import EvaluationPrinter
from launcher.devices import slowdown_flags
from launcher.supervision import (
    PYTHON,
    TOKEN_VAR,
    Cluster,
    LaunchError,
    start_state_server,
    state_server_cmd,
    state_server_env,
)
from StateServer import security
from trainer import layout, registry, sharding


def run_mode(opts: argparse.Namespace, plan: ssh.Plan, mode: str, forwarded: list[str]) -> None:
    """Run one mode to the end; after a failure, restart the cluster from the newest
    checkpoint up to ``--max-restarts`` times, then raise the LaunchError. The records of
    remote workers are copied back here at the end, whether the run succeeded or failed."""
    spec = registry.get(mode)
    run_dir = layout.mode_dir_name(mode, bool(opts.split_by_class))
    mode_dir = layout.mode_dir(opts.log_dir, opts.network, run_dir)
    if not spec.distributed:  # standalone training runs here, whatever the host file says
        plan = ssh.Plan(ssh.Where(), [])
    if "--resume" not in forwarded:
        start_afresh(mode_dir, plan)
    flags = ["-m", mode, "-n", opts.network, "-ld", opts.log_dir, "-s", str(opts.split_by_class)]
    flags += forwarded
    slowdowns = ",".join(opts.slowdowns)
    servers = len(plan.server_places())
    who = (
        f"{opts.workers} workers, slowdowns {slowdowns}"
        + (f", {servers} parameter servers" if servers > 1 else "")
        if spec.distributed
        else "standalone"
    )
    proc_dir = layout.process_dir(opts.log_dir, opts.network, run_dir)
    print(f"== {run_dir}: {who}; process logs in {proc_dir}", flush=True)
    progress = EvaluationPrinter(str(mode_dir), run_dir, hosts=plan.hostnames())
    started = time.monotonic()
    try:
        run_attempts(ModeRun(opts, plan, spec, progress), proc_dir, flags)
    except LaunchError:
        collect_records(plan, mode_dir)
        raise
    collect_records(plan, mode_dir)
    progress.finished(time.monotonic() - started)


@dataclass
class ModeRun:
    """What every attempt of one mode shares."""

    opts: argparse.Namespace
    plan: ssh.Plan
    spec: registry.ModeSpec
    progress: EvaluationPrinter


def run_attempts(run: ModeRun, proc_dir: Path, flags: list[str]) -> None:
    """The first attempt, then up to ``--max-restarts`` restarts with ``--resume``."""
    limit = run.opts.max_restarts
    for attempt in range(limit + 1):
        if attempt and run.plan is not None:  # ranks may come back on other hosts
            ssh.share_checkpoints(run.plan.worker_hosts(), Path(run.progress.mode_dir))
        try:
            run_cluster(
                run,
                proc_dir / f"restart{attempt}" if attempt else proc_dir,
                flags + (["--resume"] if attempt and "--resume" not in flags else []),
                last=attempt == limit,
            )
            return
        except LaunchError as exc:
            if attempt == limit:
                raise
            if exc.exit_code in config.EXIT_NOT_RETRIED:
                print(
                    f"launch: exit code {exc.exit_code} is not restarted: a restart cannot fix "
                    "it (docs/faults.md)",
                    file=sys.stderr,
                    flush=True,
                )
                raise
            announce_restart(exc, attempt + 1, limit, Path(run.progress.mode_dir), run.plan)


def start_afresh(mode_dir: Path, plan: ssh.Plan | None = None) -> None:
    """Remove the records, the checkpoints and the saved model of an earlier run: this host's,
    the copies of the remote hosts' records here, and the remote hosts' own."""
    hosts = plan.remote_hosts() if plan else []
    for name in [socket.gethostname(), *(w.hostname for w in hosts)]:
        shutil.rmtree(mode_dir / name, ignore_errors=True)
    shutil.rmtree(layout.checkpoint_dir(mode_dir), ignore_errors=True)
    for name in (layout.MODEL_PARAMS, layout.MODEL_INFO):
        (mode_dir / name).unlink(missing_ok=True)
    ssh.clean_records(hosts, mode_dir)


def collect_records(plan: ssh.Plan, mode_dir: Path) -> None:
    """Copy the remote hosts' record folders here; say where rank 0's model stays."""
    hosts = plan.worker_hosts()
    if not hosts:
        return
    print(
        f"launch: copying the records of {', '.join(w.label for w in hosts)} to {mode_dir}",
        flush=True,
    )
    ssh.fetch_records(hosts, mode_dir)
    for where in hosts:
        if any(w.rank == 0 for w in layout.worker_dirs(mode_dir, where.hostname)):
            print(
                f"launch: rank 0 ran on {where.label}: the saved model and the checkpoints' "
                f"parameters stay there, in {where.label}:{where.path(mode_dir)}",
                flush=True,
            )


def announce_restart(
    exc: LaunchError, attempt: int, limit: int, mode_dir: Path, plan: ssh.Plan | None = None
) -> None:
    """What died, and where the restarted cluster continues from."""
    rounds = layout.checkpoint_rounds(layout.checkpoint_dir(mode_dir))
    found = ssh.checkpoint_rounds(plan.worker_hosts(), mode_dir) if plan else None
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


def run_cluster(run: ModeRun, proc_dir: Path, flags: list[str], last: bool = True) -> None:
    """Start the processes of one attempt and supervise them to the end (stopped whatever
    happens, on every host); LaunchError when one fails (``last``: the dashboard hears of it)."""
    opts, plan, spec, progress = run.opts, run.plan, run.spec, run.progress
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
        ssh.stop_leftovers(plan.remote_hosts(), proc_dir)


def linger(opts: argparse.Namespace, cluster: Cluster) -> None:
    """Keep the State Server (and its dashboard with the final state) up a while."""
    if opts.dashboard and opts.dashboard_linger > 0 and cluster.of_role("state-server"):
        print(f"dashboard: stays up {opts.dashboard_linger:g} s more", flush=True)
        time.sleep(opts.dashboard_linger)


def start_trainers(
    opts: argparse.Namespace,
    plan: ssh.Plan,
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


def state_server(opts: argparse.Namespace, plan: ssh.Plan, cluster: Cluster) -> tuple[str, str]:
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
    where.start(cluster, "state-server", "state-server", cmd, state_server_env(opts.workers))
    return plan.advertise, str(free)


def service_flags(
    opts: argparse.Namespace, plan: ssh.Plan, cluster: Cluster, spec: registry.ModeSpec
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
        print(f"dashboard: {dashboard_link(url, host)}", flush=True)
    return flags


def dashboard_link(url: str, host: str) -> str:
    """The dashboard's address; from another machine it needs the run's token, so the link
    carries it (printed once, here: the page then keeps it in a same-site cookie)."""
    token = os.environ.get(TOKEN_VAR)
    if token and not security.is_loopback(host):
        return f"{url}/dashboard/?token={urllib.parse.quote(token, safe='')}"
    return f"{url}/dashboard/"


def report_failure(flags: list[str], run: str, exc: LaunchError) -> None:
    """Tell the dashboard the run failed for good (it is stopped right after)."""
    if "--report-progress" not in flags:
        return
    url = flags[flags.index("--report-progress") + 1]
    body = json.dumps({"msg_type": "run", "run": run, "failed": str(exc)[:500]}).encode()
    headers = {"Content-Type": "application/json", "X-ESync-Token": os.environ.get(TOKEN_VAR, "")}
    request = urllib.request.Request(f"{url}/progress/", body, headers)
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=2).close()


def ps_lite_transport(plan: ssh.Plan) -> dict[str, str]:
    """ps-lite binds its TCP ports on every interface (``tcp://*``, whatever DMLC_INTERFACE
    says) and has no authentication: on one machine it talks over Unix sockets instead
    (``DMLC_LOCAL=1``: ``ipc:///tmp/<port>``), which no other machine reaches."""
    return {} if plan.remote_hosts() else {"DMLC_LOCAL": "1"}


def failure_timeout_flag(flags: list[str]) -> list[str]:
    """The ``--failure-timeout`` among the workers' flags, for the scheduler and the server
    (the one flag they read): every node must judge deaths by the same time-out."""
    found: list[str] = []
    for i, flag in enumerate(flags):
        if flag == "--failure-timeout" and i + 1 < len(flags):
            found = [flag, flags[i + 1]]
        elif flag.startswith("--failure-timeout="):
            found = [flag]
    return found


def server_name(index: int, count: int) -> str:
    """The process name of parameter server ``index`` of ``count``: ``server`` when it is the
    only one (as before there could be several), else ``server0``, ``server1``, ..."""
    return "server" if count == 1 else f"server{index}"


def _remote_name(name: str, where: ssh.Where) -> str:
    return f"{name}-{where.label}" if where.remote else name


def bigarray_bound_env(opts: argparse.Namespace) -> dict[str, str]:
    """MXNet's split bound for every node, always said: ``--bigarray-bound``, else this
    environment's, else MXNet's default. Every worker must place the keys alike
    (trainer/sharding.py), and a remote node does not inherit this environment."""
    bound = getattr(opts, "bigarray_bound", None)
    return {sharding.BOUND_VAR: str(sharding.bound_from() if bound is None else bound)}


def start_distributed(
    opts: argparse.Namespace,
    plan: ssh.Plan,
    cluster: Cluster,
    spec: registry.ModeSpec,
    common: list[str],
) -> None:
    """Scheduler, server and workers, each where the plan puts it (the State Server flags
    are in ``common`` already)."""
    worker_flags = common
    (port,) = plan.services.free_ports(1, plan.advertise)
    servers = plan.server_places()
    dmlc = {
        "DMLC_PS_ROOT_URI": plan.advertise,
        "DMLC_PS_ROOT_PORT": str(port),
        "DMLC_NUM_SERVER": str(len(servers)),
        "DMLC_NUM_WORKER": str(len(plan.workers)),
        **ps_lite_transport(plan),
        **bigarray_bound_env(opts),
    }
    argv = [PYTHON, "main.py", *failure_timeout_flag(common)]
    nodes = [("scheduler", "scheduler", plan.services)]
    nodes += [(server_name(i, len(servers)), "server", w) for i, w in enumerate(servers)]
    for name, role, where in nodes:
        env = {**dmlc, **plan.node_env(where), "DMLC_ROLE": role}
        where.start(cluster, name, role, argv, env)
    for i, (where, slowdown) in enumerate(plan.workers):
        where.start(
            cluster,
            _remote_name(f"worker{i}", where),
            "worker",
            [PYTHON, "main.py", *worker_flags, *slowdown_flags(slowdown)],
            {**dmlc, "DMLC_INTERFACE": plan.interface, "DMLC_ROLE": "worker"},
            opts.threads,
        )
