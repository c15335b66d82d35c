"""The process-wide progress store (one per serving process, recreated after a fork)."""

from __future__ import annotations

import os
import threading

from ..progress import ProgressStore

_lock = threading.Lock()
_store: ProgressStore | None = None
_pid: int | None = None


def get_store() -> ProgressStore:
    """The store of this process (created on first use; a changed pid means a fresh one)."""
    global _store, _pid
    with _lock:
        if _store is None or _pid != os.getpid():
            _store, _pid = ProgressStore(), os.getpid()
        return _store
