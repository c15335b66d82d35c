"""App config of the dashboard (no models)."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """The progress route and the dashboard pages."""

    name = "StateServer.dashboard"
    label = "dashboard"
    verbose_name = "ESync training dashboard"
