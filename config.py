"""Defaults of every command-line flag of main.py, launch.py, summary.py, draw.py and report.py.

Edit these to change a default; every value can also be overridden on the command line
(``python main.py --help`` lists the flags). Names follow the upstream ESync config.
"""

from __future__ import annotations

import os

# --- training -------------------------------------------------------------------------
MODE = "local"  # -m: a name of trainer.registry.MODES
NETWORK = "lenet"  # see models.MODEL_NAMES
DATASET = "digits"  # digits | fashion-mnist | cifar10
BATCH_SIZE = 64
SPLIT_BY_CLASS = 0  # 1: non-iid split, contiguous shards of the label-sorted training set
SEED = 42

# --- optimiser ------------------------------------------------------------------------
LEARNING_RATE = 0.05  # -l: SGD learning rate; -ll (esync local steps) defaults to it
LEARNING_RATE_GLOBAL = 1.0  # -gl: esync global step, w += gl * sum(delta) / p

# --- stopping and evaluation ----------------------------------------------------------
ROUNDS = 200  # global rounds (esync / sync) or iterations (async / local)
MAX_TIME = 0.0  # seconds; 0 means no time limit
EVAL_EVERY_ROUNDS = 10  # -e/--eval-duration: evaluate every this many rounds (0: off)
EVAL_INTERVAL = 0.0  # --eval-interval: also evaluate every this many seconds (0: off)
CHECKSUM_EVERY_ROUNDS = 1  # --checksum-every: CRC32 of the global parameters (0: never)

# --- paths ----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(ROOT, "data")
LOG_DIR = os.path.join(ROOT, "logs")
REPORT_LOG_DIR = "logs"  # -b of summary.py / draw.py / report.py (relative to the cwd)

# --- devices --------------------------------------------------------------------------
USE_CPU = 0  # -c 1 forces the CPU even when a GPU exists
DEFAULT_GPU_ID = None  # -g N asks for GPU N; ignored (with a warning) when none exists
NUM_THREADS = 1  # OMP / MKL threads per worker process

# --- emulated heterogeneity -----------------------------------------------------------
SLOWDOWN = 1.0  # a worker waits (S - 1) x its measured compute time after each batch

# --- MXNet cluster --------------------------------------------------------------------
CONNECT_TIMEOUT_S = 120.0  # --connect-timeout: a worker gives up joining the cluster

# --- state server ---------------------------------------------------------------------
STATE_SERVER_IP = "127.0.0.1"
STATE_SERVER_PORT = 10010
EPSILON = 0.0  # Alg. 2 slack in seconds, c_asker + epsilon > rest of the slowest
STATE_SERVER_RETRY_S = 60.0  # how long a worker retries an unreachable State Server
STATE_SERVER_KIND = "runserver"  # launch.py --state-server: runserver | gunicorn
STATE_SERVER_START_S = 60.0  # how long launch.py waits for its State Server to answer

# --- launch.py ------------------------------------------------------------------------
WORKERS = 4  # -w
SLOWDOWNS = "1"  # --slowdowns: one factor for every worker, or one per worker
LAUNCH_MODE = "esync"  # -m of launch.py
RUN_TIMEOUT_S = 0.0  # --timeout: fail a mode that runs longer (0: no limit)
PS_EXIT_GRACE_S = 30.0  # after the workers finish, the scheduler/server must exit within this
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this many seconds

# --- reports --------------------------------------------------------------------------
TARGET_ACCURACY = 0.9  # --target: accuracy of the time-to-accuracy comparisons
