"""WSGI entry point (gunicorn: ``StateServer.stateserver.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "StateServer.stateserver.settings")

application = get_wsgi_application()
