"""Thin views of the dashboard app: parse, store, serialise.

The method, token and size checks and the error mapping are the State Server's
(``StateServer/httpapi.py``, :func:`~StateServer.httpapi.api`): every error is JSON
``{"error": "..."}`` with a 4xx status, as on the other routes; ``POST /progress/`` needs the
token when ``ESYNC_TOKEN`` is set (the same headers as ``/msg/``); the pages are GET only and
open, like ``/status/``.
"""

from __future__ import annotations

import time
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

import config

from ..httpapi import api, json_response
from .page import render_dashboard
from .reports import MAX_RUN_ID, ReportError, decode_body, parse_report
from .service import get_store

READ_METHODS = ("GET", "HEAD")
# The page has no script, no external resource and no form: forbid them all.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


@csrf_exempt
@api(("POST",), write=True, limit=config.PROGRESS_MAX_BODY_BYTES, no_store=True)
def progress_view(request: HttpRequest) -> HttpResponse:
    """``POST /progress/``: a worker's report or the launcher's run message; a small ack."""
    msg = parse_report(decode_body(request.body))
    return json_response(get_store().submit(msg, time.time()), no_store=True)


def _snapshot(request: HttpRequest) -> dict[str, Any]:
    """The store's snapshot of ``?run=`` (default: the latest run)."""
    run = request.GET.get("run") or None
    if run is not None and len(run) > MAX_RUN_ID:
        raise ReportError(f"parameter 'run' is longer than {MAX_RUN_ID} characters")
    try:
        return get_store().snapshot(run, time.time())
    except KeyError:
        raise ReportError(f"no run {run!r} (see 'runs' in /dashboard.json)", 404) from None


def _refresh(request: HttpRequest) -> int:
    raw = request.GET.get("refresh")
    if raw is None:
        return config.DASHBOARD_REFRESH_S
    if not raw.isdigit() or int(raw) > 3600:
        raise ReportError("parameter 'refresh' must be 0 (off) to 3600 seconds")
    return int(raw)


@api(READ_METHODS, no_store=True)  # pages, not API routes: a POST is refused (CSRF, 403)
def dashboard_json_view(request: HttpRequest) -> HttpResponse:
    """``GET /dashboard.json``: the dashboard's data (``?run=`` picks a run)."""
    return json_response(_snapshot(request), no_store=True)


@api(READ_METHODS, no_store=True)
def dashboard_view(request: HttpRequest) -> HttpResponse:
    """``GET /dashboard/``: the self-refreshing page (``?run=``, ``?refresh=<s>``, 0: off)."""
    body = render_dashboard(_snapshot(request), _refresh(request)).encode()
    resp = HttpResponse(body, content_type="text/html; charset=utf-8")
    resp["Content-Length"] = str(len(body))
    resp["Cache-Control"] = "no-store"
    resp["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return resp
