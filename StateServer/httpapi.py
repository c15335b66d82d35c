"""The State Server's HTTP contract, written once: what Django and the fast path share.

Three servers answer the same routes: Django (``stateserver/views.py`` and
``dashboard/views.py``: every route, every error), the WSGI fast path in front of it
(``stateserver/fastpath.py``) and runserver's raw-socket fast path
(``stateserver/fastserver.py``). What they must agree on is here, and nowhere else:

* the token check (:func:`token_ok`) and the request-size check (:func:`check_length`);
* the strict JSON decoder (``messages.decode_json``, Django-free: the dashboard's reports
  and the trainer's imports of them must not need Django);
* the JSON answers: their bytes, headers and status lines (:func:`json_bytes`,
  :func:`json_headers`), and as Django responses (:func:`json_response`, :func:`json_error`);
* the checks and error mapping of a Django API view (:func:`api`, :func:`refusal`);
* the answer of a worker message on ``/msg/``, ``/init/``, ``/apply/`` and ``/reset/``
  (:func:`answer`), and the fast path's verdict on a raw request (:func:`fast_answer`).

Headers come in as a lookup function (:data:`Header`: a lower-case name to its value), so
every piece runs without a server or a request object (``tests/unit/test_http_layer.py``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host

from . import security
from .dispatcher import DEFAULT_TIMEOUT_S, Dispatcher, OverloadedError
from .messages import (
    MAX_BODY_BYTES,
    HoldMsg,
    MessageError,
    WorkerMsg,
    decode_json,
    parse_fields,
    parse_message,
)
from .scheduler import SYNC, SchedulerError
from .stateserver.service import get_dispatcher

Header = Callable[[str], str | None]  # lower-case header name -> its value (None: absent)
View = Callable[..., HttpResponse]

READ_COOKIE = "esync_token"  # set by a page read with ?token=, so the page's links work
TOKEN_ERROR = "missing or wrong token (X-ESync-Token header or Authorization: Bearer)"
READ_TOKEN_ERROR = (
    "this page is open to loopback clients only; others give the run's token "
    "(?token=, the X-ESync-Token header or Authorization: Bearer)"
)
CONTENT_TYPE_ERROR = (
    "a write must be Content-Type: application/json (forms and text/plain are refused: any "
    "web page could send them), got {got!r}"
)
ORIGIN_ERROR = "cross-origin write refused (Origin {origin!r} is not this server)"
# What Django's security, CSRF and clickjacking middleware add to an API answer: the fast
# path adds the same, so that its answers are byte for byte Django's.
SECURITY_HEADERS = [
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]
STATUS_LINES = {
    200: "200 OK",
    400: "400 Bad Request",
    403: "403 Forbidden",
    409: "409 Conflict",
    415: "415 Unsupported Media Type",
    503: "503 Service Unavailable",
}
# The WSGI environment's (and Django's request.META's) names of the headers read here.
ENVIRON_NAMES = {
    "host": "HTTP_HOST",
    "x-esync-token": "HTTP_X_ESYNC_TOKEN",
    "authorization": "HTTP_AUTHORIZATION",
    "content-type": "CONTENT_TYPE",
    "content-length": "CONTENT_LENGTH",
    "origin": "HTTP_ORIGIN",
}
# The worker-message routes and the message kind of their fields (``/msg/``: typed JSON).
ROUTE_KINDS = {"/init/": "init", "/apply/": "query", "/reset/": "reset"}
FAST_ROUTES = ("/msg/", "/apply/")  # the hot routes the fast path may answer

_PLAIN_HOST = re.compile(
    r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)


def environ_header(environ: Mapping[str, Any]) -> Header:
    """The :data:`Header` lookup of a WSGI environment (or of Django's ``request.META``)."""
    return lambda name: environ.get(ENVIRON_NAMES[name])


# --- checks -----------------------------------------------------------------------------


def given_token(header: Header) -> str | None:
    """The token of ``X-ESync-Token: <token>`` or ``Authorization: Bearer <token>``."""
    got = header("x-esync-token")
    if got is None:
        auth = header("authorization") or ""
        got = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return got


def token_ok(header: Header, expected: str | None) -> bool:
    """The request's token header is ``expected`` (always true when no token is set).
    Compared in constant time."""
    return not expected or security.token_matches(given_token(header), expected)


def write_refusal(header: Header, token: str | None) -> tuple[int, str] | None:
    """(status, error) that refuses a write before its body is read, or None: 403 without the
    token, 415 for a body that is not JSON (a form or ``text/plain``, which a web page may send
    anywhere without a preflight), 403 for a browser's foreign ``Origin``."""
    if not token_ok(header, token):
        return 403, TOKEN_ERROR
    ctype = (header("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return 415, CONTENT_TYPE_ERROR.format(got=ctype[:60])
    origin = header("origin")
    if origin is not None and not security.same_origin(origin, header("host")):
        return 403, ORIGIN_ERROR.format(origin=origin[:80])
    return None


def read_allowed(
    header: Header, client: str, given: Iterable[str | None], token: str | None
) -> bool:
    """A page or snapshot may be read: by a loopback client, with no token set, or with the
    token (a header, or one of ``given``: ``?token=``, the cookie :data:`READ_COOKIE`)."""
    if not token or security.is_loopback(client) or token_ok(header, token):
        return True
    return any(security.token_matches(g, token) for g in given)


def check_length(raw: str | None, limit: int = MAX_BODY_BYTES) -> None:
    """A request's ``Content-Length`` before its body is read: MessageError 400 when it is
    not a number, 413 above ``limit``."""
    raw = raw or "0"
    try:
        length = int(raw)
    except ValueError:
        raise MessageError(f"Content-Length is not a number: {raw[:40]!r}") from None
    if length > limit:
        raise MessageError(f"body of {length} bytes exceeds {limit} bytes", status=413)


# --- JSON answers -----------------------------------------------------------------------


def json_bytes(obj: Any) -> bytes:
    """Compact JSON (no NaN ever leaves the server)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def json_headers(data: bytes) -> list[tuple[str, str]]:
    """The headers of a fast answer with body ``data``: Django's, in its order."""
    return [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        *SECURITY_HEADERS,
    ]


def json_response(obj: Any, status: int = 200, no_store: bool = False) -> HttpResponse:
    """Django's response of :func:`json_bytes`, with a Content-Length (without it the server
    closes a keep-alive connection); ``no_store``: the dashboard's data, never cached."""
    body = json_bytes(obj)
    resp = HttpResponse(body, content_type="application/json", status=status)
    resp["Content-Length"] = str(len(body))
    if no_store:
        resp["Cache-Control"] = "no-store"
    return resp


def json_error(status: int, message: str, no_store: bool = False) -> HttpResponse:
    """The one error format: ``{"error": message}``."""
    return json_response({"error": message}, status, no_store)


# --- Django API views -------------------------------------------------------------------


def refusal(
    request: HttpRequest,
    methods: tuple[str, ...],
    write: bool = False,
    limit: int = MAX_BODY_BYTES,
    no_store: bool = False,
) -> HttpResponse | None:
    """The answer that refuses ``request`` before its view runs, or None: a Host header not
    in ALLOWED_HOSTS (DisallowedHost: Django's JSON 400), 405 for another method, and for a
    ``write``: :func:`write_refusal`'s 403 / 415, 400 / 413 for a bad or too large
    Content-Length; for a read: 403 for a client that is neither loopback nor has the token."""
    request.get_host()
    if request.method not in methods:
        allowed = " or ".join(methods)
        resp = json_error(405, f"method {request.method} not allowed; use {allowed}", no_store)
        resp["Allow"] = ", ".join(methods)
        return resp
    header = environ_header(request.META)
    token = getattr(settings, "ESYNC_TOKEN", None)
    if not write:
        client = request.META.get("REMOTE_ADDR", "")
        given = (request.GET.get("token"), request.COOKIES.get(READ_COOKIE))
        if read_allowed(header, client, given, token):
            return None
        return json_error(403, READ_TOKEN_ERROR, no_store)
    refused = write_refusal(header, token)
    if refused is not None:
        return json_error(*refused, no_store)
    try:
        check_length(header("content-length"), limit)
    except MessageError as exc:
        return json_error(exc.status, str(exc), no_store)
    return None


def remember_reader(resp: HttpResponse, given: str) -> None:
    """A reader who gave the right ``?token=`` gets it as a same-site, script-proof cookie, so
    that the page's links (which do not carry the token) open too."""
    token = getattr(settings, "ESYNC_TOKEN", None)
    if token and security.token_matches(given, token):
        resp.set_cookie(READ_COOKIE, token, httponly=True, samesite="Strict")


def api(
    methods: tuple[str, ...],
    write: bool = False,
    limit: int = MAX_BODY_BYTES,
    no_store: bool = False,
) -> Callable[[View], View]:
    """Decorate a Django view of a JSON route: :func:`refusal`'s checks first, then every
    refusal the view raises as a JSON 4xx (MessageError, SchedulerError: their status) or 503
    (OverloadedError). Bad input is never a 500. (CSRF exemption stays explicit, on the view.)"""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            refused = refusal(request, methods, write, limit, no_store)
            if refused is not None:
                return refused
            try:
                resp = view(request, *args, **kwargs)
                if not write and "token" in request.GET:
                    remember_reader(resp, request.GET["token"])
                return resp
            except (MessageError, SchedulerError) as exc:
                return json_error(exc.status, str(exc), no_store)
            except OverloadedError as exc:
                return json_error(503, str(exc), no_store)

        return wrapper

    return decorate


# --- worker messages --------------------------------------------------------------------


def answer_message(
    msg: WorkerMsg,
    admission: Any = None,
    in_thread: bool = False,
    dispatcher: Dispatcher | None = None,
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON answer of a parsed worker message (a refusal or overload is
    a status and ``{"error": ...}``, not an exception).

    ``in_thread``: run the dispatcher's engine in this thread (``Dispatcher.run_here``)
    instead of queueing the message (runserver's admitted threads). A ``hold`` may be answered
    late (the delayed ACK): meanwhile its thread leaves runserver's admission
    (``fastserver.Admission``), if there is one, so that others may go first.
    """
    disp = get_dispatcher() if dispatcher is None else dispatcher
    hold = type(msg) is HoldMsg
    timeout = disp.hold_timeout if hold else DEFAULT_TIMEOUT_S
    try:
        job = disp.run_here(msg) if in_thread else disp.enqueue(msg)
        if job.done() or not hold or admission is None:
            return 200, job.get(timeout).to_dict()
        with admission.outside():
            return 200, job.get(timeout).to_dict()
    except SchedulerError as exc:
        return exc.status, {"error": str(exc)}
    except OverloadedError as exc:
        return 503, {"error": str(exc)}


def answer(
    route: str,
    msg: WorkerMsg,
    admission: Any = None,
    in_thread: bool = False,
    dispatcher: Dispatcher | None = None,
) -> tuple[int, dict[str, Any]]:
    """:func:`answer_message`, in the words of ``route``: upstream's ``/apply/`` answers a
    query with ``{"ready": 1}`` (synchronise) or ``{"ready": 0}``."""
    status, obj = answer_message(msg, admission, in_thread, dispatcher)
    if route == "/apply/" and status == 200:
        obj = {"ready": 1 if obj["action"] == SYNC else 0}
    return status, obj


def typed_message(body: bytes) -> WorkerMsg:
    """The typed message of a ``/msg/`` body (MessageError when it is not one)."""
    return parse_message(decode_json(body))


def upstream_message(route: str, fields: Mapping[str, object]) -> WorkerMsg:
    """The message of an upstream route's fields (``/init/``, ``/apply/``, ``/reset/``)."""
    return parse_fields(ROUTE_KINDS[route], fields)


def json_fields(body: bytes) -> Mapping[str, object]:
    """An upstream route's JSON body: it must be an object."""
    obj = decode_json(body)
    if not isinstance(obj, dict):
        raise MessageError("body must be a JSON object")
    return obj


# --- the fast path ----------------------------------------------------------------------


def plain_message(route: str, body: bytes) -> WorkerMsg | None:
    """The message of a plain hot request's JSON body; None for anything Django should judge
    (and explain): another route, a bad message."""
    try:
        if route == "/msg/":
            return typed_message(body)
        if route == "/apply/":
            return upstream_message(route, json_fields(body))
        return None
    except MessageError:
        return None


def host_allowed(host: str) -> bool:
    """The Host header passes Django's ``ALLOWED_HOSTS`` (the fast path checks it as Django
    would, so that a rebound DNS name gets Django's 400, never a fast answer)."""
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def fast_answer(
    header: Header,
    body: bytes,
    token: str | None,
    route: str = "/msg/",
    admission: Any = None,
    in_thread: bool = False,
) -> tuple[int, bytes] | None:
    """The status and JSON body of a ``POST`` to a hot ``route`` with these headers and this
    body, or None when Django must answer it: a Host header that is not plainly valid (Django
    checks it), a wrong or missing token (Django answers 403), a body that is not a well-formed
    message (Django says what is wrong). So the fast path never answers differently."""
    host = header("host")
    if host is None or not _PLAIN_HOST.fullmatch(host) or not host_allowed(host):
        return None
    if write_refusal(header, token) is not None:
        return None
    msg = plain_message(route, body)
    if msg is None:
        return None
    status, obj = answer(route, msg, admission, in_thread)
    return status, json_bytes(obj)
