"""WSGI entry point (gunicorn: ``StateServer.stateserver.wsgi:application``; runserver uses
it too, through ``WSGI_APPLICATION``): Django behind the ``POST /msg/`` fast path."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "StateServer.stateserver.settings")

application = get_wsgi_application()

from .fastpath import MessageFastPath  # noqa: E402 (needs the settings configured)

application = MessageFastPath(application)
