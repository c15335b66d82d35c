"""``runserver`` with the low-latency server class (TCP_NODELAY, one write per response), and
the State Server's exposure rules (StateServer/security.py): bound to an address other
machines reach, it needs ``ESYNC_TOKEN`` or ``--insecure``; ``ALLOWED_HOSTS`` follows the
bound address unless ``ESYNC_ALLOWED_HOSTS`` sets it.

``ESYNC_PLAIN_RUNSERVER=1`` selects Django's own server and request handler instead (for the
benchmark's before/after comparison only), with a socket time-out (fastserver.PlainWSGIServer).
"""

import os
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.core.management.commands.runserver import Command as DjangoRunserver

from .... import security
from ...fastserver import FastWSGIServer, PlainWSGIServer


class Command(DjangoRunserver):
    """Django's runserver, serving through :class:`FastWSGIServer`."""

    server_cls = (
        PlainWSGIServer if os.environ.get("ESYNC_PLAIN_RUNSERVER") == "1" else FastWSGIServer
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="serve on a non-loopback address without ESYNC_TOKEN (anyone who reaches it "
            "can steer the run)",
        )

    def run(self, **options: Any) -> None:
        insecure = options.get("insecure") or security.insecure_from_env()
        problem = security.exposure_error(self.addr, settings.ESYNC_TOKEN, insecure, "--insecure")
        if problem:
            raise CommandError(problem)
        if not os.environ.get("ESYNC_ALLOWED_HOSTS"):
            settings.ALLOWED_HOSTS = security.allowed_hosts(self.addr)
        super().run(**options)
