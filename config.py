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
LEARNING_RATE = 0.05  # -l: SGD learning rate; -ll (the local steps) defaults to it

# --- stopping and evaluation ----------------------------------------------------------
ROUNDS = 200  # global rounds (esync / sync) or iterations (async / local)
MAX_TIME = 0.0  # seconds; 0 means no time limit
EVAL_EVERY_ROUNDS = 10  # -e/--eval-duration: evaluate every this many rounds (0: off)
EVAL_INTERVAL = 0.0  # --eval-interval: also evaluate every this many seconds (0: off)
CHECKSUM_EVERY_ROUNDS = 1  # --checksum-every: CRC32 of the global parameters (0: never)
CHECKPOINT_EVERY_ROUNDS = 20  # --checkpoint-every: write a checkpoint every N rounds (0: never)
CHECKPOINTS_KEPT = 3  # the newest checkpoints kept; older ones are deleted

# Exit codes of main.py (docs/faults.md). launch.py's --max-restarts does not restart after
# the ones a restart cannot fix.
EXIT_USAGE = 2  # a bad flag, data set or cluster setting, or a checkpoint of another run
EXIT_DISK_FULL = 6  # a checkpoint, model or record could not be written: no space left
EXIT_NOT_RETRIED = (EXIT_USAGE, EXIT_DISK_FULL)

# --- algorithms -----------------------------------------------------------------------
# Each algorithm's own defaults are attributes of its strategy class (trainer/modes.py,
# trainer/federated.py) and of its pacing policy (trainer/pacing.py), next to its flags.

# --- paths ----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(ROOT, "data")
LOG_DIR = os.path.join(ROOT, "logs")
REPORT_LOG_DIR = "logs"  # -b of summary.py / draw.py / report.py (relative to the cwd)

# --- devices --------------------------------------------------------------------------
USE_CPU = 0  # -c 1 forces the CPU even when a GPU exists
DEFAULT_GPU_ID = None  # -g N asks for GPU N; ignored (with a warning) when none exists
NUM_THREADS = 1  # OMP / MKL threads per worker process

# --- emulated heterogeneity (trainer/slowdown.py, trainer/calibrate.py) ------------------
EMULATION = "device"  # --emulation: device (S x T0 per batch) | share (wait (S-1) x busy) | none
SLOWDOWN = 1.0  # --slowdown S: the emulated device is S times slower than the device unit
JITTER = 0.0  # --jitter: sigma of the log-normal factor on each batch's device time (0: none)
DEVICE_UNIT_S = None  # --device-unit T0 in seconds; None: calibrated (launch.py, or rank 0)
# Calibrated T0 keeps the devices' average compute at this share of the cores. Not 0.75: the
# devices start their batches together after every synchronisation, and the parameter server,
# State Server and evaluator share the cores too; on this 2-core machine 0.75 gave 46 % of
# batches on time, 0.44 about 90 %, 0.33 over 99 % (docs/reproduction.md, device time).
DEVICE_CPU_SHARE = 0.33
DEVICE_MIN_HEADROOM = 1.5  # ... and T0 >= this x the probe's seconds per batch
DEVICE_MAX_HEADROOM = 16.0  # a cluster needing T0 above this x the probe is refused
FIDELITY_WARNING = 0.95  # a run with fewer batches on time than this is warned about

# --- evaluation (trainer/evaluator.py) -------------------------------------------------------
EVALUATOR = "process"  # --evaluator: process (off the devices) | inline (in rank 0)
EVALUATOR_START_S = 120.0  # the evaluator must have loaded model and data within this
EVALUATOR_RESTARTS = 2  # an evaluator that dies is started again this often, then inline
EVALUATOR_DRAIN_S = 10.0  # at the end, how long rank 0 waits for the evaluation in flight

# --- MXNet cluster --------------------------------------------------------------------
CONNECT_TIMEOUT_S = 120.0  # --connect-timeout: a worker gives up joining the cluster
FAILURE_TIMEOUT_S = 30.0  # --failure-timeout: every process exits this long after a node died

# --- state server ---------------------------------------------------------------------
STATE_SERVER_IP = "127.0.0.1"
STATE_SERVER_PORT = 10010
STATE_SERVER_RETRY_S = 60.0  # how long a worker retries an unreachable State Server
STATE_SERVER_KIND = "runserver"  # launch.py --state-server: runserver | gunicorn
STATE_SERVER_START_S = 60.0  # how long launch.py waits for its State Server to answer
# launch.py probes its State Server's /status.json every LIVENESS_INTERVAL_S (each GET may
# take LIVENESS_TIMEOUT_S); no answer for HUNG_AFTER_S (a SIGSTOP, a wedged process) and it
# is killed and restarted in place, within the workers' --state-retry and rank 0's guard
LIVENESS_INTERVAL_S = 1.0
LIVENESS_TIMEOUT_S = 3.0
HUNG_AFTER_S = 10.0
STATE_SERVER_MAX_RESTARTS = 3  # launch.py restarts a State Server that dies this often per run
# Every server flavour (runserver, gunicorn): a request's line, headers and body must all have
# arrived this long after its first byte (a new connection's first request: after the accept),
# and a connection idle this long between requests is closed (the client reconnects at once).
# It bounds only the reading: a held request (the delayed ACK) waits for its answer as long as
# the server holds it (ESYNC_MAX_HOLD_S).
STATE_SERVER_REQUEST_TIMEOUT_S = 10.0
STATE_SERVER_IDLE_TIMEOUT_S = 10.0
# Connections one client address may have open at once (more are closed at accept; 0: no cap;
# ESYNC_MAX_CONNECTIONS_PER_CLIENT overrides it). Not small: every local worker, the launcher
# and a dashboard browser share 127.0.0.1, and a worker holds up to 3 connections (its State
# Server client, the non-blocking channel's, its progress reports), so 256 admits ~80 workers
# on one address -- far more than one host runs -- and bench/'s 64 clients, while one address
# can take at most a quarter of runserver's 1,000 connections.
STATE_SERVER_MAX_CONNECTIONS_PER_CLIENT = 256

# --- launch.py ------------------------------------------------------------------------
WORKERS = 4  # -w
SERVERS = 1  # --servers: parameter servers (DMLC_NUM_SERVER)
MAX_SERVERS = 64  # --servers and a host file's servers= are at most this
SLOWDOWNS = "1"  # --slowdowns: one factor for every worker, or one per worker
LAUNCH_MODE = "esync"  # -m of launch.py
LAUNCH_DASHBOARD = 1  # --dashboard: a State Server with a live dashboard for every mode
DASHBOARD_LINGER_S = 0.0  # --dashboard-linger: seconds the dashboard stays up after a mode
MAX_RESTARTS = 0  # --max-restarts: whole-cluster restarts from the newest checkpoint
RUN_TIMEOUT_S = 0.0  # --timeout: fail a mode that runs longer (0: no limit)
PS_EXIT_GRACE_S = 30.0  # after the workers finish, the scheduler/server must exit within this
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this many seconds

COMPARE_SECONDS = 45.0  # --compare without budget flags: training time of every mode
COMPARE_ROUNDS = 1_000_000  # ... and a round limit that never ends a run first
COMPARE_EVAL_INTERVAL_S = 0.5  # ... and time-based evaluation

# --- reports --------------------------------------------------------------------------
TARGET_ACCURACY = 0.9  # --target: accuracy of the time-to-accuracy comparisons

# --- progress reports and the dashboard (StateServer/dashboard/, trainer/progress.py) -----
PROGRESS_MAX_POINTS = 240  # points kept per curve / sparkline (older ones averaged in pairs)
PROGRESS_MAX_WORKERS = 256  # workers per run the dashboard tracks (a larger num_workers: 400)
PROGRESS_MAX_RUNS = 8  # runs kept; the least recently updated one is forgotten first
PROGRESS_MAX_BODY_BYTES = 64 * 1024  # larger progress messages are refused (413)
PROGRESS_MAX_RECORDS = 50  # rounds per progress message (a worker batches what piled up)
PROGRESS_STALE_S = 30.0  # a running worker (or run) silent this long is shown as STALE
PROGRESS_QUEUE = 1000  # reports a worker holds while the server is unreachable (oldest dropped)
PROGRESS_MIN_INTERVAL_S = 0.25  # a worker posts at most this often; rounds in between are batched
PROGRESS_TIMEOUT_S = 5.0  # socket time-out of one progress request
PROGRESS_CLOSE_TIMEOUT_S = 2.0  # finish()/close(): how long the last reports may take to leave
DASHBOARD_REFRESH_S = 2  # /dashboard/ reloads itself this often (seconds)
