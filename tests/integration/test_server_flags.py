"""Bad ``--servers``, ``--bigarray-bound`` and host-file ``servers=`` values: a clear error
(exit code 2) naming the value, and nothing started."""

from __future__ import annotations

import pytest

from launcher import ssh
from tests.support.processes import run_py

BAD_FLAGS = {  # launch.py flags -> what its error says
    "--servers 0": "--servers: must be in 1..64, got 0",
    "--servers 65": "--servers: must be in 1..64, got 65",
    "--servers two": "--servers: invalid server_count value: 'two'",
    "--bigarray-bound 0": "--bigarray-bound: must be >= 1, got 0",
}


@pytest.mark.parametrize("flags", BAD_FLAGS)
def test_a_bad_server_flag_is_refused_before_anything_starts(tmp_path, flags) -> None:
    res = run_py(["launch.py", *flags.split(), "-ld", str(tmp_path / "logs")], timeout=60)
    assert res.returncode == 2 and BAD_FLAGS[flags] in res.stderr, res.stderr
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("hostfile", "extra", "message"),
    [
        ("a slots=1 servers=x\n", [], "hosts:1: servers=x: not a whole number >= 0"),
        ("a slots=0\n", [], "hosts:1: slots=0: must be at least 1 (or 0 on a line with servers=N)"),
        ("a slots=0 servers=1\n", [], "has no worker (every line says slots=0)"),
        ("a slots=0 servers=1 slowdown=2\n", [], "slowdown= on a line without workers"),
        ("a servers=2\nb\n", ["--servers", "1"], "--servers 1, but"),
        ("a servers=65\n", [], "hosts:1: servers=65: at most 64"),
    ],
)
def test_a_bad_servers_entry_names_its_line(tmp_path, hostfile, extra, message) -> None:
    path = tmp_path / "hosts"
    path.write_text(hostfile)
    argv = ["launch.py", "-H", str(path), "--interface", "eth0", *extra]
    res = run_py([*argv, "-ld", str(tmp_path / "logs")], timeout=60)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "logs").exists()


def test_servers_entries_place_the_servers_in_host_file_order() -> None:
    hosts = ssh.parse_hostfile("a slots=0 servers=1\nb slots=1 servers=2\nc slots=2\n")
    assert [(h.host, h.slots, h.servers) for h in hosts] == [("a", 0, 1), ("b", 1, 2), ("c", 2, 0)]
    assert ssh.assign_slowdowns(hosts, ["1"]) == [("b", "1"), ("c", "1"), ("c", "1")]


def test_a_plan_puts_one_server_with_the_services_unless_told() -> None:
    here = ssh.Where()
    assert ssh.Plan(here, [(here, "1")]).server_places() == [here]
    assert ssh.Plan(here, [(here, "1")], servers=[here, here]).server_places() == [here, here]


def test_the_local_launcher_names_its_servers() -> None:
    from launcher.local import server_name

    assert server_name(0, 1) == "server"
    assert [server_name(i, 3) for i in range(3)] == ["server0", "server1", "server2"]
