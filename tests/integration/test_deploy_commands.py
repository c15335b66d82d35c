"""The deployment files checked with processes: the system libraries that MXNet's wheel links
against (``ldd`` and ``dpkg``) are exactly those the Dockerfile installs on top of the slim
image, and the Dockerfile's default command runs (a standalone main.py). The files themselves
are tests/unit/test_deploy_files.py's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from launcher.supervision import PYTHON, child_env
from tests.support.deploy_files import (
    ROOT,
    Instruction,
    dockerfile,
    dockerfile_entrypoint,
    flag_value,
    instructions,
    shell_commands,
    with_flags,
)

# Debian packages of python:3.11-slim (bookworm) that provide libraries MXNet links against.
SLIM_IMAGE_PACKAGES = frozenset({"libc6", "libgcc-s1", "libstdc++6", "zlib1g"})


def _apt_packages(runs: Sequence[Instruction]) -> list[str]:
    pkgs: list[str] = []
    for ins in runs:
        for cmd in shell_commands(ins["value"]):
            if cmd[:1] in (["apt-get"], ["apt"]) and "install" in cmd:
                pkgs += [t for t in cmd[cmd.index("install") + 1 :] if not t.startswith("-")]
    return pkgs


def _mxnet_system_packages() -> set[str]:
    """Debian packages providing the libraries libmxnet.so loads from outside the wheel."""
    import mxnet

    lib = Path(mxnet.__file__).parent / "libmxnet.so"
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=True).stdout
    site = str(Path(mxnet.__file__).parents[1])
    packages: set[str] = set()
    for line in out.splitlines():
        match = re.match(r"\s*(\S+) => (\S+)", line)
        if not match or match.group(2).startswith(site):
            continue
        assert match.group(2) != "not", f"libmxnet.so: {match.group(1)} not found"
        path = os.path.realpath(match.group(2))
        candidates = [path, match.group(2)]
        candidates += [
            p.replace("/usr/lib/", "/lib/", 1) for p in candidates if p.startswith("/usr/lib/")
        ]
        candidates += ["/usr" + p for p in candidates if p.startswith("/lib/")]
        for cand in candidates:
            res = subprocess.run(["dpkg", "-S", cand], capture_output=True, text=True)
            if res.returncode == 0:
                packages.add(res.stdout.split(":")[0])
                break
        else:
            pytest.fail(f"no Debian package owns {match.group(2)}")
    return packages


@pytest.mark.skipif(
    shutil.which("ldd") is None or shutil.which("dpkg") is None,
    reason="needs ldd and dpkg (a Debian-based system) to map libraries",
)
def test_dockerfile_apt_packages_are_what_mxnet_needs_beyond_the_slim_image() -> None:
    needed = _mxnet_system_packages() - SLIM_IMAGE_PACKAGES
    installed = _apt_packages(instructions(dockerfile(), "RUN"))
    assert len(installed) == len(set(installed))
    assert set(installed) == needed, (
        f"apt-get installs {sorted(installed)}; libmxnet.so needs {sorted(needed)} beyond "
        f"python:3.11-slim's {sorted(SLIM_IMAGE_PACKAGES)}"
    )


@pytest.mark.slow
def test_dockerfile_default_command_runs(tmp_path: Path) -> None:
    """The image's default command, with the data and log folders moved into tmp_path."""
    entry, cmd = dockerfile_entrypoint()
    argv = [
        PYTHON,
        *with_flags(entry[1:], {"-dd": str(tmp_path / "data")}),
        *cmd,
        "-ld",
        str(tmp_path / "logs"),
    ]
    run = subprocess.run(
        argv, cwd=ROOT, env=child_env(1), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rounds = list((tmp_path / "logs" / "lenet" / "local").glob("*/*-rank0/rounds.jsonl"))
    assert len(rounds) == 1
    records = [json.loads(line) for line in rounds[0].read_text().splitlines()]
    assert records[-1]["round"] == int(flag_value(cmd, "--rounds"))
    assert "test_acc" in records[-1]
