"""gunicorn settings for the State Server.

    python -m gunicorn -c StateServer/gunicorn.conf.py            # 0.0.0.0:10010
    python -m gunicorn -c StateServer/gunicorn.conf.py -b 127.0.0.1:10010

Exactly one worker process: the state lives in that process's memory. Requests are served
by ``ESYNC_THREADS`` gthread threads (default 64); keep-alive connections wait in the
worker's poller, not in a thread, but a held request (the non-blocking protocol's delayed
ACK, ``--state-protocol nonblocking``) keeps its thread until it is answered: give it at
least one thread per worker plus a few (p + 8) for the other requests. gunicorn sets
TCP_NODELAY on its listening socket and Linux copies it to accepted sockets.

``chdir`` is the repo root (the parent of ``StateServer/``), wherever gunicorn is started
from: gunicorn changes into it and puts it first on the import path, so the app is imported as
the package ``StateServer.stateserver`` (this file puts it there too, for its own imports).

The worker is gthread with the State Server's limits (``StateServer/gunicorn_worker.py``): a
deadline of ``config.STATE_SERVER_REQUEST_TIMEOUT_S`` to read each request, idle
connections closed after ``keepalive`` s without holding a thread, and at most
``config.STATE_SERVER_MAX_CONNECTIONS_PER_CLIENT`` connections per client address.
"""

import os
import sys

wsgi_app = "StateServer.stateserver.wsgi:application"
chdir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if chdir not in sys.path:
    sys.path.insert(0, chdir)

from StateServer import limits  # noqa: E402 (needs the repo root on the path)

bind = [os.environ.get("ESYNC_BIND", "0.0.0.0:10010")]
workers = 1  # never more: each worker process would have its own state
worker_class = "StateServer.gunicorn_worker.StateServerWorker"  # gthread, with the limits
threads = int(os.environ.get("ESYNC_THREADS", "64"))  # supervisor raises it to workers + 8
worker_connections = 1000
backlog = 256
# An idle connection (a new one before its first byte, a kept-alive one between requests)
# is closed after this; a worker that paused longer reconnects at once (state_client.py).
keepalive = max(1, round(limits.IDLE_TIMEOUT_S))
timeout = 30
graceful_timeout = 5
max_requests = 0  # never recycle the worker: that would lose the state
preload_app = False  # build the app (and its dispatcher thread) in the worker
limit_request_line = 8190
limit_request_fields = 50
limit_request_field_size = 8190
control_socket_disable = True  # no control socket file is created
accesslog = "-" if os.environ.get("ESYNC_ACCESS_LOG") == "1" else None
errorlog = "-"
loglevel = "warning"
proc_name = "esync-state-server"


def on_starting(server) -> None:  # noqa: ANN001 (gunicorn's Arbiter)
    """Refuse an exposed bind without a token (StateServer/security.py); hand the bound
    addresses to the worker's settings (``ALLOWED_HOSTS``) through ``ESYNC_BIND``."""
    sys.path.insert(0, chdir)
    from StateServer import security

    binds = ",".join(str(b) for b in server.cfg.bind)
    for host in security.bind_hosts(binds):
        problem = security.exposure_error(
            host, os.environ.get("ESYNC_TOKEN"), security.insecure_from_env(), "ESYNC_INSECURE=1"
        )
        if problem:
            print(f"gunicorn: {problem}", file=sys.stderr, flush=True)
            sys.exit(2)
    os.environ["ESYNC_BIND"] = binds
