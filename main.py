"""ESync entry point: a worker or standalone trainer, or the MXNet scheduler / server.

    python main.py -m local -n lenet                        # standalone, one device
    DMLC_ROLE=scheduler DMLC_PS_ROOT_URI=... python main.py # ps-lite scheduler
    DMLC_ROLE=server    DMLC_PS_ROOT_URI=... python main.py # parameter server
    DMLC_ROLE=worker    DMLC_PS_ROOT_URI=... python main.py -m esync -n lenet

``python launch.py`` starts a whole cluster on this machine.
"""

from __future__ import annotations

import os
import sys


def _limit_threads(threads: int) -> None:
    """OMP / MKL / OpenBLAS threads of this process, unless the environment already says."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))


def _threads_flag(argv: list[str] | None) -> int:
    """The value of --threads, read before the full parser (which imports MXNet)."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int, default=1)
    known, _ = pre.parse_known_args(argv)
    return max(1, known.threads)


def _failure_timeout_flag(argv: list[str] | None) -> float:
    """--failure-timeout of a scheduler or server: the one flag these roles read (the slides
    pass the workers' command line to every role; launch.py passes only this one)."""
    import argparse

    import config

    def seconds(text: str) -> float:
        value = float(text)
        if not 0.0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value

    pre = argparse.ArgumentParser(prog="main.py", add_help=False)
    pre.add_argument("--failure-timeout", type=seconds, default=config.FAILURE_TIMEOUT_S)
    known, _ = pre.parse_known_args(argv)
    return known.failure_timeout


def main(argv: list[str] | None = None) -> int:
    """Dispatch on DMLC_ROLE; returns the exit code."""
    from trainer.cluster import ClusterConfigError, dmlc_role

    try:
        role = dmlc_role()
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if role in ("scheduler", "server"):
        # ``import mxnet`` would run these roles, so check the environment before anything
        # imports it; of the worker flags the slides also pass to them, only
        # --failure-timeout is read (trainer/cluster.py, trainer/watchdog.py).
        _limit_threads(1)
        try:
            from trainer.cluster import run_scheduler_or_server

            return run_scheduler_or_server(role, _failure_timeout_flag(argv))
        except ClusterConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    _limit_threads(_threads_flag(argv))  # before anything loads MXNet's OpenMP runtime
    from trainer import registry
    from trainer.options import parse_args

    args = parse_args(argv)
    if args.probe_device:
        from trainer.calibrate import probe_main

        return probe_main(args)
    if args.evaluate:
        return _train(args, distributed=False)
    distributed = registry.get(args.mode).distributed
    if role is None and distributed:
        print(
            f"error: -m {args.mode} is distributed: start it with launch.py, or run this "
            "command with DMLC_ROLE=worker and the DMLC_* variables (docs/deployment.md)",
            file=sys.stderr,
        )
        return 2
    if role == "worker" and not distributed:
        print(f"error: -m {args.mode} is standalone; unset DMLC_ROLE", file=sys.stderr)
        return 2
    if distributed:
        from trainer.watchdog import configure_worker

        configure_worker(args)  # ps-lite heartbeats on, before the KVStore starts ps-lite
    return _train(args, distributed)


def _train(args, distributed: bool) -> int:
    """Train (or ``--evaluate``); errors become exit codes with one clear message."""
    import config
    from trainer.checkpoint import DISK_FULL_ERRNOS, CheckpointError, DiskFullError
    from trainer.cluster import ClusterConfigError as ConfigError
    from trainer.loop import evaluate_saved, run
    from trainer.state_client import StateServerError
    from utils import DatasetError

    try:
        return evaluate_saved(args) if args.evaluate else run(args, distributed=distributed)
    except DiskFullError as exc:
        return _fail(f"error: {exc}", config.EXIT_DISK_FULL, distributed)
    except (DatasetError, ConfigError, CheckpointError) as exc:
        return _fail(f"error: {exc}", config.EXIT_USAGE, distributed)
    except StateServerError as exc:
        return _fail(f"error: State Server: {exc}", 4, distributed)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:  # records, logs
            return _fail(f"error: the disk is full: {exc}", config.EXIT_DISK_FULL, distributed)
        if not distributed:
            raise
        import traceback

        return _fail(traceback.format_exc(), 1, distributed)


def _fail(message: str, code: int, distributed: bool) -> int:
    """Report an error; a distributed worker then exits at once.

    Exiting normally would run the KVStore's destructor, whose barrier waits for the other
    workers forever; the launcher (or the operator) has to see this worker die instead.
    """
    print(message, file=sys.stderr, flush=True)
    if distributed:
        sys.stdout.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
