"""The hot routes, ``POST /msg/`` (and upstream's ``/apply/``), answered in front of Django.

Why: every worker message goes through this one route, and Django's request cycle
(middleware, URL resolution, request and response objects) costs ~70 µs of the ~105 µs a
``/msg/`` request spends in the WSGI application, on a server that is CPU-bound at ~3,500
requests/s (docs/state-server.md, "Performance"). This middleware answers the requests it
can prove well-formed itself, with exactly the bytes and headers the Django view sends; every
other request -- another route or method, a wrong or missing token, a Host header that is not
plainly valid, a missing or oversized ``Content-Length``, a body that does not parse as a
message -- goes to Django unchanged (with its body), which answers it as before. So the
behaviour on the wire is the view's; only the cost differs. ``ESYNC_FASTPATH=0`` turns it
off (everything through Django), and it is off when ``ESYNC_HTTPS`` or a restricted
``ESYNC_ALLOWED_HOSTS`` asks Django to check the scheme or the host.
"""

from __future__ import annotations

import hmac
import io
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from ..dispatcher import DEFAULT_TIMEOUT_S, OverloadedError
from ..messages import (
    MAX_BODY_BYTES,
    HoldMsg,
    MessageError,
    WorkerMsg,
    decode_json,
    parse_fields,
    parse_message,
)
from ..scheduler import SYNC, SchedulerError
from .service import get_dispatcher

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# What Django's security, CSRF and clickjacking middleware add to a /msg/ answer.
SECURITY_HEADERS = [
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]
_PLAIN_HOST = re.compile(
    r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)
STATUS_LINES = {
    200: "200 OK",
    400: "400 Bad Request",
    409: "409 Conflict",
    503: "503 Service Unavailable",
}


def answer_message(
    msg: WorkerMsg, admission: Any = None, in_thread: bool = False
) -> tuple[int, dict[str, Any]]:
    """Handle a parsed worker message; its JSON answer and HTTP status (shared with the view).

    ``in_thread``: run the dispatcher's engine in this thread (``Dispatcher.call``) instead of
    queueing the message (runserver's admitted threads). A ``hold`` may be answered late (the
    delayed ACK): meanwhile its thread leaves runserver's admission
    (``fastserver.Admission``), if there is one.
    """
    disp = get_dispatcher()
    hold = type(msg) is HoldMsg
    timeout = disp.hold_timeout if hold else DEFAULT_TIMEOUT_S
    try:
        job = disp.run_here(msg) if in_thread else disp.enqueue(msg)
        if job.done() or not hold or admission is None:
            return 200, job.get(timeout).to_dict()
        with admission.outside():  # a held request: others may go first meanwhile
            return 200, job.get(timeout).to_dict()
    except SchedulerError as exc:
        return exc.status, {"error": str(exc)}
    except OverloadedError as exc:
        return 503, {"error": str(exc)}


def fast_answer(
    header: Callable[[str], str | None],
    body: bytes,
    admission: Any = None,
    in_thread: bool = False,
    path: str = "/msg/",
) -> tuple[int, bytes] | None:
    """The status and JSON body of a ``POST`` to ``path`` (``/msg/``, or upstream's
    ``/apply/``) with this body and these headers (``header("host")``, ...: lower-case
    names), or None when Django must answer it."""
    if not _settings_allow():
        return None
    host = header("host")
    if host is None or not _PLAIN_HOST.fullmatch(host):
        return None
    if _TOKEN[0] is not None and not _token_ok(header):
        return None
    msg = _parse(path, header("content-type"), body)
    if msg is None:
        return None  # the view explains what is wrong
    status, obj = answer_message(msg, admission, in_thread)
    if path == "/apply/" and status == 200:
        obj = {"ready": 1 if obj["action"] == SYNC else 0}
    return status, json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


_FORM_FIELD = re.compile(rb"(r|k|c|te)=([0-9.eE-]{1,32})")


def _parse(path: str, content_type: str | None, body: bytes) -> WorkerMsg | None:
    """The message of a plain request body (None: anything the view should judge)."""
    try:
        if path == "/msg/":
            return parse_message(decode_json(body))
        if path != "/apply/":
            return None
        if content_type == "application/json":
            fields = decode_json(body)
            return parse_fields("query", fields) if isinstance(fields, dict) else None
        if content_type != "application/x-www-form-urlencoded":
            return None
        pairs = [_FORM_FIELD.fullmatch(part) for part in body.split(b"&")]
        if not all(pairs) or len(pairs) != 4:
            return None
        form = {m.group(1).decode(): m.group(2).decode() for m in pairs if m is not None}
        return parse_fields("query", form) if len(form) == 4 else None
    except MessageError:
        return None


def response_headers(data: bytes) -> list[tuple[str, str]]:
    """The headers of a fast answer: the view's, in its order."""
    return [("Content-Type", "application/json"), ("Content-Length", str(len(data)))] + (
        SECURITY_HEADERS
    )


_TOKEN: list[bytes | None] = []  # [the token], read from the settings on first use
_ENABLED: list[bool] = []


def _settings_allow() -> bool:
    if not _ENABLED:
        _TOKEN.append((settings.ESYNC_TOKEN or "").encode() or None)
        _ENABLED.append(
            os.environ.get("ESYNC_FASTPATH", "1") != "0"
            and "*" in settings.ALLOWED_HOSTS
            and not getattr(settings, "SECURE_SSL_REDIRECT", False)
            and not getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
        )
    return _ENABLED[0]


def _token_ok(header: Callable[[str], str | None]) -> bool:
    got = header("x-esync-token")
    if got is None:
        auth = header("authorization") or ""
        if auth[:7].lower() != "bearer ":
            return False
        got = auth[7:].strip()
    token = _TOKEN[0]
    assert token is not None
    return hmac.compare_digest(got.encode(), token)


_ENVIRON_NAMES = {
    "host": "HTTP_HOST",
    "x-esync-token": "HTTP_X_ESYNC_TOKEN",
    "authorization": "HTTP_AUTHORIZATION",
    "content-type": "CONTENT_TYPE",
}
FAST_PATHS = ("/msg/", "/apply/")


class MessageFastPath:
    """WSGI middleware: ``POST /msg/`` and ``/apply/`` without Django when provably
    equivalent."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        path = environ.get("PATH_INFO")
        if (
            path not in FAST_PATHS
            or environ.get("REQUEST_METHOD") != "POST"
            or not length.isdigit()
            or not 0 < int(length) <= MAX_BODY_BYTES
            or not _settings_allow()
        ):
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(length))
        answer = fast_answer(
            lambda name: environ.get(_ENVIRON_NAMES[name]),
            body,
            environ.get("esync.admission"),
            path=path,
        )
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(body)  # Django answers it, body and all
            return self.app(environ, start_response)
        status, data = answer
        start_response(STATUS_LINES[status], response_headers(data))
        return [data]
