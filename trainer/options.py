"""Command-line flags of main.py (the upstream ESync flags, plus a few of our own)."""

from __future__ import annotations

import argparse

import argtypes
import config
from models import MODEL_NAMES
from trainer import registry
from trainer.evaluator import EVALUATORS
from trainer.layout import mode_dir_name
from trainer.slowdown import EMULATIONS, Schedule, ScheduleError, schedule_arg
from utils import DATASETS


def build_parser() -> argparse.ArgumentParser:
    """The parser of main.py; defaults come from config.py."""
    p = argparse.ArgumentParser(
        prog="main.py",
        description="ESync worker / standalone trainer. With DMLC_ROLE=scheduler|server it runs "
        "the MXNet (ps-lite) scheduler or parameter server instead.",
        parents=[shared_parser()],
    )
    registry.add_mode_arguments(p, config.MODE)
    p.add_argument("--dataset", choices=DATASETS, default=config.DATASET)
    p.add_argument(
        "-b",
        "--batch-size",
        dest="batch_size",
        type=argtypes.positive_int,
        default=config.BATCH_SIZE,
        help="per-worker batch size",
    )
    p.add_argument(
        "-l",
        "--learning-rate",
        dest="lr",
        type=argtypes.positive_float,
        default=config.LEARNING_RATE,
        help="SGD learning rate (the modes that step on every batch)",
    )
    p.add_argument(
        "-ll",
        "--local-lr",
        dest="local_lr",
        type=argtypes.positive_float,
        default=None,
        help="learning rate of the local steps of the model-averaging modes (default: -l)",
    )
    p.add_argument("-dd", "--data-dir", dest="data_dir", default=config.DATA_DIR)
    p.add_argument(
        "-e",
        "--eval-duration",
        dest="eval_every_rounds",
        type=argtypes.non_negative_int,
        default=config.EVAL_EVERY_ROUNDS,
        help="rank 0 evaluates every this many rounds (iterations for async/local); "
        "0: only by --eval-interval and at the end",
    )
    p.add_argument(
        "--eval-interval",
        dest="eval_interval",
        type=argtypes.non_negative_float,
        default=config.EVAL_INTERVAL,
        help="rank 0 also evaluates when this many seconds passed since the last "
        "evaluation (0: off); the same time resolution for every mode",
    )
    p.add_argument(
        "-g",
        "--gpu",
        type=int,
        default=config.DEFAULT_GPU_ID,
        help="GPU index to use when one exists (CPU otherwise)",
    )
    p.add_argument(
        "-c", "--cpu", type=argtypes.flag01, default=config.USE_CPU, help="1: force the CPU"
    )
    p.add_argument("-ip", "--state-server-ip", dest="ip", default=config.STATE_SERVER_IP)
    p.add_argument(
        "-port",
        "--state-server-port",
        dest="port",
        type=argtypes.port,
        default=config.STATE_SERVER_PORT,
    )
    p.add_argument(
        "--rounds",
        type=argtypes.positive_int,
        default=config.ROUNDS,
        help="stop after this many global rounds (esync, sync) or iterations (async, local)",
    )
    p.add_argument(
        "--max-time",
        dest="max_time",
        type=argtypes.non_negative_float,
        default=config.MAX_TIME,
        help="stop after this many seconds (0: no limit)",
    )
    p.add_argument(
        "--slowdown",
        type=schedule_arg,
        default=Schedule.constant(config.SLOWDOWN),
        metavar="S[/S1@T1...]",
        help="emulate a device S times slower: wait (S-1) x compute time after each batch; "
        "S0/S1@T1/S2@T2 changes the factor after T1, T2 seconds of training",
    )
    p.add_argument(
        "--slowdown-trace",
        dest="slowdown_trace",
        default=None,
        metavar="CSV",
        help="a CSV of 'seconds,slowdown' rows (docs/slowdown.md); replaces --slowdown",
    )
    p.add_argument(
        "--jitter",
        type=argtypes.non_negative_float,
        default=config.JITTER,
        help="multiply each batch's device time (share: each wait) by a seeded log-normal "
        "factor exp(N(0, sigma^2))",
    )
    p.add_argument("--seed", type=int, default=config.SEED)
    p.add_argument(
        "--checksum-every",
        dest="checksum_every",
        type=argtypes.non_negative_int,
        default=config.CHECKSUM_EVERY_ROUNDS,
        help="log a CRC32 of the global parameters every N rounds (0: never)",
    )
    p.add_argument(
        "--connect-timeout",
        dest="connect_timeout",
        type=argtypes.positive_float,
        default=config.CONNECT_TIMEOUT_S,
        help="seconds to wait for the MXNet cluster to form",
    )
    p.add_argument(
        "--failure-timeout",
        dest="failure_timeout",
        type=argtypes.positive_float,
        default=config.FAILURE_TIMEOUT_S,
        help="when a node of the cluster dies, every other process exits within this many "
        "seconds (exit code 5); a worker also exits when no round finished for this long "
        "(evaluation excluded), so it must exceed the slowest device's time for one round. "
        "Read by every role (docs/deployment.md)",
    )
    p.add_argument(
        "--state-retry",
        dest="state_retry",
        type=argtypes.positive_float,
        default=config.STATE_SERVER_RETRY_S,
        help="seconds to keep retrying an unreachable State Server",
    )
    p.add_argument(
        "--report-progress",
        dest="report_progress",
        default=None,
        metavar="URL",
        help="send each round's progress to this State Server's dashboard "
        "(e.g. http://127.0.0.1:10010; launch.py sets it)",
    )
    p.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=argtypes.non_negative_int,
        default=config.CHECKPOINT_EVERY_ROUNDS,
        help="write a checkpoint every N rounds and after the last one (0: never)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue after the newest checkpoint in the run's log folder",
    )
    p.add_argument(
        "--resume-override",
        dest="resume_override",
        metavar="FIELD",
        action="append",
        default=[],
        help="with --resume: accept that this run's FIELD (a hyperparameter the checkpoint "
        "recorded, e.g. lr or epsilon) differs from the checkpoint's; repeat for several",
    )
    p.add_argument(
        "--probe-device",
        dest="probe_device",
        action="store_true",
        help="time this network's training batch on this process, print it as JSON, exit "
        "(launch.py calibrates the device unit with it)",
    )
    p.add_argument(
        "--evaluate",
        metavar="PATH",
        default=None,
        help="load a saved model (model.params or a checkpoint's .params) and print its test "
        "accuracy, then exit",
    )
    add_algorithm_arguments(p)
    return p


def shared_parser() -> argparse.ArgumentParser:
    """The flags main.py and launch.py both read, as a ``parents=[...]`` parser of both: the
    launcher uses them itself and hands them on to every main.py (one definition, so one
    type check, default and help text)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-n", "--network", choices=MODEL_NAMES, default=config.NETWORK)
    p.add_argument("-ld", "--log-dir", dest="log_dir", default=config.LOG_DIR)
    p.add_argument(
        "-s",
        "--split-by-class",
        dest="split_by_class",
        type=argtypes.flag01,
        default=config.SPLIT_BY_CLASS,
        help="1: non-iid split by class",
    )
    p.add_argument(
        "--threads",
        type=argtypes.positive_int,
        default=config.NUM_THREADS,
        help="OMP / MKL threads of a trainer process",
    )
    add_emulation_arguments(p)
    return p


def add_emulation_arguments(p: argparse.ArgumentParser) -> None:
    """How devices are emulated (trainer/slowdown.py) and where rank 0 evaluates."""
    p.add_argument(
        "--emulation",
        choices=EMULATIONS,
        default=config.EMULATION,
        help="device: every batch takes S x T0 seconds (compute, then sleep to the deadline; "
        "misses are counted as overruns); share: wait (S-1) x the measured compute time; "
        "none: no emulation (real devices)",
    )
    p.add_argument(
        "--device-unit",
        dest="device_unit",
        type=argtypes.positive_float,
        default=config.DEVICE_UNIT_S,
        metavar="SECONDS",
        help="device emulation: T0, the seconds per batch of a slowdown-1 device (default: "
        "calibrated by launch.py for the cluster, or by rank 0 for one device)",
    )
    p.add_argument(
        "--evaluator",
        choices=EVALUATORS,
        default=config.EVALUATOR,
        help="process: rank 0 hands parameter snapshots to a separate evaluator process "
        "(evaluation is never device time); inline: rank 0 evaluates itself",
    )


def add_algorithm_arguments(p: argparse.ArgumentParser) -> None:
    """The algorithms' own flags: every registered mode's strategy class (and its pacing
    policy) adds its flags, each owning class once, in a group titled with the modes that
    read them (trainer/strategy.py: ``add_arguments``)."""
    users: dict[type, list[str]] = {}
    for spec in registry.MODES.values():
        for owner in spec.load().flag_owners():
            users.setdefault(owner, []).append(spec.name)
    for owner, modes in users.items():
        owner.add_arguments(p.add_argument_group(f"{', '.join(modes)} ({owner.__name__})"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the flags (errors exit with argparse's usage message)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.local_lr is None:
        args.local_lr = args.lr
    registry.resolve_mode(parser, args)
    if args.slowdown_trace:
        try:
            args.slowdown = Schedule.from_trace(args.slowdown_trace)
        except ScheduleError as exc:
            parser.error(f"argument --slowdown-trace: {exc}")
    return args


def run_dir_name(args: argparse.Namespace) -> str:
    """The mode-dir of a parsed command line (trainer.layout)."""
    return mode_dir_name(args.mode, bool(args.split_by_class))
