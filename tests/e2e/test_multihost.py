"""ESync across emulated hosts: network namespaces joined by a bridge (tests/netns.py).

Both tests start every process with the commands of docker-compose.yml (and the image's
entrypoint flags from the Dockerfile), run inside the namespaces as root, and check that every
process exits 0, that all workers agree on the final parameters, and that the records land in
one folder per host as on a real cluster. Traffic goes only to the namespaces' own addresses.

* ``test_esync_on_three_emulated_hosts``: the brief's topology. Host A runs the State Server,
  the scheduler and the parameter server; hosts B and C run two workers each with different
  slowdowns; ``DMLC_PS_ROOT_URI`` is A's address and ``DMLC_INTERFACE`` the namespace's NIC.
  The compose file's worker flags are used with the values that differ here replaced (State
  Server address, log folder, rounds, evaluation interval, slowdown).
* ``test_compose_file_on_emulated_hosts``: ``docker compose up`` without Docker: one host per
  compose service, named like it and resolving the other services' names, NIC ``eth0``, and
  each service's environment and command verbatim (only the log folder and the number of
  rounds are changed, and ``${ESYNC_TOKEN:-}`` is filled in).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import summary
from launcher.supervision import PYTHON
from tests.support import netns
from tests.support.deploy_files import (
    ROOT,
    dockerfile_entrypoint,
    flag_value,
    load_compose,
    services_by_role,
    state_server_command,
    with_flags,
)

ROUNDS = 5
WORKERS = {"hostB": (1.0, 1.0), "hostC": (4.0, 8.0)}  # slowdowns of the workers per host
TIMEOUT_S = 150.0  # for one whole run; each takes ~6-15 s on 2 cores

pytestmark = netns.host_marks()
_env = netns.host_env


def _interpolate(env: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, str]:
    """Compose's ``${VAR:-default}`` / ``${VAR:?message}`` / ``${VAR}`` substitution, from
    ``values``; a ``:?`` variable without a value fails as compose does."""

    def sub(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if values.get(name):
            return values[name]
        if operator == ":?":
            raise ValueError(f"compose refuses to start: ${{{name}}} is unset ({argument})")
        return argument or ""

    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}")
    return {k: pattern.sub(sub, str(v)) for k, v in env.items()}


def _main_py() -> list[str]:
    """The image's entrypoint (``python main.py -dd /app/data``) for this checkout."""
    entry, _ = dockerfile_entrypoint()
    return [PYTHON, *with_flags(entry[1:], {"-dd": str(ROOT / "data")})]


def _nic_bytes(host: netns.Host, nic: str) -> tuple[int, int]:
    """(rx, tx) byte counters of the host's cluster interface."""
    out = subprocess.run(
        ["ip", "-n", host.netns, "-s", "-j", "link", "show", "dev", nic],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["rx"]["bytes"], stats["tx"]["bytes"]


def _supervise(procs: netns.Processes, deadline: float) -> None:
    """Wait until every process but the State Server has exited; fail at once on an error."""
    while True:
        codes = {p.name: p.poll() for p in procs.procs}
        failed = [p for p in procs.procs if codes[p.name] not in (None, 0)]
        if failed:
            pytest.fail(failed[0].describe_exit())
        if all(code == 0 for name, code in codes.items() if name != "stateserver"):
            return
        if time.monotonic() > deadline:
            alive = [name for name, code in codes.items() if code is None]
            tails = "\n".join(f"--- {p.name}\n{p.tail(10)}" for p in procs.procs)
            pytest.fail(f"still running after {TIMEOUT_S:.0f} s: {alive}\n{tails}")
        time.sleep(0.25)


def _assert_clean(procs: netns.Processes) -> None:
    """Every namespace and every process of this test is gone."""
    mine = [n for n in netns.list_netns() if n.startswith(f"{netns.PREFIX}{os.getpid()}-")]
    assert mine == [], f"namespaces left behind: {mine}"
    assert procs.leftovers() == [], "processes left behind"


Worker = tuple[dict[str, Any], list[dict[str, Any]]]


def _check_records(
    mode_dir: Path, expected: Mapping[str, Sequence[float]], rounds: int
) -> list[Worker]:
    """One folder per worker, in its host's folder, all rounds, equal checksums every round."""
    workers: list[Worker] = []
    for folder in sorted(mode_dir.glob("*/*-rank*")):
        meta = json.loads((folder / "meta.json").read_text())
        lines = (folder / "rounds.jsonl").read_text().splitlines()
        workers.append((meta, [json.loads(line) for line in lines if line.strip()]))
    num_workers = sum(len(s) for s in expected.values())
    assert len(workers) == num_workers, f"worker folders: {sorted(mode_dir.glob('*/*'))}"
    by_host: dict[str, list[float]] = {}
    for meta, _ in workers:
        by_host.setdefault(meta["host"], []).append(meta["slowdown"])
        assert meta["num_workers"] == num_workers
    assert {h: sorted(s) for h, s in by_host.items()} == {h: sorted(s) for h, s in expected.items()}
    assert sorted(meta["rank"] for meta, _ in workers) == list(range(num_workers))
    checksums: dict[int, set[str]] = {}  # round -> checksums of the workers
    for meta, records in workers:
        assert [r["round"] for r in records] == list(range(1, rounds + 1)), meta
        for r in records:
            checksums.setdefault(r["round"], set()).add(r["checksum"])
    differ = {n: sums for n, sums in checksums.items() if len(sums) != 1}
    assert not differ, f"workers disagree on the parameters after rounds {sorted(differ)}: {differ}"
    rank0 = next(records for meta, records in workers if meta["rank"] == 0)
    assert "test_acc" in rank0[-1] and 0.0 <= rank0[-1]["test_acc"] <= 1.0
    # Alg. 2 at work across hosts: the unslowed workers get extra local iterations while
    # they wait for the slowest (which syncs after one batch once every c is known)
    iterations: dict[float, list[int]] = {}
    for meta, records in workers:
        iterations.setdefault(meta["slowdown"], []).append(
            sum(r["local_iterations"] for r in records)
        )
    assert min(iterations[min(iterations)]) > max(iterations[max(iterations)]), iterations
    # the tree is what summary.py expects when the logs of several hosts are collected
    assert summary.summarize(mode_dir)["num_workers"] == num_workers
    return workers


def _assert_traffic_crossed_nics(
    workers: list[Worker], traffic: Mapping[str, tuple[int, int]]
) -> None:
    """Each worker host's NIC carried at least the bytes its workers pushed and pulled."""
    for host_name, (rx, tx) in traffic.items():
        records = [r for meta, recs in workers if meta["host"] == host_name for r in recs]
        pushed = sum(r["bytes_pushed"] for r in records)
        pulled = sum(r["bytes_pulled"] for r in records)
        assert pushed > 0 and pulled > 0, host_name
        assert tx >= pushed and rx >= pulled, (host_name, rx, tx, pushed, pulled)


def _deployment(tmp_path: Path) -> tuple[dict, dict, list[str], str, Path]:
    """The compose services, their roles, the image's main.py, a fresh token, the log dir."""
    compose = load_compose()
    token = secrets.token_hex(16)
    return compose["services"], services_by_role(compose), _main_py(), token, tmp_path / "logs"


def _start_state_server_on(
    a: netns.Host,
    prober: netns.Host,
    procs: netns.Processes,
    services: dict[str, Any],
    token: str,
) -> tuple[Any, int]:
    """The State Server on host ``a`` with docker-compose.yml's command, probed from another
    host (so the route between namespaces is checked too): (its process, its port)."""
    state_cmd = state_server_command()
    port = int(state_cmd[4].rsplit(":", 1)[1])
    state_env = _interpolate(services["stateserver"]["environment"], {"ESYNC_TOKEN": token})
    state_env["ESYNC_ALLOWED_HOSTS"] = a.address
    state = procs.start(
        "stateserver", "state-server", a.wrap([PYTHON, *state_cmd[1:]]), _env(state_env), str(ROOT)
    )
    prober.wait_http(f"http://{a.address}:{port}/status.json", state, 60)
    return state, port


def _start_workers_on_hosts(
    procs: netns.Processes, net: netns.Network, worker_argv: list[str], env: dict[str, str]
) -> None:
    """:data:`WORKERS`' workers on their hosts: ``worker_argv`` (main.py and compose's worker
    flags) with this test's rounds and each worker's slowdown."""
    n = 0
    for host_name, slowdowns in WORKERS.items():
        for slowdown in slowdowns:
            flags = {"--rounds": str(ROUNDS), "-e": str(ROUNDS), "--slowdown": f"{slowdown:g}"}
            argv = net.hosts[host_name].wrap(with_flags(worker_argv, flags))
            procs.start(f"worker{n}-{host_name}", "worker", argv, env, str(ROOT))
            n += 1


def test_esync_on_three_emulated_hosts(tmp_path: Path) -> None:
    services, roles, main_py, token, log_dir = _deployment(tmp_path)
    num_workers = sum(len(s) for s in WORKERS.values())
    procs = netns.Processes(str(tmp_path / "processes"))
    netns.remove_stale()
    started = time.monotonic()
    try:
        with netns.Network(["hostA", *WORKERS]) as net:
            a = net.hosts["hostA"]

            def dmlc_env(service: str) -> dict[str, str]:
                env = _interpolate(services[service]["environment"], {"ESYNC_TOKEN": token})
                env.update(
                    DMLC_PS_ROOT_URI=a.address,
                    DMLC_INTERFACE=net.nic,
                    DMLC_NUM_WORKER=str(num_workers),
                )
                return env

            # 1. the State Server on A, with docker-compose.yml's command
            state, port = _start_state_server_on(a, net.hosts["hostB"], procs, services, token)

            # 2. and 3. the scheduler and the parameter server on A
            for role in ("scheduler", "server"):
                service = roles[role][0]
                procs.start(
                    role,
                    role,
                    a.wrap([*main_py, *services[service]["command"]]),
                    _env(dmlc_env(service)),
                    str(ROOT),
                )

            # 4. two workers on B and two on C, with compose's worker flags
            worker = roles["worker"][0]
            flags = with_flags(
                services[worker]["command"],
                {"-ip": a.address, "-port": str(port), "-ld": str(log_dir)},
            )
            _start_workers_on_hosts(procs, net, [*main_py, *flags], _env(dmlc_env(worker)))

            _supervise(procs, started + TIMEOUT_S)
            assert state.poll() is None, f"the State Server died: {state.describe_exit()}"
            traffic = {name: _nic_bytes(net.hosts[name], net.nic) for name in WORKERS}
    finally:
        procs.stop_all()
    elapsed = time.monotonic() - started
    _assert_clean(procs)

    mode_dir = log_dir / "lenet" / flag_value(services[worker]["command"], "-m")
    workers = _check_records(mode_dir, WORKERS, ROUNDS)
    _assert_traffic_crossed_nics(workers, traffic)
    print(
        f"\nmulti-host esync: {num_workers} workers on {len(WORKERS)} hosts, {ROUNDS} rounds, "
        f"{elapsed:.1f} s including setup and teardown"
    )


def _host_of(net: netns.Network, services: dict[str, Any]) -> Callable[[str], netns.Host]:
    """The emulated host a compose service runs on (its ``hostname``)."""
    return lambda service: net.hosts[services[service]["hostname"]]


def _start_compose_services(
    procs: netns.Processes,
    net: netns.Network,
    services: dict[str, Any],
    roles: dict[str, list[str]],
    run: tuple[list[str], str, Path, int],
) -> tuple[Any, list[str]]:
    """Start every compose service on its host, the State Server first (and wait for it):
    (the State Server's process, the first worker's flags). ``run`` is (main.py's argv, the
    token, the log folder, the rounds)."""
    main_py, token, log_dir, rounds = run
    host_of = _host_of(net, services)

    def env_of(service: str) -> dict[str, str]:
        return _env(_interpolate(services[service]["environment"], {"ESYNC_TOKEN": token}))

    def role_of(service: str) -> str:
        return services[service]["environment"].get("DMLC_ROLE", "state-server")

    state_cmd = state_server_command()
    state = procs.start(
        "stateserver",
        "state-server",
        host_of("stateserver").wrap([PYTHON, *state_cmd[1:]]),
        env_of("stateserver"),
        str(ROOT),
    )
    worker_flags = services[roles["worker"][0]]["command"]
    url = (
        f"http://{flag_value(worker_flags, '-ip')}:{flag_value(worker_flags, '-port')}/status.json"
    )
    host_of(roles["worker"][0]).wait_http(url, state, timeout=60)
    for service in roles["scheduler"] + roles["server"]:
        procs.start(
            service,
            role_of(service),
            host_of(service).wrap([*main_py, *services[service]["command"]]),
            env_of(service),
            str(ROOT),
        )
    for service in roles["worker"]:
        flags = with_flags(
            services[service]["command"], {"-ld": str(log_dir), "--rounds": str(rounds)}
        )
        argv = host_of(service).wrap([*main_py, *flags])
        procs.start(service, "worker", argv, env_of(service), str(ROOT))
    return state, worker_flags


def test_compose_file_on_emulated_hosts(tmp_path: Path) -> None:
    services, roles, main_py, token, log_dir = _deployment(tmp_path)
    rounds = 3 * ROUNDS
    procs = netns.Processes(str(tmp_path / "processes"))
    netns.remove_stale()
    nic = services[roles["worker"][0]]["environment"]["DMLC_INTERFACE"]
    started = time.monotonic()
    try:
        with netns.Network(
            [svc["hostname"] for svc in services.values()], nic=nic, resolve_names=True
        ) as net:
            state, worker_flags = _start_compose_services(
                procs, net, services, roles, (main_py, token, log_dir, rounds)
            )
            host_of = _host_of(net, services)
            _supervise(procs, started + TIMEOUT_S)
            assert state.poll() is None, f"the State Server died: {state.describe_exit()}"
            traffic = {
                services[s]["hostname"]: _nic_bytes(host_of(s), nic) for s in roles["worker"]
            }
    finally:
        procs.stop_all()
    elapsed = time.monotonic() - started
    _assert_clean(procs)
    assert not any(os.path.exists(f"/etc/netns/{h.netns}") for h in net.hosts.values())

    expected = {
        services[s]["hostname"]: [float(flag_value(services[s]["command"], "--slowdown"))]
        for s in roles["worker"]
    }
    mode_dir = log_dir / "lenet" / flag_value(worker_flags, "-m")
    workers = _check_records(mode_dir, expected, rounds)
    _assert_traffic_crossed_nics(workers, traffic)
    print(
        f"\ncompose services on emulated hosts: {len(services)} hosts, {rounds} rounds, "
        f"{elapsed:.1f} s including setup and teardown"
    )
