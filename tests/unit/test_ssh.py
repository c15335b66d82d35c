"""launcher/ssh.py in process: the host file parser (good lines, and bad ones named by line
number), placing the slowdowns, the probe's aggregation of every host's problems (a fake ssh
runner), the output prefix and the paths of this checkout on a remote host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from launcher import ssh as remote
from launcher.supervision import PYTHON, ROOT


def test_hostfile_lines_comments_and_defaults() -> None:
    text = """
# the cluster
nodeA slots=2 slowdown=1,4   # two workers
user@nodeB

127.0.0.3 slowdown=1/16@30 slots=3
"""
    hosts = remote.parse_hostfile(text, "h.txt")
    assert hosts == [
        remote.HostLine("nodeA", 2, ("1", "4"), 3),
        remote.HostLine("user@nodeB", 1, (), 4),
        remote.HostLine("127.0.0.3", 3, ("1/16@30",) * 3, 6),
    ]


def test_the_documented_host_file_parses() -> None:
    doc = (Path(ROOT) / "docs" / "deployment.md").read_text()
    block = doc.split("# hosts.txt\n", 1)[1].split("```", 1)[0]
    hosts = remote.parse_hostfile(block, "docs")
    assert [(h.host, h.slots, h.slowdowns, h.servers) for h in hosts] == [
        ("gpu-node1", 2, ("1", "1"), 0),
        ("cpu-node2", 2, ("4", "4"), 1),
        ("me@cpu-node3", 1, (), 0),
        ("cpu-node4", 0, (), 2),
    ]


def test_hostfile_errors_name_every_bad_line() -> None:
    text = "\n".join(
        [
            "good slots=1",
            "bad1 slots=zero",
            "bad2 slots=0",
            "bad3 cores=4",
            "bad4 slowdown=1,2,3 slots=2",
            "bad5 slowdown=0.5",
            "-oProxyCommand=x",
            "bad7 slots=1 slots=2",
            "bad8 slowdown=missing.csv",
        ]
    )
    with pytest.raises(remote.HostfileError) as caught:
        remote.parse_hostfile(text, "hosts.txt")
    lines = str(caught.value).splitlines()
    assert [line.split(":")[1] for line in lines] == ["2", "3", "4", "5", "6", "7", "8", "9"]
    assert all(line.startswith("hosts.txt:") for line in lines)
    assert "not a whole number" in lines[0] and "at least 1" in lines[1]
    assert "unknown field 'cores=4'" in lines[2] and "3 entries for slots=2" in lines[3]
    assert "is not a host" in lines[5] and "given twice" in lines[6]
    with pytest.raises(remote.HostfileError, match="no host in it"):
        remote.parse_hostfile("# nothing\n\n", "empty.txt")


def test_slowdowns_come_from_the_host_file_or_from_slowdowns() -> None:
    hosts = remote.parse_hostfile("a slots=2 slowdown=1,4\nb\nc slots=2")
    assert remote.assign_slowdowns(hosts, ["2"]) == [
        ("a", "1"),
        ("a", "4"),
        ("b", "2"),
        ("c", "2"),
        ("c", "2"),
    ]
    plain = remote.parse_hostfile("a slots=2\nb")
    assert remote.assign_slowdowns(plain, ["1", "2", "3"]) == [("a", "1"), ("a", "2"), ("b", "3")]
    with pytest.raises(ValueError, match="either in the host file or in --slowdowns"):
        remote.assign_slowdowns(hosts, ["1"] * 5)
    with pytest.raises(ValueError, match="2 entries for 3 slots"):
        remote.assign_slowdowns(plain, ["1", "2"])


def _probe_output(hostname: str, *, root=True, python=True, links="lo eth0", inet=True) -> str:
    lines = [f"ESYNC-HOSTNAME {hostname}"]
    lines += ["ESYNC-ROOT"] * root + ["ESYNC-PYTHON"] * python + [f"ESYNC-LINKS {links} "]
    if inet:
        lines.append("ESYNC-INET 2: eth0    inet 10.1.0.7/24 brd 10.1.0.255 scope global eth0")
    return "\n".join(lines) + "\n"


def test_probe_reports_every_problem_of_every_host_at_once() -> None:
    answers = {
        "ok": (0, _probe_output("node-ok"), ""),
        "down": (255, "", "ssh: connect to host down port 22: No route to host\n"),
        "nokey": (255, "", "root@nokey: Permission denied (publickey).\n"),
        "bare": (0, _probe_output("node-bare", root=False, python=False), ""),
        "noif": (0, _probe_output("node-noif", links="lo ens5", inet=False), ""),
        "twin1": (0, _probe_output("twin"), ""),
        "twin2": (0, _probe_output("twin"), ""),
    }
    seen = []

    def fake_ssh(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        host = argv[argv.index("--") + 1]
        seen.append(argv)
        code, out, err = answers[host]
        return subprocess.CompletedProcess(argv, code, out, err)

    ssh = remote.Ssh(("IdentityFile=/k",))
    with pytest.raises(remote.ProbeError) as caught:
        remote.probe_hosts([*answers, "ok"], ssh, "/srv/esync", "/srv/esync/.venv/bin/python",
                           "eth0", runner=fake_ssh)  # fmt: skip
    text = str(caught.value)
    assert len(seen) == len(answers)  # one ssh command per host, duplicates probed once
    assert all(a[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "IdentityFile=/k"] for a in seen)
    assert "down: ssh failed: ssh: connect to host down port 22: No route to host" in text
    assert "nokey: ssh failed: root@nokey: Permission denied (publickey)." in text
    assert "bare: no checkout of this repository at /srv/esync" in text
    assert "bare: no python at /srv/esync/.venv/bin/python" in text
    assert "noif: no interface eth0 (it has: lo, ens5)" in text
    assert "twin1, twin2: all have the hostname 'twin'" in text
    assert "ok:" not in text

    found = remote.probe_hosts(["ok"], ssh, "/srv/esync", "/py", "eth0", runner=fake_ssh)
    assert found["ok"].hostname == "node-ok" and found["ok"].address == "10.1.0.7"


def test_probe_counts_a_timeout_as_a_problem() -> None:
    def slow(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        raise subprocess.TimeoutExpired(argv, timeout)

    with pytest.raises(remote.ProbeError, match="h: ssh failed: no answer within 5 s"):
        remote.probe_hosts(["h"], remote.Ssh(), "/r", "/p", "eth0", runner=slow, timeout=5)


def test_output_lines_get_the_host_and_then_the_rank() -> None:
    prefix = remote.LinePrefix("hostB")
    assert prefix("loading") == "hostB: loading"
    line = "[worker 2/4] joined the MXNet cluster"
    assert prefix(line) == f"hostB: {line}"
    assert prefix("[Iteration 3] Test Acc 0.9") == "hostB: rank 2: [Iteration 3] Test Acc 0.9"


def test_paths_of_this_checkout_move_to_the_remote_root() -> None:
    where = remote.Where("h", "h", "/srv/esync", "/srv/esync/.venv/bin/python")
    assert where.argv([PYTHON, "main.py", "-ld", f"{ROOT}/logs", "-dd", "/data"]) == [
        "/srv/esync/.venv/bin/python",
        "main.py",
        "-ld",
        "/srv/esync/logs",
        "-dd",
        "/data",
    ]
    assert where.path("logs/lenet") == "/srv/esync/logs/lenet"  # main.py runs from the root
    assert where.path("/scratch/logs") == "/scratch/logs"
    assert remote.Where().path(f"{ROOT}/logs") == f"{ROOT}/logs"


def test_merging_checkpoints_keeps_the_newest_copy_of_each_file(tmp_path) -> None:
    source, dest = tmp_path / "from", tmp_path / "to"
    source.mkdir()
    dest.mkdir()
    for folder, name, text, mtime in [
        (source, "round-00000010.rank1.json", "theirs, newer", 2000),
        (dest, "round-00000010.rank1.json", "ours, older", 1000),
        (source, "round-00000010.params", "theirs, older", 1000),
        (dest, "round-00000010.params", "ours, newer", 2000),
        (source, "round-00000010.json", "only theirs", 1500),
    ]:
        (folder / name).write_text(text)
        os.utime(folder / name, (mtime, mtime))
    copied = remote.merge_newest(source, dest)
    assert sorted(copied) == ["round-00000010.json", "round-00000010.rank1.json"]
    assert (dest / "round-00000010.rank1.json").read_text() == "theirs, newer"
    assert (dest / "round-00000010.params").read_text() == "ours, newer"
    assert (dest / "round-00000010.json").stat().st_mtime == 1500  # kept for the next merge
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in source.iterdir())
