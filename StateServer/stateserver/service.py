"""The process-wide dispatcher, started lazily in the serving process; its scheduler has the
run's semantic bounds (``settings.ESYNC_CLUSTER_SIZE``: see ``scheduler.Bounds``).

Lazy start matters: gunicorn forks workers and runserver's autoreloader runs the app in a
child, and threads do not survive a fork. A changed pid therefore means "start afresh".
"""

from __future__ import annotations

import os
import threading

from django.conf import settings

from ..dispatcher import Dispatcher
from ..holds import DEFAULT_MAX_HOLD_S
from ..router import Router
from ..scheduler import Bounds, Scheduler

_lock = threading.Lock()
_dispatcher: Dispatcher | None = None
_pid: int | None = None


def get_dispatcher() -> Dispatcher:
    """The running dispatcher of this process (created and started on first use)."""
    global _dispatcher, _pid
    disp = _dispatcher
    if disp is not None and _pid == os.getpid():
        return disp
    with _lock:
        if _dispatcher is None or _pid != os.getpid():
            max_hold = float(os.environ.get("ESYNC_MAX_HOLD_S") or DEFAULT_MAX_HOLD_S)
            bounds = Bounds(cluster_size=getattr(settings, "ESYNC_CLUSTER_SIZE", None))
            _dispatcher = Dispatcher(Router(Scheduler(bounds)), max_hold_s=max_hold).start()
            _pid = os.getpid()
        return _dispatcher
