"""Emulated hosts for multi-host tests: Linux network namespaces joined by a bridge.

Every host is a network namespace with ``lo`` up and one veth interface (``NIC``) whose peer is
enslaved to a bridge living in a separate "switch" namespace, so nothing is added to the root
namespace and deleting the namespaces removes every interface. Processes run through
``ip netns exec <ns> unshare --uts sh -c 'hostname <name>; exec ...'`` so each host also has its
own hostname (a fresh UTS namespace: the machine's hostname is untouched).

Needs root and the ``ip`` and ``unshare`` binaries. Names carry the test process's pid, so
parallel runs do not clash, and ``remove_stale()`` removes what a killed earlier run left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from launcher.supervision import CLUSTER_VARS, PYTHON, Cluster, LaunchError, Proc, child_env

PREFIX = "esmh"  # namespace names: esmh<pid>-<role>
NIC = "veth0"  # name of the cluster interface inside every host namespace
SUBNET = "10.77.0"  # /24 inside the namespaces only; never routed anywhere
MARKER_VAR = "ESYNC_NETNS_TEST"  # set in every child, to find leftovers by environment
# GET a URL (argv[1]); prints the HTTP status on the first line and the body; exit 1 on no answer
_HTTP_GET = """import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError as e:
    r = e
except OSError:
    sys.exit(1)
print(r.getcode())
sys.stdout.write(r.read().decode(errors="replace"))
"""


def available() -> tuple[bool, str]:
    """Whether namespaces can be built here, and why not."""
    if os.geteuid() != 0:
        return False, "needs root to create network namespaces (ip netns add)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return False, f"needs the {tool!r} binary (iproute2 / util-linux)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    _ip("netns", "del", probe, check=False)
    if made.returncode != 0:
        return False, f"cannot create a network namespace: {made.stderr.strip()}"
    return True, ""


def host_marks() -> list[pytest.MarkDecorator]:
    """The ``pytestmark`` of a test file on emulated hosts: netns, slow, and skipped (saying
    why) where namespaces cannot be built."""
    ok, why = available()
    return [
        pytest.mark.netns,
        pytest.mark.slow,
        pytest.mark.skipif(not ok, reason=f"emulated hosts: {why}"),
    ]


def host_env(extra: dict[str, str]) -> dict[str, str]:
    """A child's environment on an emulated host: one thread, none of this shell's cluster
    variables (a stray DMLC_* would join the wrong cluster), plus ``extra``."""
    return child_env(1, extra, drop=CLUSTER_VARS)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def list_netns() -> list[str]:
    """Names from ``ip netns list``."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete namespaces of this module whose creating process is gone; returns their names."""
    removed = []
    for name in list_netns():
        match = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Host:
    """One emulated machine."""

    name: str  # hostname inside its UTS namespace, e.g. "hostA"
    netns: str
    address: str

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's network namespace, under this host's hostname."""
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.name,
            *argv,
        ]

    def http_get(self, url: str) -> tuple[int, str] | None:
        """(status, body) of GET ``url`` from inside this host; None when nothing answers."""
        cmd = self.wrap([PYTHON, "-c", _HTTP_GET, url])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            return None
        status, _, body = res.stdout.partition("\n")
        return int(status), body

    def wait_http(self, url: str, proc: Proc, timeout: float) -> None:
        """Wait until ``url`` answers from inside this host (any HTTP status); LaunchError when
        ``proc`` (the server) dies or time runs out."""
        deadline = time.monotonic() + timeout
        while self.http_get(url) is None:
            if proc.poll() is not None:
                raise LaunchError(proc.describe_exit())
            if time.monotonic() > deadline:
                raise LaunchError(f"{url} did not answer {self.name} within {timeout:.0f} s")
            time.sleep(0.2)


@dataclass
class Network:
    """Hosts on one bridged /24; use as a context manager (teardown on exit, always).

    ``nic`` names the interface inside every host. With ``resolve_names`` every host can
    resolve the others' names (like services on a docker compose network): ``ip netns exec``
    bind-mounts ``/etc/netns/<ns>/hosts`` over ``/etc/hosts``, so such a file is written per
    namespace and removed again in ``down()``.
    """

    host_names: Sequence[str]
    nic: str = NIC
    resolve_names: bool = False
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    etc_dirs: list[str] = field(default_factory=list)
    made_etc_netns: bool = False

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def up(self) -> Network:
        """Create the switch namespace with its bridge, then one namespace per host."""
        self._add_netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, name in enumerate(self.host_names, start=1):
            netns = f"{self.tag}-{name}"
            self._add_netns(netns)
            port = f"p{i}"
            _ip(
                "link",
                "add",
                "name",
                self.nic,
                "netns",
                netns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.switch,
            )
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            address = f"{SUBNET}.{i}"
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", self.nic)
            _ip("-n", netns, "link", "set", self.nic, "up")
            self.hosts[name] = Host(name, netns, address)
        if self.resolve_names:
            self._write_hosts_files()
        return self

    def _write_hosts_files(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{h.address} {h.name}" for h in self.hosts.values()]
        try:
            os.mkdir("/etc/netns")
            self.made_etc_netns = True
        except FileExistsError:
            pass
        for host in self.hosts.values():
            folder = os.path.join("/etc/netns", host.netns)
            os.makedirs(folder)
            self.etc_dirs.append(folder)
            with open(os.path.join(folder, "hosts"), "w") as fh:
                fh.write("\n".join(lines) + "\n")

    def down(self) -> None:
        """Delete every namespace created (their veths and the bridge go with them)."""
        for name in reversed(self.created):
            _ip("netns", "del", name, check=False)
        self.created.clear()
        for folder in self.etc_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        if self.made_etc_netns:
            try:
                os.rmdir("/etc/netns")  # only when empty (a parallel run may still use it)
            except OSError:
                pass
            self.made_etc_netns = False
        self.etc_dirs.clear()

    def __enter__(self) -> Network:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.down()


@dataclass
class Processes(Cluster):
    """Children of one test, stopped by ``supervision.Cluster`` (process groups, TERM then
    KILL), plus anything that still carries this run's marker (``MARKER_VAR``, set through
    ``env_extra``) in its environment."""

    marker: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}-{time.time_ns()}")

    def __post_init__(self) -> None:
        self.env_extra = {**self.env_extra, MARKER_VAR: self.marker}

    def stop_all(self, grace: float = 5.0) -> None:
        self.stop(grace)
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftovers(self) -> list[int]:
        """Pids of live processes whose environment carries this run's marker."""
        needle = f"{MARKER_VAR}={self.marker}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    env = fh.read().split(b"\0")
            except OSError:
                continue
            if needle in env:
                found.append(int(entry))
        return found
