"""Django's command line for the State Server, run from the repo root.

    python -m StateServer runserver 0.0.0.0:10010 --noreload
    python -m StateServer check --deploy

The same as ``StateServer/manage.py`` (``cd StateServer && python manage.py ...``): the
settings are ``StateServer.stateserver.settings`` unless ``DJANGO_SETTINGS_MODULE`` says
otherwise. The import path is not edited here: the repo root is on it because ``python -m``
puts the current directory first.
"""

import os
import sys


def main(argv: list[str] | None = None) -> None:
    """Select the settings (unless DJANGO_SETTINGS_MODULE is set) and run the command line
    ``argv`` (default: this module's, named as it is typed in usage and help texts)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "StateServer.stateserver.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(
        argv if argv is not None else ["python -m StateServer", *sys.argv[1:]]
    )


if __name__ == "__main__":
    main()
