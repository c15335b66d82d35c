"""Command-line flags of main.py (the upstream ESync flags, plus a few of our own)."""

from __future__ import annotations

import argparse

import config
from models import MODEL_NAMES
from trainer import registry
from trainer.layout import mode_dir_name
from utils import DATASETS


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _slowdown(text: str) -> float:
    value = _non_negative_float(text)
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"slowdown must be >= 1, got {text}")
    return value


def _flag01(text: str) -> int:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"must be 0 or 1, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of main.py; defaults come from config.py."""
    p = argparse.ArgumentParser(
        prog="main.py",
        description="ESync worker / standalone trainer. With DMLC_ROLE=scheduler|server it runs "
        "the MXNet (ps-lite) scheduler or parameter server instead.",
    )
    registry.add_mode_arguments(p, config.MODE)
    p.add_argument("-n", "--network", choices=MODEL_NAMES, default=config.NETWORK)
    p.add_argument("--dataset", choices=DATASETS, default=config.DATASET)
    p.add_argument(
        "-b",
        "--batch-size",
        dest="batch_size",
        type=_positive_int,
        default=config.BATCH_SIZE,
        help="per-worker batch size",
    )
    p.add_argument(
        "-l",
        "--learning-rate",
        dest="lr",
        type=_positive_float,
        default=config.LEARNING_RATE,
        help="SGD learning rate (sync, async, local)",
    )
    p.add_argument(
        "-ll",
        "--local-lr",
        dest="local_lr",
        type=_positive_float,
        default=None,
        help="esync: learning rate of the local steps (default: -l)",
    )
    p.add_argument(
        "-gl",
        "--global-lr",
        dest="global_lr",
        type=_positive_float,
        default=config.LEARNING_RATE_GLOBAL,
        help="esync: global step, w += gl * sum(delta) / p",
    )
    p.add_argument(
        "-s",
        "--split-by-class",
        dest="split_by_class",
        type=_flag01,
        default=config.SPLIT_BY_CLASS,
        help="1: non-iid split by class",
    )
    p.add_argument("-dd", "--data-dir", dest="data_dir", default=config.DATA_DIR)
    p.add_argument("-ld", "--log-dir", dest="log_dir", default=config.LOG_DIR)
    p.add_argument(
        "-e",
        "--eval-duration",
        dest="eval_every_rounds",
        type=_non_negative_int,
        default=config.EVAL_EVERY_ROUNDS,
        help="rank 0 evaluates every this many rounds (iterations for async/local); "
        "0: only by --eval-interval and at the end",
    )
    p.add_argument(
        "--eval-interval",
        dest="eval_interval",
        type=_non_negative_float,
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
    p.add_argument("-c", "--cpu", type=_flag01, default=config.USE_CPU, help="1: force the CPU")
    p.add_argument("-ip", "--state-server-ip", dest="ip", default=config.STATE_SERVER_IP)
    p.add_argument(
        "-port", "--state-server-port", dest="port", type=_port, default=config.STATE_SERVER_PORT
    )
    p.add_argument(
        "--epsilon",
        type=_non_negative_float,
        default=config.EPSILON,
        help="esync: Alg. 2 slack in seconds (sent by rank 0 when it resets)",
    )
    p.add_argument(
        "--rounds",
        type=_positive_int,
        default=config.ROUNDS,
        help="stop after this many global rounds (esync, sync) or iterations (async, local)",
    )
    p.add_argument(
        "--max-time",
        dest="max_time",
        type=_non_negative_float,
        default=config.MAX_TIME,
        help="stop after this many seconds (0: no limit)",
    )
    p.add_argument(
        "--slowdown",
        type=_slowdown,
        default=config.SLOWDOWN,
        help="emulate a device this many times slower: wait (S-1) x compute time after each batch",
    )
    p.add_argument("--seed", type=int, default=config.SEED)
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=config.NUM_THREADS,
        help="OMP / MKL threads of this process",
    )
    p.add_argument(
        "--checksum-every",
        dest="checksum_every",
        type=_non_negative_int,
        default=config.CHECKSUM_EVERY_ROUNDS,
        help="log a CRC32 of the global parameters every N rounds (0: never)",
    )
    p.add_argument(
        "--connect-timeout",
        dest="connect_timeout",
        type=_positive_float,
        default=config.CONNECT_TIMEOUT_S,
        help="seconds to wait for the MXNet cluster to form",
    )
    p.add_argument(
        "--state-retry",
        dest="state_retry",
        type=_positive_float,
        default=config.STATE_SERVER_RETRY_S,
        help="seconds to keep retrying an unreachable State Server",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the flags (errors exit with argparse's usage message)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.local_lr is None:
        args.local_lr = args.lr
    registry.resolve_mode(parser, args)
    return args


def run_dir_name(args: argparse.Namespace) -> str:
    """The mode-dir of a parsed command line (trainer.layout)."""
    return mode_dir_name(args.mode, bool(args.split_by_class))
