"""``launch.py -H HOSTFILE``: workers on other hosts over ssh (launcher/ssh.py).

The host file, the probe and the prefixes are tests/unit/test_ssh.py's, the remote command
and a bad host file tests/integration/test_ssh_commands.py's. Here: the launcher's exit code
2 for an unreachable host (ssh to 127.0.0.1 on a port nothing listens on), and the slow test
(root, network namespaces, OpenSSH's sshd): three emulated hosts (tests/support/netns.py) whose
names resolve to each other. hostB and hostC each run their own sshd (a throwaway key
pair and config in the test's tmp dir) in a mount namespace where the log folder is a private
tmpfs, so no file system is shared for the records: whatever the test finds in its log folder
was copied back by the launcher. The launcher runs in hostA with the host file
``hostB slots=2 slowdown=1,2`` / ``hostC slots=2 slowdown=1,4``:

1. a 4-worker esync run to the end with ``--services-on first`` (State Server, scheduler and
   parameter server on hostB, over ssh too): records of all 4 workers back in the local log
   folder (equal checksums every round), then summary.py and report.py on them;
2. services on the launcher's host (the default), ``--checkpoint-every 2 --max-restarts 1``:
   once rank 0 has evaluated round 4 the test kills one worker on hostC (``ip netns exec hostC
   kill -9``); the launcher restarts the cluster, the workers resume from a checkpoint on their
   hosts and the run finishes;
3. two parameter servers, one on the launcher's host with the scheduler and one on hostB
   (host file ``hostB slots=1 servers=1`` / ``hostC slots=2``, ``--servers 2``), a sync run
   of 3 workers to the end: both servers served, equal checksums every round;
4. Ctrl-C (SIGINT) to the launcher while the workers train: exit code 130.

After each run no process of it is left on hostB or hostC (``ip netns pids``), and at the end
no sshd, no process carrying the test's marker, and no namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launcher.supervision import CLUSTER_VARS, PYTHON, ROOT, child_env
from tests.support import netns
from tests.support.processes import run_py

OK, WHY = netns.available()
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HAVE_SSHD = os.access(SSHD, os.X_OK) and shutil.which("ssh") and shutil.which("ssh-keygen")
NO_SSHD = "needs OpenSSH's sshd, ssh and ssh-keygen (apt-get install openssh-server openssh-client)"
HOSTS = {"hostB": ("1", "2"), "hostC": ("1", "4")}  # slowdowns of the workers per host
RUN_TIMEOUT_S = 100.0

# --- the host file ---------------------------------------------------------------------------


# --- probing ---------------------------------------------------------------------------------


# --- the remote command ----------------------------------------------------------------------


# --- the launcher's errors before anything starts --------------------------------------------


@pytest.mark.skipif(not shutil.which("ssh"), reason="needs OpenSSH's ssh client")
def test_launcher_reports_unreachable_hosts_and_starts_nothing(tmp_path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("127.0.0.1 slots=2\nlocalhost\n")
    log_dir = tmp_path / "logs"
    res = run_py(
        ["launch.py", "-H", str(hostfile), "--interface", "lo", "--ssh-option", "Port=1",
         "--ssh-option", "UserKnownHostsFile=/dev/null", "-ld", str(log_dir)],
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "nothing was started" in res.stderr
    assert "127.0.0.1: ssh failed" in res.stderr and "localhost: ssh failed" in res.stderr
    assert not (log_dir / "processes").exists()


# --- the emulated cluster --------------------------------------------------------------------


class SshHosts:
    """A key pair, and one sshd per worker host in a mount namespace whose log folder is a
    private tmpfs (the records stay on their host until the launcher copies them)."""

    def __init__(self, tmp: Path, procs: netns.Processes, log_dir: Path) -> None:
        self.tmp, self.procs, self.log_dir = tmp, procs, log_dir
        self.key = tmp / "id_ed25519"
        self.options = [f"IdentityFile={self.key}", "UserKnownHostsFile=/dev/null"]
        self.options += ["StrictHostKeyChecking=no", "LogLevel=ERROR"]
        self.sshd: dict[str, int] = {}  # host name -> listener pid
        self.made_privsep = False
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        shutil.copy(f"{self.key}.pub", tmp / "authorized_keys")

    def ssh_options(self) -> list[str]:
        """The launcher's flags for this key (the client trusts any host key)."""
        return [x for o in self.options for x in ("--ssh-option", o)]

    def start(self, host: netns.Host) -> None:
        hostkey = self.tmp / f"hostkey-{host.name}"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)])
        conf = self.tmp / f"sshd-{host.name}.conf"
        conf.write_text(
            f"ListenAddress {host.address}\nPort 22\nHostKey {hostkey}\n"
            f"AuthorizedKeysFile {self.tmp / 'authorized_keys'}\n"
            f"PidFile {self.tmp / f'sshd-{host.name}.pid'}\n"
            "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\n"
            "Subsystem sftp internal-sftp\n"
        )
        if not os.path.isdir("/run/sshd"):  # sshd's privilege separation directory
            os.makedirs("/run/sshd", mode=0o755)
            self.made_privsep = True
        script = 'hostname "$0" && mount -t tmpfs tmpfs "$1" && exec "$2" -D -e -f "$3"'
        argv = ["ip", "netns", "exec", host.netns, "unshare", "--uts", "--mount"]
        argv += ["--propagation", "private", "sh", "-c", script, host.name, str(self.log_dir)]
        proc = self.procs.start(f"sshd-{host.name}", "sshd", [*argv, SSHD, str(conf)], _env())
        self.sshd[host.name] = proc.pid

    def wait_ready(self, client: netns.Host, hosts: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2"]
        for option in self.options:
            argv += ["-o", option]
        for name in hosts:
            while True:
                res = subprocess.run(client.wrap([*argv, name, "true"]), capture_output=True)
                if res.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"sshd on {name} did not answer: {res.stderr!r}")
                time.sleep(0.2)

    def cleanup(self) -> None:
        if self.made_privsep:
            shutil.rmtree("/run/sshd", ignore_errors=True)


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _env() -> dict[str, str]:
    return child_env(1, drop=CLUSTER_VARS)


def _netns_pids(host: netns.Host) -> dict[int, str]:
    """pid -> command line of every process in the host's network namespace."""
    out = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True)
    found = {}
    for pid in out.stdout.split():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                found[int(pid)] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return found


def _assert_hosts_clean(hosts: list[netns.Host], sshd: dict[str, int], within: float = 15) -> None:
    """Nothing but each host's sshd listener runs on the worker hosts (sessions may take a
    moment to close after the launcher has gone)."""
    deadline = time.monotonic() + within
    while True:
        left = {
            h.name: {p: c for p, c in _netns_pids(h).items() if p != sshd[h.name]} for h in hosts
        }
        if not any(left.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"processes left on the worker hosts: {left}")
        time.sleep(0.2)


def _launch(procs, host: netns.Host, name: str, flags: list[str]):
    argv = host.wrap([PYTHON, "launch.py", *flags])
    return procs.start(name, "launcher", argv, _env(), str(ROOT))


def _wait(proc, timeout: float = RUN_TIMEOUT_S) -> int:
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.name} still running after {timeout:.0f} s:\n{proc.tail(40)}")


def _wait_for_line(proc, needle: str, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while needle not in proc.tail(100000):
        if proc.poll() is not None:
            pytest.fail(f"{proc.name} exited before {needle!r}:\n{proc.tail(40)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {needle!r} from {proc.name}:\n{proc.tail(40)}")
        time.sleep(0.1)


def _records(mode_dir: Path, rounds: int) -> list[dict]:
    """meta.json of every worker copied back; all rounds there, equal checksums every round."""
    metas, checksums = [], {}
    for folder in sorted(mode_dir.glob("*/*-rank*")):
        meta = json.loads((folder / "meta.json").read_text())
        records = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == list(range(1, rounds + 1)), folder
        for r in records:
            checksums.setdefault(r["round"], set()).add(r["checksum"])
        metas.append(meta)
    assert sorted(m["rank"] for m in metas) == [0, 1, 2, 3], [str(p) for p in mode_dir.glob("*/*")]
    by_host = {}
    for m in metas:
        by_host.setdefault(m["host"], []).append(f"{m['slowdown']:g}")
    assert {h: sorted(s) for h, s in by_host.items()} == {h: sorted(s) for h, s in HOSTS.items()}
    assert all(len(sums) == 1 for sums in checksums.values()), checksums
    return metas


def _run_to_the_end(
    procs: netns.Processes, net: netns.Network, common: list[str], ssh: SshHosts, log_dir: Path
) -> None:
    """A run to its end: the services on the first host, workers on both; records, summary
    and report."""
    a, workers = net.hosts["hostA"], [net.hosts[h] for h in HOSTS]
    mode_dir = log_dir / "lenet" / "esync"
    flags = ["--rounds", "6", "-e", "3", "--services-on", "first"]
    run = _launch(procs, a, "launch-1", [*common, *flags])
    assert _wait(run) == 0, run.tail(60)
    out = run.tail(100000)
    assert f"services on hostB at {net.hosts['hostB'].address}" in out
    assert "hostB: [worker" in out and "hostC: [worker" in out
    assert "rank 0 ran on host" in out
    _assert_hosts_clean(workers, ssh.sshd)
    metas = _records(mode_dir, 6)
    assert {m["host"] for m in metas} == set(HOSTS)
    res = run_py(["summary.py", "-b", str(log_dir), "-n", "lenet", "-m", "esync"])
    assert res.returncode == 0, res.stderr
    assert json.loads((mode_dir / "summary.json").read_text())["num_workers"] == 4
    res = run_py(["report.py", "-b", str(log_dir), "-n", "lenet", "--target", "0.3"])
    assert res.returncode == 0, res.stderr
    assert "esync" in (log_dir / "lenet" / "report.md").read_text()


def _kill_restart_resume(
    procs: netns.Processes, net: netns.Network, common: list[str], ssh: SshHosts, log_dir: Path
) -> None:
    """A worker killed on host C: the cluster restarts once from the checkpoint and resumes."""
    a, workers = net.hosts["hostA"], [net.hosts[h] for h in HOSTS]
    mode_dir = log_dir / "lenet" / "esync"
    flags = ["--rounds", "16", "-e", "2", "--checkpoint-every", "2", "--max-restarts", "1"]
    run = _launch(procs, a, "launch-2", [*common, *flags])
    _wait_for_line(run, "[Iteration 4]")
    victim = next(  # a worker's python, not the shell around it
        p for p, cmd in _netns_pids(net.hosts["hostC"]).items()
        if cmd.split()[:2] == [PYTHON, "main.py"]
    )  # fmt: skip
    subprocess.run(["ip", "netns", "exec", net.hosts["hostC"].netns, "kill", "-9",
                    str(victim)], check=True)  # fmt: skip
    assert _wait(run) == 0, run.tail(80)
    out = run.tail(100000)
    assert "restart 1 of 1" in out and "exited with code 137" in out
    resumed = [line for line in out.splitlines() if "resumed after round" in line]
    assert len(resumed) == 4, out
    assert all(int(line.rsplit(" ", 1)[1]) >= 2 for line in resumed), resumed
    _assert_hosts_clean(workers, ssh.sshd)
    metas = _records(mode_dir, 16)
    assert all(m.get("resumed") for m in metas)


def _servers_on_two_hosts(
    procs: netns.Processes, net: netns.Network, common: list[str], tmp_path: Path
) -> None:
    """The scheduler on the launcher's host (hostA), parameter servers there and on hostB
    (``--servers 2``, one placed by the host file), workers on hostB and hostC."""
    hostfile = tmp_path / "hosts-servers"
    hostfile.write_text("hostB slots=1 slowdown=1 servers=1\nhostC slots=2 slowdown=1,4\n")
    base = tmp_path / "logs-servers"
    flags = ["-H", str(hostfile), *common[2:], "-m", "sync", "-ld", str(base), "--rounds", "6"]
    run = _launch(procs, net.hosts["hostA"], "launch-servers", [*flags, "--servers", "2"])
    assert _wait(run) == 0, run.tail(60)
    out = run.tail(100000)
    placed = re.search(r"servers on (.*?); workers on", out)
    assert placed and "hostB (1)" in placed[1] and placed[1].count("(1)") == 2, out[-3000:]
    procs_dir = base / "processes" / "lenet" / "sync"
    # the host file's servers come first, then the ones with the scheduler
    assert "hostB: [server] starting" in (procs_dir / "server0.log").read_text()
    local = (procs_dir / "server1.log").read_text()
    assert "[server] training ended" in local and "hostB:" not in local
    sums: dict[int, set[str]] = {}
    folders = sorted((base / "lenet" / "sync").glob("*/*-rank*"))
    assert len(folders) == 3, folders
    for folder in folders:
        records = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == list(range(1, 7)), folder
        assert all(len(r["server_bytes"]) == 2 and min(r["server_bytes"]) > 0 for r in records)
        for r in records:
            sums.setdefault(r["round"], set()).add(r["checksum"])
    assert all(len(found) == 1 for found in sums.values()), sums


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(not OK, reason=f"emulated hosts: {WHY}")
@pytest.mark.skipif(not HAVE_SSHD, reason=NO_SSHD)
def test_launch_over_ssh_on_emulated_hosts(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    hostfile = tmp_path / "hosts"
    hostfile.write_text(
        "# emulated worker hosts\n"
        + "".join(f"{h} slots={len(s)} slowdown={','.join(s)}\n" for h, s in HOSTS.items())
    )
    procs = netns.Processes(str(tmp_path / "processes"))
    netns.remove_stale()
    started = time.monotonic()
    ssh = SshHosts(tmp_path, procs, log_dir)
    timings = {}
    try:
        with netns.Network(["hostA", *HOSTS], resolve_names=True) as net:
            a, workers = net.hosts["hostA"], [net.hosts[h] for h in HOSTS]
            for host in workers:
                ssh.start(host)
            ssh.wait_ready(a, list(HOSTS))
            common = ["-H", str(hostfile), "--interface", net.nic, *ssh.ssh_options()]
            common += ["-m", "esync", "-n", "lenet", "-ld", str(log_dir), "--timeout", "90"]

            t0 = time.monotonic()
            _run_to_the_end(procs, net, common, ssh, log_dir)
            timings["run to the end"] = time.monotonic() - t0
            t0 = time.monotonic()
            _kill_restart_resume(procs, net, common, ssh, log_dir)
            timings["kill, restart, resume"] = time.monotonic() - t0

            t0 = time.monotonic()
            _servers_on_two_hosts(procs, net, common, tmp_path)
            _assert_hosts_clean(workers, ssh.sshd)
            timings["two servers on two hosts"] = time.monotonic() - t0

            t0 = time.monotonic()
            run = _launch(procs, a, "launch-3", [*common, "--rounds", "100000"])
            _wait_for_line(run, "joined the MXNet cluster")
            os.kill(run.pid, signal.SIGINT)
            assert _wait(run, 60) == 130, run.tail(40)
            _assert_hosts_clean(workers, ssh.sshd)
            timings["Ctrl-C"] = time.monotonic() - t0
    finally:
        procs.stop_all()
        ssh.cleanup()
    mine = [n for n in netns.list_netns() if n.startswith(f"{netns.PREFIX}{os.getpid()}-")]
    assert mine == [], f"namespaces left behind: {mine}"
    assert procs.leftovers() == [], "processes left behind"
    left = subprocess.run(["pgrep", "-f", f"sshd.*{tmp_path}"], capture_output=True, text=True)
    assert left.stdout == "", f"sshd left behind: {left.stdout}"
    print(
        "\nlaunch over ssh: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + f"; {time.monotonic() - started:.1f} s in all"
    )
