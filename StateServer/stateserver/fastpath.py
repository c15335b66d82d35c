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
off (everything through Django), and it is off when ``ESYNC_HTTPS`` asks Django to check
the scheme; the Host header it checks against ``ALLOWED_HOSTS`` as Django does.

The contract itself (token, decoding, answers, headers) is ``StateServer/httpapi.py``, shared
with the Django views; this module only decides whether the fast path is on, and adapts WSGI.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from .. import httpapi
from ..messages import MAX_BODY_BYTES

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_SETTINGS: list[tuple[bool, str | None]] = []  # [(enabled, token)], read on first use


def _settings() -> tuple[bool, str | None]:
    """Whether the fast path may answer, and the token; read once (settings do not change)."""
    if not _SETTINGS:
        enabled = (
            os.environ.get("ESYNC_FASTPATH", "1") != "0"
            and not getattr(settings, "SECURE_SSL_REDIRECT", False)
            and not getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
        )
        _SETTINGS.append((enabled, settings.ESYNC_TOKEN or None))
    return _SETTINGS[0]


def fast_answer(
    header: httpapi.Header,
    body: bytes,
    admission: Any = None,
    in_thread: bool = False,
    path: str = "/msg/",
) -> tuple[int, bytes] | None:
    """:func:`httpapi.fast_answer` with this server's settings; None when the fast path is
    off or Django must answer."""
    enabled, token = _settings()
    if not enabled:
        return None
    return httpapi.fast_answer(header, body, token, path, admission, in_thread)


class MessageFastPath:
    """WSGI middleware: ``POST /msg/`` and ``/apply/`` without Django when provably
    equivalent."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        path = environ.get("PATH_INFO")
        if (
            path not in httpapi.FAST_ROUTES
            or environ.get("REQUEST_METHOD") != "POST"
            or not length.isdigit()
            or not 0 < int(length) <= MAX_BODY_BYTES
            or not _settings()[0]
        ):
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(length))
        header = httpapi.environ_header(environ)
        answer = fast_answer(header, body, environ.get("esync.admission"), path=path)
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(body)  # Django answers it, body and all
            return self.app(environ, start_response)
        status, data = answer
        start_response(httpapi.STATUS_LINES[status], httpapi.json_headers(data))
        return [data]
