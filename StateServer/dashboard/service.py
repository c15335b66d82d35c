"""The process-wide dashboard store (one per serving process, recreated after a fork)."""

from __future__ import annotations

import os
import threading

from .store import DashboardStore

_lock = threading.Lock()
_store: DashboardStore | None = None
_pid: int | None = None


def get_store() -> DashboardStore:
    """The store of this process (created on first use; a changed pid means a fresh one)."""
    global _store, _pid
    with _lock:
        if _store is None or _pid != os.getpid():
            _store, _pid = DashboardStore(), os.getpid()
        return _store
