"""A worker killed on a multi-host cluster started by hand: nothing waits for it forever.

Three emulated hosts (tests/netns.py): A runs the State Server, the scheduler and the parameter
server, B and C two esync workers each, every process started as docs/deployment.md says (no
launcher; the scheduler and the server get the workers' command line, as in the slides). Once
every worker has written a few rounds, one worker on C is killed with SIGKILL; every other
process of the cluster must then exit on its own (trainer/watchdog.py) with a non-zero code,
well within the 150 s allowed, and the scheduler must name the dead worker's rank.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path

import pytest

from launcher import supervision
from launcher.supervision import PYTHON, ROOT
from tests.support import netns

FAILURE_TIMEOUT_S = 20.0
EXIT_LIMIT_S = 150.0  # every survivor must be gone this long after the kill
WORKERS = {"hostB": (1.0, 1.0), "hostC": (1.0, 4.0)}  # slowdowns of the workers per host
ROUNDS_BEFORE_KILL = 3
START_TIMEOUT_S = 150.0

pytestmark = netns.host_marks()
_env = netns.host_env


def _worker_metas(log_dir: Path) -> list[tuple[dict, int]]:
    """(meta.json, number of rounds written) of every worker folder that exists yet."""
    found = []
    for meta_path in sorted(log_dir.glob("lenet/esync/*/*-rank*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue  # being written
        rounds = meta_path.parent / "rounds.jsonl"
        count = len(rounds.read_text().splitlines()) if rounds.exists() else 0
        found.append((meta, count))
    return found


def _wait_for_rounds(procs: netns.Processes, log_dir: Path, workers: int) -> list[dict]:
    """Wait until every worker has written ROUNDS_BEFORE_KILL rounds; their meta.json."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        for p in procs.procs:
            if p.poll() is not None:
                pytest.fail(f"exited before the kill: {p.describe_exit()}")
        metas = _worker_metas(log_dir)
        if len(metas) == workers and all(n >= ROUNDS_BEFORE_KILL for _, n in metas):
            return [meta for meta, _ in metas]
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in procs.procs)
            pytest.fail(f"no {ROUNDS_BEFORE_KILL} rounds on every worker in time\n{tails}")
        time.sleep(0.25)


def _wait_for_exits(procs: list[supervision.Proc], killed_at: float) -> dict[str, float]:
    """Seconds from the kill to each process's exit (only those that exited in time)."""
    exits: dict[str, float] = {}
    while len(exits) < len(procs) and time.monotonic() - killed_at < EXIT_LIMIT_S:
        for p in procs:
            if p.name not in exits and p.poll() is not None:
                exits[p.name] = time.monotonic() - killed_at
        time.sleep(0.1)
    return exits


def _start_cluster(net: netns.Network, procs: netns.Processes, log_dir: Path) -> None:
    """State Server, scheduler and server on A; two workers on B and two on C."""
    a = net.hosts["hostA"]
    port = 10010
    token = {supervision.TOKEN_VAR: secrets.token_urlsafe(16)}  # off loopback: one is needed
    state = procs.start(
        "stateserver",
        "state-server",
        a.wrap(supervision.state_server_cmd("runserver", a.address, port)),
        _env({"ESYNC_ALLOWED_HOSTS": a.address, **token}),
        str(ROOT),
    )
    net.hosts["hostB"].wait_http(f"http://{a.address}:{port}/status.json", state, 60)
    dmlc = {
        "DMLC_PS_ROOT_URI": a.address,
        "DMLC_PS_ROOT_PORT": "9091",
        "DMLC_NUM_SERVER": "1",
        "DMLC_NUM_WORKER": str(sum(len(s) for s in WORKERS.values())),
        "DMLC_INTERFACE": net.nic,
    }
    flags = ["-m", "esync", "-n", "lenet", "-ip", a.address, "-port", str(port)]
    flags += ["-ld", str(log_dir), "--rounds", "100000", "--max-time", "300", "-e", "50"]
    flags += ["--failure-timeout", f"{FAILURE_TIMEOUT_S:g}"]
    main_py = [PYTHON, os.path.join(ROOT, "main.py")]
    for role in ("scheduler", "server"):
        env = _env({**dmlc, "DMLC_ROLE": role})
        procs.start(role, role, a.wrap([*main_py, *flags]), env, str(ROOT))
    n = 0
    for host_name, slowdowns in WORKERS.items():
        for slowdown in slowdowns:
            argv = [*main_py, *flags, "--slowdown", f"{slowdown:g}"]
            env = _env({**dmlc, "DMLC_ROLE": "worker", **token})
            procs.start(f"worker{n}-{host_name}", "worker", net.hosts[host_name].wrap(argv), env)
            n += 1


def test_killed_worker_stops_the_whole_cluster(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    procs = netns.Processes(str(tmp_path / "processes"))
    netns.remove_stale()
    try:
        with netns.Network(["hostA", *WORKERS]) as net:
            _start_cluster(net, procs, log_dir)
            metas = _wait_for_rounds(procs, log_dir, sum(len(s) for s in WORKERS.values()))
            victim_meta = max(
                (m for m in metas if m["host"] == "hostC"), key=lambda m: m["slowdown"]
            )
            rank, pid = victim_meta["rank"], victim_meta["pid"]
            victim = next(p for p in procs.procs if p.pid == pid)  # pid of main.py itself
            survivors = [p for p in procs.procs if p is not victim and p.role != "state-server"]
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            exits = _wait_for_exits(survivors, killed_at)
            state_alive = procs.procs[0].poll() is None
    finally:
        procs.stop_all()
    mine = [n for n in netns.list_netns() if n.startswith(f"{netns.PREFIX}{os.getpid()}-")]
    assert mine == [], f"namespaces left behind: {mine}"
    assert procs.leftovers() == [], "processes left behind"

    report = ", ".join(f"{name} {t:.1f} s" for name, t in sorted(exits.items(), key=lambda x: x[1]))
    print(f"\nkilled {victim.name} (rank {rank}); exits after the kill: {report}")
    tails = "\n".join(f"--- {p.name}: code {p.poll()}\n{p.tail(4)}" for p in survivors)
    assert state_alive, "the State Server died"
    assert sorted(exits) == sorted(p.name for p in survivors), f"still running:\n{tails}"
    for p in survivors:
        assert p.poll() not in (None, 0), f"{p.name} exited with {p.poll()}\n{tails}"
        assert p.poll() == 5, f"{p.name}: not the watchdog's exit code\n{tails}"
    # detection takes two heartbeat stages (scheduler, then everyone else): within the timeout
    # on an idle machine; twice that leaves room for a loaded one
    assert max(exits.values()) < 2 * FAILURE_TIMEOUT_S, report
    scheduler = next(p for p in survivors if p.role == "scheduler").tail(20)
    assert f"FAILURE: worker rank {rank} " in scheduler, scheduler
    assert "--resume" in scheduler
    for p in survivors:
        assert "FAILURE" in p.tail(20), f"{p.name} did not say why it exited\n{tails}"
    named_by_workers = [p.name for p in survivors if f"worker {rank} (" in p.tail(20)]
    print(f"the State Server hint names worker {rank} in: {named_by_workers}")
