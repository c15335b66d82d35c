#!/usr/bin/env python
"""Django's command-line utility for the State Server, as in every Django project.

    cd StateServer && python manage.py runserver 0.0.0.0:10010   # the paper's command
    python StateServer/manage.py runserver 0.0.0.0:10010         # the same, from the repo root
    python -m StateServer runserver 0.0.0.0:10010                # the same, as a module

The project's modules are imported as ``StateServer.…`` and import the repo root's ``config``,
so this script puts the repo root on the import path in place of its own folder: the State
Server's modules never get importable under a second, top-level name (``messages``,
``dispatcher``, ...), which would make two copies of their state.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _import_from_repo_root() -> None:
    """The repo root first on ``sys.path``, this script's folder off it."""
    root = str(HERE.parent)
    if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
        sys.path[0] = root
    elif root not in sys.path:
        sys.path.insert(0, root)


if __name__ == "__main__":
    _import_from_repo_root()
    from StateServer.__main__ import main

    main(sys.argv)
