#!/usr/bin/env python
"""Django's command-line utility for the ESync State Server.

Run from anywhere, e.g. ``python StateServer/manage.py runserver 0.0.0.0:10010``.
"""

import os
import sys
from pathlib import Path


def main() -> None:
    """Put this folder on sys.path, select the settings and run the command line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stateserver.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
