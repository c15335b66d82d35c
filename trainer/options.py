"""Command-line flags of main.py (the upstream ESync flags, plus a few of our own)."""

from __future__ import annotations

import argparse

import config
from argtypes import flag01 as _flag01
from argtypes import non_negative_float as _non_negative_float
from argtypes import non_negative_int as _non_negative_int
from argtypes import port as _port
from argtypes import positive_float as _positive_float
from argtypes import positive_int as _positive_int
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
    p.add_argument("-dd", "--data-dir", dest="data_dir", default=config.DATA_DIR)
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
        type=_non_negative_float,
        default=config.JITTER,
        help="multiply each batch's device time (share: each wait) by a seeded log-normal "
        "factor exp(N(0, sigma^2))",
    )
    p.add_argument("--seed", type=int, default=config.SEED)
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
        "--failure-timeout",
        dest="failure_timeout",
        type=_positive_float,
        default=config.FAILURE_TIMEOUT_S,
        help="when a node of the cluster dies, every other process exits within this many "
        "seconds (exit code 5); a worker also exits when no round finished for this long "
        "(evaluation excluded), so it must exceed the slowest device's time for one round. "
        "Read by every role (docs/deployment.md)",
    )
    p.add_argument(
        "--state-retry",
        dest="state_retry",
        type=_positive_float,
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
        type=_non_negative_int,
        default=config.CHECKPOINT_EVERY_ROUNDS,
        help="write a checkpoint every N rounds and after the last one (0: never)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue after the newest checkpoint in the run's log folder",
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
        type=_flag01,
        default=config.SPLIT_BY_CLASS,
        help="1: non-iid split by class",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
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
        type=_positive_float,
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


def _unit_interval(text: str) -> float:
    value = _non_negative_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _momentum(text: str) -> float:
    value = _non_negative_float(text)
    if not value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_algorithm_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of particular algorithms (the modes that do not use one ignore it)."""
    p.add_argument(
        "--state-protocol",
        dest="state_protocol",
        choices=("blocking", "nonblocking"),
        default=config.STATE_PROTOCOL,
        help="esync: blocking asks the State Server before every local iteration (Alg. 2 as "
        "written); nonblocking hands progress over and is told when to sync (delayed ACK)",
    )
    p.add_argument(
        "--fill-last-batch",
        dest="fill_last_batch",
        type=_flag01,
        default=config.FILL_LAST_BATCH,
        help="esync, 1: compute a smaller last batch sized to the time left instead of idling",
    )
    add_federated_arguments(p)


def add_federated_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the journal paper's baselines and the ESync variants (trainer/federated.py)."""
    p.add_argument(
        "--local-steps",
        dest="local_steps",
        type=_positive_int,
        default=config.LOCAL_STEPS,
        help="fedavg, fedasync: local SGD steps between synchronisations (E)",
    )
    p.add_argument(
        "--alpha",
        type=_unit_interval,
        default=config.FEDASYNC_ALPHA,
        help="fedasync: mixing weight alpha in (0, 1]",
    )
    p.add_argument(
        "--staleness",
        choices=("constant", "polynomial", "hinge"),
        default=config.FEDASYNC_STALENESS,
        help="fedasync: staleness function s(t): constant 1, polynomial (t+1)^-a, hinge "
        "(1 if t <= b else 1/(a(t-b)+1))",
    )
    p.add_argument(
        "--staleness-a",
        dest="staleness_a",
        type=_non_negative_float,
        default=config.FEDASYNC_STALENESS_A,
        help="fedasync: a of the polynomial / hinge staleness function",
    )
    p.add_argument(
        "--staleness-b",
        dest="staleness_b",
        type=_non_negative_float,
        default=config.FEDASYNC_STALENESS_B,
        help="fedasync: b of the hinge staleness function",
    )
    p.add_argument(
        "--mu",
        type=_non_negative_float,
        default=config.PROX_MU,
        help="esync-prox, fedavg: FedProx proximal term mu/2 * ||w - w_global||^2",
    )
    p.add_argument(
        "--server-momentum",
        dest="server_momentum",
        type=_momentum,
        default=config.SERVER_MOMENTUM,
        help="esync-m: beta of the momentum on the global step, v = beta v + sum(dw) / p, "
        "w += gl v (default: config.ESYNC_M_MOMENTUM)",
    )


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
