"""Routes of the dashboard app (included at the root by StateServer/stateserver/urls.py)."""

from django.urls import re_path

from . import views

urlpatterns = [
    re_path(r"^progress/?$", views.progress_view, name="progress"),
    re_path(r"^dashboard/?$", views.dashboard_view, name="dashboard"),
    re_path(r"^dashboard\.json$", views.dashboard_json_view, name="dashboard-json"),
]
