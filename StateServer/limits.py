"""The State Server's limits on slow, idle and numerous connections, for every server flavour
(runserver's ``stateserver/fastserver.py``, gunicorn's ``gunicorn_worker.py``); Django-free,
so that gunicorn's master process can load its worker class without Django.

The numbers are in ``config.py`` (docs/state-server.md, "Time-outs and connection caps").
"""

from __future__ import annotations

import os
import resource

import config

from .messages import MAX_BODY_BYTES

REQUEST_TIMEOUT_S = config.STATE_SERVER_REQUEST_TIMEOUT_S  # to read a request, from its start
IDLE_TIMEOUT_S = config.STATE_SERVER_IDLE_TIMEOUT_S  # between requests (the client reconnects)
# The largest body a route accepts: gunicorn's worker reads bodies up to this before the app.
MAX_ROUTE_BODY_BYTES = max(MAX_BODY_BYTES, config.PROGRESS_MAX_BODY_BYTES)
REFUSAL_LOG_EVERY_S = 10.0  # one log line per this many seconds about refused connections


def max_per_client() -> int:
    """The per-address connection cap: ``ESYNC_MAX_CONNECTIONS_PER_CLIENT``, else config's
    (0: no cap)."""
    raw = os.environ.get("ESYNC_MAX_CONNECTIONS_PER_CLIENT", "").strip()
    return int(raw) if raw else config.STATE_SERVER_MAX_CONNECTIONS_PER_CLIENT


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (at most the hard
    limit); returns the soft limit in force. A server at its limit cannot accept (and
    socketserver's loop would spin on the listening socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
