"""A full disk is one clear error that --max-restarts does not retry: a real cluster whose log
folder is a 300 KiB tmpfs (in a mount namespace of its own, so nothing outside sees it) runs
out of space at its first checkpoint."""

from __future__ import annotations

import os
import shutil

import psutil
import pytest

import config
from tests.support.processes import (
    PYTHON,
    clean_env,
    communicate_or_kill,
    popen_in_session,
    with_test_device_unit,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="a tmpfs in a mount namespace needs root and unshare",
    ),
]

# Mount a small tmpfs on the log folder, inside a private mount namespace, then run the command
# ("$0" is the folder, "$@" the command): the namespace goes when its last process exits.
ON_SMALL_DISK = 'mount -t tmpfs -o size=300k tmpfs "$0" && exec "$@"'


def test_a_full_disk_stops_the_run_once_with_exit_code_6(tmp_path) -> None:
    log_dir = tmp_path / "small"
    log_dir.mkdir()
    launch = ["launch.py", "-w", "2", "--slowdowns", "1,1", "-m", "sync", "-n", "lenet"]
    launch += ["--rounds", "40", "--checkpoint-every", "20", "-e", "0", "--max-restarts", "2"]
    launch += ["-ld", str(log_dir)]
    argv = ["unshare", "-m", "sh", "-c", ON_SMALL_DISK, str(log_dir), PYTHON]
    proc = popen_in_session(argv + with_test_device_unit(launch), clean_env())
    out, err, timed_out = communicate_or_kill(proc, 240)
    assert not timed_out, out + err
    assert proc.returncode == 1, out + err
    assert f"exited with code {config.EXIT_DISK_FULL}" in err
    assert "round-00000020.params: cannot write it, the disk is full" in err
    assert "is not restarted: a restart cannot fix it" in err and "restart 1 of" not in err
    assert "Traceback" not in err
    assert not any(log_dir.iterdir())  # the tmpfs went with its namespace; nothing leaked here
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(log_dir) in str(p.info)]
    assert not left, f"processes of the run left behind: {left}"
