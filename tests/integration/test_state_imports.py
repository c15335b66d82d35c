"""The State Server's core imports without Django, checked in a fresh Python process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_core_does_not_import_django() -> None:
    """No Django in the core, nor in the dashboard's logic (the trainers import its format)."""
    code = (
        "import sys\n"
        "import StateServer.dispatcher, StateServer.messages, StateServer.router\n"
        "import StateServer.scheduler, StateServer.state\n"
        "import StateServer.dashboard.reports, StateServer.dashboard.store, trainer.progress\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'django'], 'django'\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
