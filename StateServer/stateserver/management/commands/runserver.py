"""``runserver`` with the low-latency server class (TCP_NODELAY, one write per response).

``ESYNC_PLAIN_RUNSERVER=1`` selects Django's own server class instead (for the benchmark's
before/after comparison only).
"""

import os

from django.core.management.commands.runserver import Command as DjangoRunserver
from django.core.servers.basehttp import WSGIServer

from ...fastserver import FastWSGIServer


class Command(DjangoRunserver):
    """Django's runserver, serving through :class:`FastWSGIServer`."""

    server_cls = WSGIServer if os.environ.get("ESYNC_PLAIN_RUNSERVER") == "1" else FastWSGIServer
