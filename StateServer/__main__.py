"""Django's command line for the State Server, run from the repo root.

    python -m StateServer runserver 0.0.0.0:10010 --noreload
    python -m StateServer check --deploy

Replaces Django's ``manage.py``: the settings are ``StateServer.stateserver.settings`` unless
``DJANGO_SETTINGS_MODULE`` says otherwise. The import path is not edited: the repo root is on it
because ``python -m`` puts the current directory first.
"""

import os
import sys


def main() -> None:
    """Select the settings (unless DJANGO_SETTINGS_MODULE is set) and run the command line."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "StateServer.stateserver.settings")
    from django.core.management import execute_from_command_line

    # argv[0] is this file's path; name the real command line in usage and help texts
    execute_from_command_line(["python -m StateServer", *sys.argv[1:]])


if __name__ == "__main__":
    main()
