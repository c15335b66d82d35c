"""launch.py's processes on other hosts, over OpenSSH: the host file, where each process runs,
the remote command, probing the hosts, and fetching the records back.

Host file (``launch.py -H FILE``): one line per worker host,

    # comments and blank lines are ignored
    nodeA   slots=2 slowdown=1,4     # two workers, emulated slowdowns 1 and 4
    user@nodeB slots=1 servers=1     # one worker and one parameter server
    nodeC                            # slots=1
    nodeD   slots=0 servers=2        # two parameter servers, no worker

``host`` is what ``ssh`` is given (a name, an address, ``user@host``, or a ``Host`` alias of
``~/.ssh/config``); ``slots`` is the number of workers on it (default 1; 0 on a line with
servers); ``servers`` the parameter servers on it (default 0; ``launch.py --servers N`` beyond the
host file's total run with the scheduler, where ``--services-on`` says; one when no one says
any); ``slowdown`` has one
entry per slot (or one for all of them), each a ``--slowdowns`` entry: a factor, a schedule
``S0/S1@T1`` or a ``.csv`` trace (read on the worker's host, at the same path).

A remote process is a local ``ssh -tt`` client (supervised by ``launcher.supervision.Cluster``
like a local process, its output prefixed with the host and echoed) running

    exec /bin/sh -c 'mkdir -p D && echo $$ > D/<name>.pgid && cd ROOT || exit 125;
                     ESYNC_TOKEN=$(cat D/.token) && export ESYNC_TOKEN || exit 125;
                     env VAR=... PY main.py ...; rc=$?; rm -f D/<name>.pgid; exit $rc'

The run's token is never on a command line (``ps`` shows every user the command lines of a
host): the launcher writes it once per host and attempt into ``D/.token`` (mode 0600, sent on
ssh's stdin) and :func:`stop_leftovers` removes it.

sshd starts that shell as the leader of a new session whose controlling terminal is the
pseudo-terminal, so the shell's pid is also the process group of everything it starts: when the
ssh client ends (Ctrl-C, a failure, the end of the run), the terminal hangs up and the group gets
SIGHUP; the pgid file, left behind only by a process that did not exit by itself, lets
:func:`stop_leftovers` kill the group (``kill -s KILL -- -PGID``) afterwards as a fallback.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import config
from launcher.devices import SlowdownCountError, per_device
from launcher.supervision import (
    PYTHON,
    ROOT,
    THREAD_VARS,
    TOKEN_VAR,
    WORKER_RANK_RE,
    Cluster,
    LaunchError,
    Proc,
    child_env,
    free_port,
)
from trainer import layout
from trainer.slowdown import ScheduleError

SSH = "ssh"
# after the user's --ssh-option values (ssh keeps the first value of an option)
SSH_DEFAULTS = (
    "ConnectTimeout=10",
    "ServerAliveInterval=10",  # a host that stops answering ends its ssh clients (~60 s)
    "ServerAliveCountMax=6",
    "LogLevel=ERROR",  # errors only: no "Connection to ... closed." after every process
)
FORWARDED_PREFIXES = ("ESYNC_",)  # launcher variables every remote process gets (ESYNC_TOKEN)
PROBE_TIMEOUT_S = 60.0
COPY_TIMEOUT_S = 600.0
_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")  # IPv6 literals: use a ~/.ssh/config alias
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOKEN_FILE = ".token"  # in the attempt's process folder on a remote host (Where.put_token)
_TOKENS_WRITTEN: set[tuple[str | None, str]] = set()

Runner = Callable[[list[str], float], subprocess.CompletedProcess]


class HostfileError(ValueError):
    """A bad host file; one line per problem, each naming the file and line number."""


class ProbeError(Exception):
    """Some hosts cannot run the cluster; the message lists every problem of every host."""


# --- the host file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostLine:
    """One line of a host file."""

    host: str  # the ssh destination
    slots: int = 1
    slowdowns: tuple[str, ...] = ()  # one per slot; empty: --slowdowns decides
    line: int = 0
    servers: int = 0  # parameter servers on this host


def parse_hostfile(text: str, source: str = "hostfile") -> list[HostLine]:
    """The host lines of ``text``; HostfileError listing every bad line (``source:N: why``)."""
    hosts, problems = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        body = raw.split("#", 1)[0].strip()
        if not body:
            continue
        try:
            hosts.append(parse_host_line(body, number))
        except HostfileError as exc:
            problems.append(f"{source}:{number}: {exc}")
    if not hosts and not problems:
        problems.append(f"{source}: no host in it (one line per host: host [slots=N] ...)")
    if problems:
        raise HostfileError("\n".join(problems))
    return hosts


def parse_host_line(body: str, number: int = 0) -> HostLine:
    """``host [slots=N] [servers=N] [slowdown=S[,S...]]`` (no comment, not blank)."""
    host, *fields = body.split()
    if not _HOST_RE.match(host) or "=" in host:
        raise HostfileError(f"{host!r} is not a host (a name, an address or user@host first)")
    values: dict[str, str] = {}
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep or key not in HOST_FIELDS:
            raise HostfileError(
                f"unknown field {item!r} (expected slots=N, servers=N or slowdown=S[,S...])"
            )
        if key in values:
            raise HostfileError(f"{key}= given twice")
        values[key] = value
    slots = _whole(values, "slots", 1)
    servers = _whole(values, "servers", 0)
    if servers > config.MAX_SERVERS:
        raise HostfileError(f"servers={servers}: at most {config.MAX_SERVERS}")
    if slots < (0 if servers else 1):
        raise HostfileError(
            f"slots={slots}: must be at least 1"
            + (" (or 0 on a line with servers=N)" if slots == 0 else "")
        )
    slowdowns = _line_slowdowns(values.get("slowdown"), slots) if slots else ()
    if values.get("slowdown") is not None and not slots:
        raise HostfileError("slowdown= on a line without workers (slots=0)")
    return HostLine(host, slots, slowdowns, number, servers)


HOST_FIELDS = ("slots", "servers", "slowdown")


def _whole(values: dict[str, str], key: str, default: int) -> int:
    """The non-negative whole number of field ``key`` (HostfileError naming it)."""
    text = values.get(key, str(default))
    if not (text.isascii() and text.isdigit()):
        raise HostfileError(f"{key}={text}: not a whole number >= 0")
    return int(text)


def _line_slowdowns(text: str | None, slots: int) -> tuple[str, ...]:
    if text is None:
        return ()
    entries = [e.strip() for e in text.split(",")]
    if not all(entries):
        raise HostfileError(f"slowdown={text}: an empty entry")
    try:
        return tuple(per_device(entries, slots))
    except SlowdownCountError as exc:
        raise HostfileError(f"slowdown= has {exc.given} entries for slots={slots}") from None
    except ScheduleError as exc:
        raise HostfileError(f"slowdown={text}: {exc}") from None


def assign_slowdowns(hosts: Sequence[HostLine], default: Sequence[str]) -> list[tuple[str, str]]:
    """(ssh destination, slowdown entry) of every worker, in host file order.

    ``default`` is the parsed ``--slowdowns``: one entry for every slot without its own, or one
    entry per slot (then no line may give its own). ValueError when they do not fit.
    """
    slots = sum(h.slots for h in hosts)
    if len(default) not in (1, slots):
        raise ValueError(f"--slowdowns has {len(default)} entries for {slots} slots")
    if len(default) > 1 and any(h.slowdowns for h in hosts):
        raise ValueError("give the slowdowns either in the host file or in --slowdowns")
    per_slot = list(default) * slots if len(default) == 1 else list(default)
    workers, first = [], 0
    for h in hosts:
        workers += [(h.host, s) for s in h.slowdowns or per_slot[first : first + h.slots]]
        first += h.slots
    return workers


# --- ssh commands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ssh:
    """OpenSSH's client with ``BatchMode=yes`` (a key that needs a password, an unknown host
    key... fail at once instead of asking), the user's ``-o`` options, then ours."""

    options: tuple[str, ...] = ()

    def _base(self, program: str) -> list[str]:
        argv = [program, "-o", "BatchMode=yes"]
        for option in (*self.options, *SSH_DEFAULTS):
            argv += ["-o", option]
        return argv

    def command(self, host: str, remote: str, tty: bool = False) -> list[str]:
        """``ssh ... host remote`` (``-tt``: a pseudo-terminal even without a local one)."""
        return [*self._base(SSH), *(["-tt"] if tty else []), "--", host, remote]


def remote_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a remote process gets: thread limits, unbuffered output, the launcher's ``ESYNC_*``
    variables (e.g. ``ESYNC_TOKEN``) and ``extra`` (no other local variable crosses)."""
    env = {name: str(threads) for name in THREAD_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)})
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def remote_command(
    root: str,
    argv: Sequence[str],
    env: dict[str, str],
    pgid_file: str,
    token_file: str | None = None,
) -> str:
    """The command line (for the remote login shell) that runs ``argv`` from ``root`` with
    ``env``, its process group id in ``pgid_file`` while it runs (see the module doc); the
    token comes from ``token_file``, never from the command line (``env``'s is dropped)."""
    bad = [k for k in env if not _VAR_RE.match(k)]
    if bad:
        raise ValueError(f"not environment variable names: {bad}")
    q = shlex.quote
    assigns = " ".join(f"{k}={q(v)}" for k, v in env.items() if k != TOKEN_VAR)
    token = f"{TOKEN_VAR}=$(cat {q(token_file)}) && export {TOKEN_VAR} || exit 125; "
    script = (
        f"mkdir -p {q(os.path.dirname(pgid_file))} && echo $$ > {q(pgid_file)} "
        f"&& cd {q(root)} || exit 125; "
        f"{token if token_file else ''}"
        f"env {assigns} {' '.join(q(a) for a in argv)}; "
        f"rc=$?; rm -f {q(pgid_file)}; exit $rc"
    )
    return posix(script)


def posix(script: str) -> str:
    """``script`` run by /bin/sh whatever the remote user's login shell is."""
    return f"exec /bin/sh -c {shlex.quote(script)}"


class LinePrefix:
    """``host: `` before each output line of a remote process, ``host: rank r: `` once the
    worker has named its rank (lines that name it themselves keep the short prefix)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.rank: int | None = None

    def __call__(self, line: str) -> str:
        match = WORKER_RANK_RE.search(line)
        if match:
            self.rank = int(match.group(1))
        if match or self.rank is None:
            return f"{self.host}: {line}"
        return f"{self.host}: rank {self.rank}: {line}"


# --- where a process runs --------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """This machine (``host`` None) or an ssh destination with its checkout and python."""

    host: str | None = None
    hostname: str = field(default_factory=socket.gethostname)  # its records' folder name
    root: str = ROOT
    python: str = PYTHON
    ssh: Ssh = Ssh()
    address: str = ""  # its IPv4 address on the cluster interface (from the probe)

    @property
    def remote(self) -> bool:
        return self.host is not None

    @property
    def label(self) -> str:
        return self.host or self.hostname

    def path(self, local: str | os.PathLike[str]) -> str:
        """A path of the launcher's as it is on this host: paths of this checkout move to the
        remote checkout, relative ones are relative to it (main.py runs from there), other
        absolute paths stay as they are."""
        text = str(local)
        if not self.remote:
            return text
        if text == ROOT or text.startswith(ROOT + os.sep):
            return self.root + text[len(ROOT) :]
        return text if os.path.isabs(text) else f"{self.root.rstrip('/')}/{text}"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """A local command line (``[PYTHON, ...]``) as it runs here (absolute paths of this
        checkout moved to the remote one)."""
        return [
            self.python if a == PYTHON else self.path(a) if os.path.isabs(a) else a for a in argv
        ]

    def start(
        self,
        cluster: Cluster,
        name: str,
        role: str,
        argv: Sequence[str],
        env: dict[str, str],
        threads: int = 1,
    ) -> Proc:
        """Start ``argv`` (a local command line, run from the checkout's root) here, with the
        variables ``env`` on top of the usual ones; supervised by ``cluster`` either way."""
        if not self.remote:
            return cluster.start(name, role, list(argv), child_env(threads, env))
        folder = self.path(cluster.proc_dir)
        token_file = self.put_token(folder) if os.environ.get(TOKEN_VAR) else None
        pgid_file = f"{folder}/{name}.pgid"
        command = remote_command(
            self.root, self.argv(argv), remote_env(threads, env), pgid_file, token_file
        )
        ssh = self.ssh.command(self.host or "", command, tty=True)
        return cluster.start(name, role, ssh, child_env(1), echo=LinePrefix(self.label))

    def put_token(self, folder: str) -> str:
        """Write the run's token into ``folder/.token`` on this host (once per folder: mode
        0600, sent on ssh's stdin); returns the file's path."""
        path = f"{folder}/{TOKEN_FILE}"
        if (self.host, path) in _TOKENS_WRITTEN:
            return path
        q = shlex.quote
        script = f"umask 077 && mkdir -p {q(folder)} && cat > {q(path)}"
        argv = self.ssh.command(self.host or "", posix(script))
        try:
            res = subprocess.run(
                argv,
                input=os.environ[TOKEN_VAR],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(f"{self.label}: cannot write the run's token: {exc}") from None
        if res.returncode != 0:
            raise LaunchError(f"{self.label}: cannot write the run's token: {_last_lines(res)}")
        _TOKENS_WRITTEN.add((self.host, path))
        return path

    def free_ports(self, count: int, bind: str, runner: Runner | None = None) -> list[int]:
        """``count`` TCP ports nothing listens on right now (on this host)."""
        if not self.remote:
            return [free_port(bind) for _ in range(count)]
        code = (
            f"import socket; s=[socket.socket() for _ in range({count})]; "
            "[x.bind(('', 0)) for x in s]; print(*[x.getsockname()[1] for x in s])"
        )
        res = self.run(f"{shlex.quote(self.python)} -c {shlex.quote(code)}", runner)
        if res.returncode != 0:
            raise LaunchError(f"{self.label}: cannot find a free port: {_last_lines(res)}")
        return [int(p) for p in res.stdout.split()]

    def run(
        self, script: str, runner: Runner | None = None, timeout: float = PROBE_TIMEOUT_S
    ) -> subprocess.CompletedProcess:
        """Run a /bin/sh script here over ssh (no terminal), capturing its output (exit code
        255 with the reason when ssh fails or the host does not answer in time)."""
        return call(runner, self.ssh.command(self.host or "", posix(script)), timeout)


def run_captured(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """The default runner: ``argv`` with its output captured, no stdin."""
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def call(runner: Runner | None, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``runner(argv, timeout)``; a time-out or a missing ssh becomes exit code 255."""
    try:
        return (runner or run_captured)(argv, timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 255, "", f"no answer within {timeout:g} s")
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 255, "", f"cannot run {argv[0]}: {exc}")


def _last_lines(res: subprocess.CompletedProcess, lines: int = 3) -> str:
    text = (res.stderr or "") + (res.stdout or "")
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) or f"exit code {res.returncode}"


def on_each(hosts: Iterable[Where], fn: Callable[[Where], object]) -> list[object]:
    """``fn`` for every host at once (one thread each), results in the same order."""
    hosts = list(hosts)
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        return list(pool.map(fn, hosts))


# --- probing ---------------------------------------------------------------------------------


def probe_command(root: str, python: str, interface: str) -> str:
    """One shell command that reports what :func:`read_probe` needs."""
    q = shlex.quote
    return "; ".join(
        [
            'echo "ESYNC-HOSTNAME $(hostname)"',
            f"test -f {q(root)}/main.py && echo ESYNC-ROOT",
            f"test -x {q(python)} && echo ESYNC-PYTHON",
            'echo "ESYNC-LINKS $(ls /sys/class/net 2>/dev/null | tr "\\n" " ")"',
            f"ip -o -4 addr show dev {q(interface)} 2>/dev/null | sed 's/^/ESYNC-INET /'",
            "true",
        ]
    )


def valid_hostname(name: str) -> bool:
    """A DNS host name (RFC 1123 labels, at most 253 characters): no ``..``, no ``/``, not
    empty, so it is safe as a folder name of the records."""
    return len(name) <= 253 and all(_LABEL_RE.match(label) for label in name.split("."))


def read_probe(
    res: subprocess.CompletedProcess, root: str, python: str, interface: str
) -> tuple[str, str, list[str]]:
    """(hostname, address of ``interface``, problems) from a probe's output."""
    facts: dict[str, list[str]] = {}
    for line in (res.stdout or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key.startswith("ESYNC-"):
            facts.setdefault(key[len("ESYNC-") :], []).append(value.strip())
    if res.returncode != 0 or "HOSTNAME" not in facts:
        return "", "", [f"ssh failed: {_last_lines(res)}"]
    hostname = facts["HOSTNAME"][0]
    if not valid_hostname(hostname):  # it names a records folder here and there (rm -rf)
        return "", "", [f"reports the host name {hostname!r}, which is not a DNS host name"]
    problems = []
    if "ROOT" not in facts:
        problems.append(f"no checkout of this repository at {root} (set --remote-root)")
    if "PYTHON" not in facts:
        problems.append(
            f"no python at {python} (create the virtualenv there: python3.11 -m venv .venv && "
            ".venv/bin/pip install -r requirements.txt; or set --remote-python)"
        )
    links = " ".join(facts.get("LINKS", [])).split()
    inet = [v.split() for v in facts.get("INET", [])]
    addresses = [f[f.index("inet") + 1].split("/")[0] for f in inet if "inet" in f[:-1]]
    if interface not in links:
        problems.append(f"no interface {interface} (it has: {', '.join(links) or 'none listed'})")
    elif not addresses:
        problems.append(f"interface {interface} has no IPv4 address")
    return facts["HOSTNAME"][0], (addresses or [""])[0], problems


def probe_hosts(
    hosts: Sequence[str],
    ssh: Ssh,
    root: str,
    python: str,
    interface: str,
    runner: Runner | None = None,
    timeout: float = PROBE_TIMEOUT_S,
) -> dict[str, Where]:
    """Check every host at once with one ssh command each; the :class:`Where` of each, or a
    ProbeError that lists the problems of all hosts (unreachable, key refused, no checkout,
    no virtualenv, no such interface, two hosts with one hostname)."""
    command = probe_command(root, python, interface)

    def probe(host: str) -> tuple[str, str, list[str]]:
        res = call(runner, ssh.command(host, posix(command)), timeout)
        return read_probe(res, root, python, interface)

    unique = list(dict.fromkeys(hosts))
    with ThreadPoolExecutor(max_workers=min(32, len(unique) or 1)) as pool:
        found = dict(zip(unique, pool.map(probe, unique), strict=True))
    problems = [f"{h}: {p}" for h, (_, _, ps) in found.items() for p in ps]
    owners: dict[str, list[str]] = {}
    for h, (name, _, _) in found.items():
        if name:
            owners.setdefault(name, []).append(h)
    for name, same in owners.items():
        if len(same) > 1:
            problems.append(
                f"{', '.join(same)}: all have the hostname {name!r}, so their records would "
                "share one folder (give them distinct hostnames)"
            )
    if problems:
        raise ProbeError("\n".join(f"  {p}" for p in problems))
    return {h: Where(h, name, root, python, ssh, addr) for h, (name, addr, _) in found.items()}


def local_address(interface: str) -> str:
    """This machine's IPv4 address on ``interface``; OSError when it has none."""
    import fcntl
    import struct

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        packed = struct.pack("256s", interface.encode()[:15])
        return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), siocgifaddr, packed)[20:24])


# --- one run's plan --------------------------------------------------------------------------


@dataclass
class Plan:
    """Where the processes of a run go. ``advertise`` is the services' address on the cluster
    network (DMLC_PS_ROOT_URI, the State Server's -ip), ``interface`` the workers'
    DMLC_INTERFACE."""

    services: Where
    workers: list[tuple[Where, str]]  # (where, slowdown entry) of every worker
    advertise: str = "127.0.0.1"
    interface: str = "lo"
    servers: list[Where] = field(default_factory=list)  # every parameter server; []: one

    def server_places(self) -> list[Where]:
        """Where each parameter server runs (one with the services unless told otherwise)."""
        return self.servers or [self.services]

    def remote_hosts(self) -> list[Where]:
        """Every remote host of the run, once."""
        found: dict[str, Where] = {}
        for where in [self.services, *self.server_places(), *(w for w, _ in self.workers)]:
            if where.host is not None:
                found.setdefault(where.host, where)
        return list(found.values())

    def worker_hosts(self) -> list[Where]:
        """The remote hosts that run workers (they hold records and checkpoints), once."""
        running = {where.host for where, _ in self.workers}
        return [w for w in self.remote_hosts() if w.host in running]

    def hostnames(self) -> list[str]:
        """The record folder names of this run's hosts (this machine's first)."""
        names = [socket.gethostname(), *(w.hostname for w in self.remote_hosts())]
        return list(dict.fromkeys(names))

    def node_env(self, where: Where) -> dict[str, str]:
        """How the scheduler or a server at ``where`` finds its address: ``interface``, or,
        when it runs here for remote hosts, the advertised address itself (this machine's
        name for the cluster network's interface may differ from the hosts')."""
        env = {"DMLC_INTERFACE": self.interface}
        if not where.remote and self.remote_hosts():
            env["DMLC_NODE_HOST"] = self.advertise
        return env


# --- before and after a run ------------------------------------------------------------------


def _warn(text: str) -> None:
    print(f"launch: warning: {text}", flush=True)


def clean_records(hosts: Iterable[Where], mode_dir: Path) -> None:
    """Start afresh on every host: remove its records, the checkpoints and the saved model of
    an earlier run of this mode (launch.start_afresh does the same here)."""

    def clean(where: Where) -> None:
        remote_dir = where.path(mode_dir)
        paths = [
            f"{remote_dir}/{where.hostname}",
            str(layout.checkpoint_dir(remote_dir)),
            f"{remote_dir}/{layout.MODEL_PARAMS}",
            f"{remote_dir}/{layout.MODEL_INFO}",
        ]
        res = where.run("rm -rf " + " ".join(shlex.quote(p) for p in paths))
        if res.returncode != 0:
            _warn(f"{where.label}: could not remove the earlier run's files: {_last_lines(res)}")

    on_each(hosts, clean)


def stop_leftovers(hosts: Iterable[Where], proc_dir: Path) -> None:
    """Kill the process group of every remote process of this attempt that did not end by
    itself (the fallback behind the pseudo-terminal's hang-up), and remove the run's token."""
    loop = (
        'for f in *.pgid; do [ -f "$f" ] || continue; '
        f'kill -s KILL -- "-$(cat "$f")" 2>/dev/null; rm -f "$f"; done; rm -f {TOKEN_FILE}; true'
    )

    def stop(where: Where) -> None:
        folder = shlex.quote(where.path(proc_dir))
        _TOKENS_WRITTEN.discard((where.host, f"{where.path(proc_dir)}/{TOKEN_FILE}"))
        res = where.run(f"cd {folder} 2>/dev/null || exit 0; {loop}")
        if res.returncode != 0:
            _warn(f"{where.label}: could not check for leftover processes: {_last_lines(res)}")

    on_each(hosts, stop)


def fetch_records(hosts: Iterable[Where], mode_dir: Path) -> None:
    """Copy each remote host's ``<mode-dir>/<hostname>/`` folder into the local ``mode_dir``
    (through a temporary folder, so a shared file system where source and destination are
    one folder loses nothing)."""

    def fetch(where: Where) -> None:
        dest = mode_dir / where.hostname
        staging = mode_dir / f".fetch-{where.hostname}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            problem = copy_folder(where, where.path(mode_dir), where.hostname, staging)
            if problem:
                _warn(f"{where.label}: no records copied from {where.path(mode_dir)}: {problem}")
                return
            shutil.rmtree(dest, ignore_errors=True)
            (staging / where.hostname).rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    on_each(hosts, fetch)


def copy_folder(where: Where, parent: str, name: str, dest: Path) -> str | None:
    """Copy ``parent/name`` of a remote host into the local folder ``dest``: a tar stream
    over ssh, its paths quoted for the remote shell, unpacked with tarfile's ``data`` filter
    (nothing outside ``dest``, no links out, no devices). None, or what went wrong."""
    q = shlex.quote
    script = f"cd {q(parent)} && tar -cf - -- {q(name)}"
    argv = where.ssh.command(where.host or "", posix(script))
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        return str(exc)
    timer = threading.Timer(COPY_TIMEOUT_S, proc.kill)
    timer.start()
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        proc.kill()
        return f"{exc}; {proc.communicate()[1].decode(errors='replace').strip()[-300:]}"
    finally:
        timer.cancel()
    err = proc.communicate()[1].decode(errors="replace").strip()
    return f"exit {proc.returncode}: {err[-300:]}" if proc.returncode else None


def share_checkpoints(hosts: Iterable[Where], mode_dir: Path) -> None:
    """Before a restart: give every host every checkpoint file of every host. ps-lite hands
    out ranks in arrival order, so rank 0 (the parameters) and each rank's own part may come
    back on another host; this one gathers the union (a file on several hosts: the newest
    copy wins) and sends it to every remote host, adding what it lacks."""
    hosts = [w for w in hosts if w.remote]
    if not hosts:
        return
    local = layout.checkpoint_dir(mode_dir)
    local.mkdir(parents=True, exist_ok=True)
    staging = mode_dir / f".checkpoints-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for where, problem in zip(
            hosts, on_each(hosts, lambda w: _fetch_checkpoints(w, mode_dir, staging)), strict=True
        ):
            if problem:
                _warn(f"{where.label}: its checkpoints were not collected: {problem}")
        for folder in staging.glob(f"*/{layout.CHECKPOINTS_DIR}"):
            merge_newest(folder, local)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for where, problem in zip(
        hosts, on_each(hosts, lambda w: _send_checkpoints(w, local, mode_dir)), strict=True
    ):
        if problem:
            _warn(f"{where.label}: the checkpoints were not sent: {problem}")


def _fetch_checkpoints(where: Where, mode_dir: Path, staging: Path) -> str | None:
    dest = staging / where.label.replace("/", "_")
    dest.mkdir(parents=True)
    remote = where.path(mode_dir)
    made = where.run(f"mkdir -p {shlex.quote(str(layout.checkpoint_dir(remote)))}")
    if made.returncode != 0:  # a host that never wrote a checkpoint sends an empty folder
        return _last_lines(made)
    return copy_folder(where, remote, layout.CHECKPOINTS_DIR, dest)


def merge_newest(source: Path, dest: Path) -> list[str]:
    """Copy each file of ``source`` into ``dest`` unless ``dest`` has a copy at least as new
    (by modification time, which tar keeps); returns the names copied."""
    copied = []
    for path in sorted(source.iterdir()):
        if not path.is_file():
            continue
        target = dest / path.name
        if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
            continue
        shutil.copy2(path, target.with_name(f".{path.name}.part"))
        os.replace(target.with_name(f".{path.name}.part"), target)
        copied.append(path.name)
    return copied


def _send_checkpoints(where: Where, local: Path, mode_dir: Path) -> str | None:
    """The local checkpoint folder into the host's, as a tar stream over ssh; a file the
    host has already in a copy at least as new is kept (``--keep-newer-files``)."""
    q = shlex.quote
    remote = where.path(mode_dir)
    script = f"mkdir -p {q(remote)} && cd {q(remote)} && tar -xf - --keep-newer-files"
    argv = where.ssh.command(where.host or "", posix(script))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(local, arcname=layout.CHECKPOINTS_DIR)
    try:
        res = subprocess.run(
            argv, input=buffer.getvalue(), capture_output=True, timeout=COPY_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    err = res.stderr.decode(errors="replace").strip()
    return f"exit {res.returncode}: {err[-300:]}" if res.returncode else None


def checkpoint_rounds(hosts: Iterable[Where], mode_dir: Path) -> tuple[str, int] | None:
    """(host, round) of the newest complete checkpoint on any remote host, or None."""

    def rounds(where: Where) -> list[int]:
        code = (
            "import sys; from trainer import layout; print(*layout.checkpoint_rounds(sys.argv[1]))"
        )
        folder = str(layout.checkpoint_dir(where.path(mode_dir)))
        q = shlex.quote
        res = where.run(f"cd {q(where.root)} && {q(where.python)} -c {q(code)} {q(folder)}")
        return [int(r) for r in res.stdout.split()] if res.returncode == 0 else []

    hosts = list(hosts)
    found = [(w.label, max(r)) for w, r in zip(hosts, on_each(hosts, rounds), strict=True) if r]
    return max(found, key=lambda f: f[1]) if found else None
