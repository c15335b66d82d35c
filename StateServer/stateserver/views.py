"""Receiver / sender: thin Django views that parse, queue, and serialise.

All state changes go through the dispatcher. Every error is a JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..dispatcher import OverloadedError
from ..messages import MAX_BODY_BYTES, MessageError, decode_json, parse_fields, parse_message
from ..router import SnapshotMsg
from ..scheduler import SYNC, SchedulerError
from .fastpath import answer_message
from .service import get_dispatcher
from .status_page import render_status_html

log = logging.getLogger(__name__)
View = Callable[..., HttpResponse]
READ_METHODS = ("GET", "HEAD")


def json_response(obj: Any, status: int = 200) -> HttpResponse:
    """Compact JSON response (no NaN ever leaves the server)."""
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    resp = HttpResponse(body, content_type="application/json", status=status)
    resp["Content-Length"] = str(len(body))  # without it the server closes the connection
    return resp


def json_error(status: int, message: str) -> HttpResponse:
    """The one error format: ``{"error": message}``."""
    return json_response({"error": message}, status=status)


def _token_ok(request: HttpRequest) -> bool:
    expected = settings.ESYNC_TOKEN
    if not expected:
        return True
    got = request.META.get("HTTP_X_ESYNC_TOKEN")
    if got is None:
        auth = request.META.get("HTTP_AUTHORIZATION", "")
        if auth[:7].lower() == "bearer ":
            got = auth[7:].strip()
    return got is not None and hmac.compare_digest(got.encode(), expected.encode())


def _body_error(request: HttpRequest) -> HttpResponse | None:
    """413 / 400 for a body that is too large or whose length is not a number."""
    raw = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = int(raw)
    except ValueError:
        return json_error(400, f"Content-Length is not a number: {raw[:40]!r}")
    if length > MAX_BODY_BYTES:
        return json_error(413, f"body of {length} bytes exceeds {MAX_BODY_BYTES} bytes")
    return None


def api(methods: tuple[str, ...], write: bool) -> Callable[[View], View]:
    """Method check, token check (writes), body cap, and error mapping for a JSON route."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            request.get_host()  # validates ALLOWED_HOSTS (DisallowedHost: JSON 400)
            if request.method not in methods:
                resp = json_error(
                    405, f"method {request.method} not allowed; use {' or '.join(methods)}"
                )
                resp["Allow"] = ", ".join(methods)
                return resp
            if write:
                if not _token_ok(request):
                    return json_error(
                        403,
                        "missing or wrong token (X-ESync-Token header or Authorization: Bearer)",
                    )
                error = _body_error(request)
                if error is not None:
                    return error
            try:
                return view(request, *args, **kwargs)
            except (MessageError, SchedulerError) as exc:
                return json_error(getattr(exc, "status", 400), str(exc))
            except OverloadedError as exc:
                return json_error(503, str(exc))

        return csrf_exempt(wrapper)

    return decorate


def _upstream_fields(request: HttpRequest) -> Mapping[str, object]:
    """Fields of an upstream route: a JSON object, or a form (urlencoded or multipart)."""
    if request.content_type == "application/json":
        obj = decode_json(request.body)
        if not isinstance(obj, dict):
            raise MessageError("body must be a JSON object")
        return obj
    try:
        form, files = request.POST, request.FILES
    except Exception as exc:  # Django raises several types for broken form bodies
        raise MessageError(f"malformed form body: {exc}") from None
    if files:
        raise MessageError("file uploads are not accepted")
    fields: dict[str, object] = {}
    for key, values in form.lists():
        if len(values) != 1:
            raise MessageError(f"field {key!r} given {len(values)} times")
        fields[key] = values[0]
    return fields


# --- typed endpoint -------------------------------------------------------------------


@api(("POST",), write=True)
def msg_view(request: HttpRequest) -> HttpResponse:
    """``POST /msg/``: one typed message in, its response or ack out.

    A ``hold`` may be answered late: the request thread waits until the dispatcher answers
    it (the delayed ACK), at most ``hold_timeout`` s. (Well-formed requests of this route
    are usually answered by ``fastpath.MessageFastPath`` before Django, the same way.)
    """
    msg = parse_message(decode_json(request.body))
    status, obj = answer_message(msg, request.META.get("esync.admission"))
    return json_response(obj, status=status)


# --- upstream routes ------------------------------------------------------------------


@api(("POST",), write=True)
def init_view(request: HttpRequest) -> HttpResponse:
    """``POST /init/`` (num_workers, epsilon): start a new run."""
    msg = parse_fields("init", _upstream_fields(request))
    return json_response(get_dispatcher().submit(msg).to_dict())


@api(("POST",), write=True)
def apply_view(request: HttpRequest) -> HttpResponse:
    """``POST /apply/`` (r, k, c, te): the query; ``{"ready": 1}`` means synchronise."""
    msg = parse_fields("query", _upstream_fields(request))
    reply = get_dispatcher().submit(msg)
    return json_response({"ready": 1 if reply.action == SYNC else 0})


@api(("POST",), write=True)
def reset_view(request: HttpRequest) -> HttpResponse:
    """``POST /reset/`` (r, t, te): worker r starts round t."""
    msg = parse_fields("reset", _upstream_fields(request))
    return json_response(get_dispatcher().submit(msg).to_dict())


@api(READ_METHODS, write=False)
def index_view(request: HttpRequest) -> HttpResponse:
    """``GET /``: num_workers, t, epsilon, records (as the original server)."""
    return json_response(get_dispatcher().submit(SnapshotMsg(view="upstream")))


# --- status ---------------------------------------------------------------------------


def _snapshot() -> dict[str, Any]:
    disp = get_dispatcher()
    snap = disp.submit(SnapshotMsg(view="status"))
    snap["queue_depth"] = disp.depth()
    snap["held"] = disp.held()
    return snap


@api(READ_METHODS, write=False)
def status_json_view(request: HttpRequest) -> HttpResponse:
    """``GET /status.json``: the status page's data."""
    return json_response(_snapshot())


def status_view(request: HttpRequest) -> HttpResponse:
    """``GET /status/``: self-refreshing HTML table (``?format=json`` for the JSON twin)."""
    request.get_host()
    if request.method not in READ_METHODS:
        resp = json_error(405, f"method {request.method} not allowed; use GET")
        resp["Allow"] = ", ".join(READ_METHODS)
        return resp
    try:
        snap = _snapshot()
    except OverloadedError as exc:
        return json_error(503, str(exc))
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
