"""Receiver / sender: thin Django views that parse, queue, and serialise.

All state changes go through the dispatcher; the reads (``GET /``, ``/status.json``,
``/status/``) do not: they are served from the copy of the state the dispatcher publishes
after every change (``Dispatcher.snapshot``, ``StateServer/snapshots.py``), so a flood of
reads never queues in front of a worker's message. Every error is a JSON ``{"error": "..."}``. The
checks, the decoding and the answers are ``StateServer/httpapi.py`` (shared with the fast
path, which answers most well-formed ``/msg/`` requests before Django, the same way); these
views only adapt Django's request and response.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..httpapi import (
    answer,
    api,
    json_error,
    json_fields,
    json_response,
    typed_message,
    upstream_message,
)
from .service import get_dispatcher
from .status_page import render_status_html

log = logging.getLogger(__name__)
READ_METHODS = ("GET", "HEAD")


# --- worker messages: the typed endpoint and the upstream routes ----------------------


@csrf_exempt
@api(("POST",), write=True)
def message_view(request: HttpRequest, route: str) -> HttpResponse:
    """``POST`` one worker message to ``route`` (urls.py names it); its response or ack out.

    ``/msg/``: a typed JSON message; a ``hold`` may be answered late: the request thread
    waits until the dispatcher answers it (the delayed ACK), at most ``hold_timeout`` s.
    Upstream's routes, as a JSON object (upstream's form posts are refused, 415: a web page
    could send them to any address, docs/security.md): ``/init/`` (num_workers, epsilon) starts
    a new run, ``/apply/`` (r, k, c, te) is the query (``{"ready": 1}``: synchronise),
    ``/reset/`` (r, t, te): worker r starts round t.
    """
    if route == "/msg/":
        msg = typed_message(request.body)
    else:
        msg = upstream_message(route, json_fields(request.body))
    status, obj = answer(route, msg, request.META.get("esync.admission"))
    return json_response(obj, status=status)


# --- state ----------------------------------------------------------------------------


@csrf_exempt
@api(READ_METHODS)
def index_view(request: HttpRequest) -> HttpResponse:
    """``GET /``: num_workers, t, epsilon, records (as the original server)."""
    return json_response(get_dispatcher().snapshot().upstream())


def _snapshot() -> dict[str, Any]:
    """The status data: the published state at this moment, never through the queue."""
    disp = get_dispatcher()
    snap = disp.snapshot().status(disp.now())
    snap["queue_depth"] = disp.depth()
    snap["held"] = disp.held()
    return snap


@csrf_exempt
@api(READ_METHODS)
def status_json_view(request: HttpRequest) -> HttpResponse:
    """``GET /status.json``: the status page's data."""
    return json_response(_snapshot())


@api(READ_METHODS)  # not CSRF-exempt: a page, not an API route (a POST is refused, 403)
def status_view(request: HttpRequest) -> HttpResponse:
    """``GET /status/``: self-refreshing HTML table (``?format=json`` for the JSON twin)."""
    snap = _snapshot()
    if request.GET.get("format") == "json":
        return json_response(snap)
    body = render_status_html(snap).encode()
    resp = HttpResponse(body, content_type="text/html; charset=utf-8")
    resp["Content-Length"] = str(len(body))
    resp["Cache-Control"] = "no-store"
    return resp


# --- error handlers (wired in urls.py and settings.CSRF_FAILURE_VIEW) -------------------


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """400 for Django-level rejections (bad Host header, oversized body, ...)."""
    detail = str(exception) if exception else ""
    return json_error(400, f"bad request{': ' + detail if detail else ''}")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """403 for Django-level refusals."""
    return json_error(403, "forbidden")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 with the list of routes."""
    return json_error(
        404,
        f"no route {request.path!r}; routes: POST /msg/, POST /init/, "
        "POST /apply/, POST /reset/, GET /, GET /status/, GET /status.json",
    )


def server_error(request: HttpRequest) -> HttpResponse:
    """500: a bug; the traceback is in the server log."""
    return json_error(500, "internal error (see the server log)")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """403 for a POST to a page that is not an API endpoint."""
    return json_error(403, f"CSRF check failed ({reason}); POST only to the API routes")
