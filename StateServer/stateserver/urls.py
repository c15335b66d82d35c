"""Routes: the typed endpoint, the upstream ESync routes, and the status page."""

from django.urls import re_path

from . import views

urlpatterns = [
    re_path(r"^msg/?$", views.message_view, {"route": "/msg/"}, name="msg"),
    re_path(r"^init/?$", views.message_view, {"route": "/init/"}, name="init"),
    re_path(r"^apply/?$", views.message_view, {"route": "/apply/"}, name="apply"),
    re_path(r"^reset/?$", views.message_view, {"route": "/reset/"}, name="reset"),
    re_path(r"^$", views.index_view, name="index"),
    re_path(r"^status\.json$", views.status_json_view, name="status-json"),
    re_path(r"^status/?$", views.status_view, name="status"),
    re_path(r"^", ("StateServer.dashboard.urls", None, None)),  # = include(): the dashboard app
]

handler400 = "StateServer.stateserver.views.bad_request"
handler403 = "StateServer.stateserver.views.permission_denied"
handler404 = "StateServer.stateserver.views.not_found"
handler500 = "StateServer.stateserver.views.server_error"
