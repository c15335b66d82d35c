"""Thin views of the dashboard app: method, token and size checks, parse, store, serialise.

Every error is JSON ``{"error": "..."}`` with a 4xx status, as on the State Server's other
routes; ``POST /progress/`` needs the token when ``ESYNC_TOKEN`` is set (the same headers as
``/msg/``); the pages are GET only and open, like ``/status/``.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

import config

from ..progress import MAX_RUN_ID, ProgressError, decode_body, parse_progress
from .page import render_dashboard
from .service import get_store

READ_METHODS = ("GET", "HEAD")
# The page has no script, no external resource and no form: forbid them all.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def json_response(obj: Any, status: int = 200) -> HttpResponse:
    """Compact JSON with a Content-Length (so keep-alive connections stay open)."""
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    resp = HttpResponse(body, content_type="application/json", status=status)
    resp["Content-Length"] = str(len(body))
    resp["Cache-Control"] = "no-store"
    return resp


def json_error(status: int, message: str) -> HttpResponse:
    return json_response({"error": message}, status=status)


def _method_error(request: HttpRequest, allowed: tuple[str, ...]) -> HttpResponse | None:
    request.get_host()  # validates ALLOWED_HOSTS (DisallowedHost: the JSON 400 handler)
    if request.method in allowed:
        return None
    resp = json_error(405, f"method {request.method} not allowed; use {' or '.join(allowed)}")
    resp["Allow"] = ", ".join(allowed)
    return resp


def _token_ok(request: HttpRequest) -> bool:
    """``X-ESync-Token: <token>`` or ``Authorization: Bearer <token>`` when a token is set."""
    expected = getattr(settings, "ESYNC_TOKEN", None)
    if not expected:
        return True
    got = request.META.get("HTTP_X_ESYNC_TOKEN")
    if got is None:
        auth = request.META.get("HTTP_AUTHORIZATION", "")
        if auth[:7].lower() == "bearer ":
            got = auth[7:].strip()
    return got is not None and hmac.compare_digest(got.encode(), expected.encode())


def _check_length(request: HttpRequest) -> None:
    """400 / 413 on Content-Length before the body is read."""
    raw = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = int(raw)
    except ValueError:
        raise ProgressError(f"Content-Length is not a number: {raw[:40]!r}") from None
    limit = config.PROGRESS_MAX_BODY_BYTES
    if length > limit:
        raise ProgressError(f"body of {length} bytes exceeds {limit} bytes", status=413)


@csrf_exempt
def progress_view(request: HttpRequest) -> HttpResponse:
    """``POST /progress/``: a worker's progress or the launcher's run message; a small ack."""
    error = _method_error(request, ("POST",))
    if error is not None:
        return error
    if not _token_ok(request):
        return json_error(
            403, "missing or wrong token (X-ESync-Token header or Authorization: Bearer)"
        )
    try:
        _check_length(request)
        msg = parse_progress(decode_body(request.body))
        return json_response(get_store().submit(msg, time.time()))
    except ProgressError as exc:
        return json_error(exc.status, str(exc))


def _snapshot(request: HttpRequest) -> dict[str, Any]:
    """The store's snapshot of ``?run=`` (default: the latest run)."""
    run = request.GET.get("run") or None
    if run is not None and len(run) > MAX_RUN_ID:
        raise ProgressError(f"parameter 'run' is longer than {MAX_RUN_ID} characters")
    try:
        return get_store().snapshot(run, time.time())
    except KeyError:
        raise ProgressError(f"no run {run!r} (see 'runs' in /dashboard.json)", 404) from None


def _refresh(request: HttpRequest) -> int:
    raw = request.GET.get("refresh")
    if raw is None:
        return config.DASHBOARD_REFRESH_S
    if not raw.isdigit() or int(raw) > 3600:
        raise ProgressError("parameter 'refresh' must be 0 (off) to 3600 seconds")
    return int(raw)


def dashboard_json_view(request: HttpRequest) -> HttpResponse:
    """``GET /dashboard.json``: the dashboard's data (``?run=`` picks a run)."""
    error = _method_error(request, READ_METHODS)
    if error is not None:
        return error
    try:
        return json_response(_snapshot(request))
    except ProgressError as exc:
        return json_error(exc.status, str(exc))


def dashboard_view(request: HttpRequest) -> HttpResponse:
    """``GET /dashboard/``: the self-refreshing page (``?run=``, ``?refresh=<s>``, 0: off)."""
    error = _method_error(request, READ_METHODS)
    if error is not None:
        return error
    try:
        html = render_dashboard(_snapshot(request), _refresh(request))
    except ProgressError as exc:
        return json_error(exc.status, str(exc))
    body = html.encode()
    resp = HttpResponse(body, content_type="text/html; charset=utf-8")
    resp["Content-Length"] = str(len(body))
    resp["Cache-Control"] = "no-store"
    resp["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return resp
