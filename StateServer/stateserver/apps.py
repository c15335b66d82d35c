"""App config: listed in INSTALLED_APPS so that its ``runserver`` command overrides Django's."""

from django.apps import AppConfig
from django.conf import settings
from django.core import signals


class StateServerConfig(AppConfig):
    """The State Server app (no models)."""

    name = "StateServer.stateserver"
    label = "stateserver"
    verbose_name = "ESync State Server"

    def ready(self) -> None:
        """Drop per-request database and cache housekeeping: there is no database or cache.

        Django connects these to every request's start and end; with nothing to close they
        still cost ~15% of the server's per-request time on the API path.
        """
        if settings.DATABASES:
            return
        from django.core.cache import close_caches
        from django.db import close_old_connections, reset_queries

        signals.request_started.disconnect(reset_queries)
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_caches)
