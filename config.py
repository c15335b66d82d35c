"""Defaults for every command-line flag of main.py and launch.py.

Edit these to change a default; every value can also be overridden on the command line
(``python main.py --help`` lists the flags). Names follow the upstream ESync config.
"""

from __future__ import annotations

import os

# --- training -------------------------------------------------------------------------
MODE = "local"  # esync | sync | async | local
NETWORK = "lenet"  # see models.MODEL_NAMES
DATASET = "digits"  # digits | fashion-mnist | cifar10
BATCH_SIZE = 64
USE_DCASGD = 0  # 1: async mode runs MXNet's DC-ASGD optimizer on the server
SPLIT_BY_CLASS = 0  # 1: non-iid split, contiguous shards of the label-sorted training set
SEED = 42

# --- optimiser ------------------------------------------------------------------------
LEARNING_RATE = 0.05  # -l: SGD learning rate of sync / async / local
LEARNING_RATE_LOCAL = LEARNING_RATE  # -ll: esync local SGD steps on the replica
LEARNING_RATE_GLOBAL = 1.0  # -gl: esync global step, w += gl * sum(delta) / p

# --- stopping and evaluation ----------------------------------------------------------
ROUNDS = 200  # global rounds (esync / sync) or iterations (async / local)
MAX_TIME = 0.0  # seconds; 0 means no time limit
EVAL_DURATION = 10  # -e: evaluate every this many rounds / iterations (0: off)
EVAL_INTERVAL = 0.0  # --eval-interval: also evaluate every this many seconds (0: off)

# --- paths ----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(ROOT, "data")
LOG_DIR = os.path.join(ROOT, "logs")

# --- devices --------------------------------------------------------------------------
USE_CPU = 0  # -c 1 forces the CPU even when a GPU exists
DEFAULT_GPU_ID = None  # -g N asks for GPU N; ignored (with a warning) when none exists
NUM_THREADS = 1  # OMP / MKL threads per worker process

# --- emulated heterogeneity -----------------------------------------------------------
SLOWDOWN = 1.0  # a worker waits (S - 1) x its measured compute time after each batch

# --- state server ---------------------------------------------------------------------
STATE_SERVER_IP = "127.0.0.1"
STATE_SERVER_PORT = 10010
EPSILON = 0.0  # Alg. 2 slack in seconds, c_asker + epsilon > rest of the slowest
STATE_SERVER_RETRY_S = 60.0  # how long a worker retries an unreachable State Server


def state_server_url(ip: str = STATE_SERVER_IP, port: int = STATE_SERVER_PORT) -> str:
    """Base URL of the State Server, e.g. ``http://127.0.0.1:10010``."""
    return f"http://{ip}:{port}"
