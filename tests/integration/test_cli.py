"""Bad command lines and environments fail fast with clear messages (no hang, no traceback)."""

from __future__ import annotations

import os

import psutil

from tests.support.processes import run_py
from trainer import registry

# a cluster of 2 workers on loopback; each test changes what it is about
DMLC = {
    "DMLC_PS_ROOT_URI": "127.0.0.1",
    "DMLC_PS_ROOT_PORT": "9091",
    "DMLC_NUM_SERVER": "1",
    "DMLC_NUM_WORKER": "2",
    "DMLC_INTERFACE": "lo",
}


def test_unknown_network_lists_choices() -> None:
    res = run_py(["main.py", "-n", "vgg99"], timeout=60)
    assert res.returncode == 2
    assert "invalid choice: 'vgg99'" in res.stderr
    for name in ("lenet", "resnet18-v1", "inception-v3", "mobilenet-v2"):
        assert name in res.stderr


def test_unknown_mode_lists_choices() -> None:
    res = run_py(["main.py", "-m", "fedbogus"], timeout=60)
    assert res.returncode == 2
    assert "argument -m/--mode: invalid choice: 'fedbogus'" in res.stderr
    assert all(f"'{name}'" in res.stderr for name in registry.names()), res.stderr


def test_bad_numbers_are_argparse_errors() -> None:
    for flags, message in (
        (["--slowdown", "0.5"], "argument --slowdown: '0.5': slowdowns must be finite numbers"),
        (["-b", "0"], "argument -b/--batch-size: must be >= 1, got 0"),
        (["-dcasgd", "2"], "argument -dcasgd/--dcasgd: invalid choice: 2 (choose from 0, 1)"),
        (["-port", "70000"], "argument -port/--state-server-port: port must be in 1..65535"),
    ):
        res = run_py(["main.py", *flags], timeout=60)
        assert res.returncode == 2, flags
        assert message in res.stderr, (flags, res.stderr)
        assert "Traceback" not in res.stderr


def test_dcasgd_only_with_async() -> None:
    res = run_py(["main.py", "-m", "esync", "-dcasgd", "1"], timeout=60)
    assert res.returncode == 2 and "-dcasgd 1 applies to -m async" in res.stderr


def test_distributed_mode_without_dmlc_role_says_how_to_start() -> None:
    res = run_py(["main.py", "-m", "esync"], timeout=60)
    assert res.returncode == 2
    assert "launch.py" in res.stderr and "DMLC_ROLE=worker" in res.stderr


def test_worker_with_missing_dmlc_variables_fails_without_hanging() -> None:
    res = run_py(["main.py", "-m", "sync"], timeout=60, DMLC_ROLE="worker")
    assert res.returncode == 2
    for name in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_WORKER"):
        assert name in res.stderr


def test_server_with_inconsistent_dmlc_variables_fails() -> None:
    env = {**DMLC, "DMLC_ROLE": "server", "DMLC_PS_ROOT_PORT": "notaport", "DMLC_NUM_WORKER": "0"}
    res = run_py(["main.py"], timeout=60, **env)
    assert res.returncode == 2
    assert "DMLC_PS_ROOT_PORT='notaport' is not an integer" in res.stderr
    assert "DMLC_NUM_WORKER=0 is out of range" in res.stderr


def test_unknown_role() -> None:
    res = run_py(["main.py"], timeout=60, DMLC_ROLE="boss")
    assert res.returncode == 2 and "scheduler, server, worker" in res.stderr


def test_scheduler_unreachable_worker_times_out_with_message() -> None:
    env = {**DMLC, "DMLC_ROLE": "worker", "DMLC_PS_ROOT_PORT": "1"}
    res = run_py(["main.py", "-m", "sync", "--connect-timeout", "3"], timeout=120, **env)
    assert res.returncode == 3
    assert "did not form within 3 s" in res.stderr and "127.0.0.1:1" in res.stderr


def test_missing_data_names_path_and_files(tmp_path) -> None:
    res = run_py(["main.py", "--dataset", "fashion-mnist", "-dd", str(tmp_path)], timeout=60)
    assert res.returncode == 2
    assert str(tmp_path) in res.stderr and "train-images-idx3-ubyte" in res.stderr
    assert "Traceback" not in res.stderr


def test_launcher_rejects_bad_flags_before_starting_anything(log_dir) -> None:
    res = run_py(["launch.py", "-w", "3", "--slowdowns", "1,2", "-ld", log_dir], timeout=60)
    assert res.returncode == 2 and "2 values for 3 workers" in res.stderr
    res = run_py(["launch.py", "--compare", "esync,fedbogus", "-ld", log_dir], timeout=60)
    assert res.returncode == 2 and "unknown mode(s) fedbogus" in res.stderr
    assert f"choose from {', '.join(registry.names())}" in res.stderr
    res = run_py(["launch.py", "-n", "vgg99", "-ld", log_dir], timeout=60)
    assert res.returncode == 2 and "argument -n/--network: invalid choice: 'vgg99'" in res.stderr
    # nothing started: no process log, no run folder, no process of ours
    assert os.listdir(log_dir) == []
    assert not [p for p in psutil.process_iter(["cmdline"]) if log_dir in (p.info["cmdline"] or [])]


def test_missing_gpu_falls_back_to_cpu_with_a_warning(log_dir) -> None:
    res = run_py(
        ["main.py", "-m", "local", "-g", "7", "--rounds", "2", "-ld", log_dir], timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "GPU 7 asked for" in res.stderr and "using the CPU" in res.stderr
    assert "on cpu" in res.stdout
