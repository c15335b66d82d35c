"""The State Server's one HTTP layer (``StateServer/httpapi.py``), piece by piece, without a
socket or a server process: the token check, the size check, the strict decoder, the JSON
helpers, the Django ``api`` decorator (on RequestFactory requests), the answer of a message
on each route, and the fast path's verdict on a raw request. The same contract over real
HTTP is tests/integration/test_state_http.py's."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "StateServer.stateserver.settings")
import django  # noqa: E402 (after the settings module is chosen)

django.setup()

from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import RequestFactory, override_settings  # noqa: E402

from StateServer import httpapi  # noqa: E402
from StateServer.dispatcher import Dispatcher, OverloadedError  # noqa: E402
from StateServer.messages import (  # noqa: E402
    MAX_BODY_BYTES,
    InitMsg,
    MessageError,
    QueryMsg,
    decode_json,
)
from StateServer.router import Router  # noqa: E402
from StateServer.scheduler import NotInitializedError  # noqa: E402

TOKEN = "unit-token"
INIT = {"msg_type": "init", "num_workers": 2, "epsilon": 0.5}
QUERY = {"msg_type": "query", "rank": 0, "k": 3, "c": 0.25, "te": 1.0}
FORM = b"r=0&k=3&c=0.25&te=1.0"
FORM_TYPE = "application/x-www-form-urlencoded"
QUERY_MSG = QueryMsg(0, 3, 0.25, 1.0)
UPSTREAM_QUERY = {"r": 0, "k": 3, "c": 0.25, "te": 1.0}  # /apply/'s fields of QUERY


def headers(**given: str) -> httpapi.Header:
    """A header lookup of ``given`` (``x_esync_token=`` for ``X-ESync-Token``)."""
    named = {name.replace("_", "-"): value for name, value in given.items()}
    return named.get


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.fixture
def disp() -> Iterator[Dispatcher]:
    """A dispatcher of its own (not the process's), its thread stopped after the test."""
    d = Dispatcher(Router()).start()
    yield d
    d.stop()


# --- the token check ---------------------------------------------------------------------


def test_no_token_set_lets_everything_through() -> None:
    assert httpapi.token_ok(headers(), None)
    assert httpapi.token_ok(headers(x_esync_token="anything"), "")


@pytest.mark.parametrize(
    ("given", "ok"),
    [
        ({"x_esync_token": TOKEN}, True),
        ({"authorization": f"Bearer {TOKEN}"}, True),
        ({"authorization": f"bearer   {TOKEN}  "}, True),  # scheme case, padding
        ({}, False),
        ({"x_esync_token": TOKEN + "x"}, False),
        ({"x_esync_token": ""}, False),
        ({"authorization": f"Basic {TOKEN}"}, False),
        ({"authorization": TOKEN}, False),
        ({"x_esync_token": "wrong", "authorization": f"Bearer {TOKEN}"}, False),  # header wins
    ],
)
def test_token_check(given: dict[str, str], ok: bool) -> None:
    assert httpapi.token_ok(headers(**given), TOKEN) is ok


def test_environ_header_reads_wsgi_names() -> None:
    environ = {"HTTP_X_ESYNC_TOKEN": TOKEN, "CONTENT_TYPE": "application/json"}
    header = httpapi.environ_header(environ)
    assert header("x-esync-token") == TOKEN and header("content-type") == "application/json"
    assert header("authorization") is None and header("host") is None


# --- the size check and the strict decoder -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [("12x", 400, "not a number"), ("-", 400, "not a number"), ("65537", 413, "exceeds")],
)
def test_bad_content_length(raw: str, status: int, fragment: str) -> None:
    with pytest.raises(MessageError) as info:
        httpapi.check_length(raw, 65536)
    assert info.value.status == status and fragment in str(info.value)


def test_acceptable_content_length() -> None:
    for raw in (None, "", "0", "65536"):
        httpapi.check_length(raw, 65536)  # no error


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"  ", "empty"),
        (b"{", "not valid JSON"),
        (b'{"c": NaN}', "NaN is not a number"),
        (b'{"c": -Infinity}', "-Infinity is not a number"),
        (b'{"a": 1, "a": 1}', "duplicate key"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b"[" * 50_000, "nested too deeply"),
    ],
)
def test_strict_decoder_refuses(data: bytes, fragment: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_json(data)
    assert info.value.status == 400 and fragment in str(info.value)


def test_strict_decoder_limit_is_a_413_and_decodes_the_rest() -> None:
    with pytest.raises(MessageError) as info:
        decode_json(b" " * 11 + b"{}", limit=12)
    assert info.value.status == 413 and "exceeds 12 bytes" in str(info.value)
    assert decode_json(b'{"a": [1, 2.5, "\xc3\xa9"]}', limit=100) == {"a": [1, 2.5, "é"]}
    with pytest.raises(MessageError):
        decode_json(b" " * MAX_BODY_BYTES + b"{}")  # the default limit is the server's


# --- JSON helpers --------------------------------------------------------------------------


def test_json_bytes_are_compact_and_never_nan() -> None:
    assert httpapi.json_bytes({"a": [1, 2.5], "b": None}) == b'{"a":[1,2.5],"b":null}'
    with pytest.raises(ValueError):
        httpapi.json_bytes({"x": float("nan")})


def test_json_headers_are_djangos_in_order() -> None:
    data = b'{"ready":1}'
    got = httpapi.json_headers(data)
    assert got[:2] == [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    assert got[2:] == httpapi.SECURITY_HEADERS


def test_json_response_and_error() -> None:
    resp = httpapi.json_response({"a": 1}, status=201)
    assert (resp.status_code, resp.content, resp["Content-Length"]) == (201, b'{"a":1}', "7")
    assert resp["Content-Type"] == "application/json" and "Cache-Control" not in resp
    err = httpapi.json_error(418, "no tea", no_store=True)
    assert err.status_code == 418 and json.loads(err.content) == {"error": "no tea"}
    assert err["Cache-Control"] == "no-store"


# --- the Django api decorator --------------------------------------------------------------


def _view_raising(exc: Exception | None) -> Any:
    def view(request: HttpRequest) -> HttpResponse:
        if exc is not None:
            raise exc
        return httpapi.json_response({"ok": True})

    return view


def _call(view: Any, method: str = "POST", data: bytes = b"{}", **extra: str) -> HttpResponse:
    factory = RequestFactory()
    extra.setdefault("HTTP_HOST", "127.0.0.1:10010")  # ALLOWED_HOSTS follows the bind
    request = factory.generic(method, "/x/", data, content_type="application/json", **extra)
    return view(request)


def test_api_refuses_another_method_with_allow() -> None:
    resp = _call(httpapi.api(("POST",))(_view_raising(None)), "GET")
    assert resp.status_code == 405 and resp["Allow"] == "POST"
    assert "method GET not allowed; use POST" in json.loads(resp.content)["error"]


@override_settings(ESYNC_TOKEN=TOKEN)
def test_api_write_needs_the_token_reads_do_not() -> None:
    write = httpapi.api(("POST",), write=True)(_view_raising(None))
    resp = _call(write)
    assert resp.status_code == 403 and json.loads(resp.content) == {"error": httpapi.TOKEN_ERROR}
    assert _call(write, HTTP_X_ESYNC_TOKEN=TOKEN).status_code == 200
    assert _call(write, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    read = httpapi.api(("GET",))(_view_raising(None))
    assert _call(read, "GET").status_code == 200


def test_api_write_checks_the_length_before_the_view() -> None:
    write = httpapi.api(("POST",), write=True, limit=10)(_view_raising(AssertionError("ran")))
    resp = _call(write, data=b"x" * 11)
    assert resp.status_code == 413 and "exceeds 10 bytes" in json.loads(resp.content)["error"]
    resp = _call(write, CONTENT_LENGTH="ten")
    assert resp.status_code == 400 and "not a number" in json.loads(resp.content)["error"]


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (MessageError("field 'k' must be an integer"), 400),
        (MessageError("too big", status=413), 413),
        (NotInitializedError("send init first"), 409),
        (OverloadedError("queue full"), 503),
    ],
)
def test_api_maps_refusals_to_json(exc: Exception, status: int) -> None:
    resp = _call(httpapi.api(("POST",), no_store=True)(_view_raising(exc)))
    assert resp.status_code == status and json.loads(resp.content) == {"error": str(exc)}
    assert resp["Cache-Control"] == "no-store"


def test_api_lets_a_bug_through() -> None:
    """A bug is not bad input: Django's 500 handler answers it (and logs the traceback)."""
    with pytest.raises(KeyError):
        _call(httpapi.api(("POST",))(_view_raising(KeyError("bug"))))


# --- answering messages --------------------------------------------------------------------


def test_msg_body_init_then_query(disp: Dispatcher) -> None:
    init = httpapi.typed_message(body(INIT))
    assert init == InitMsg(2, 0.5)
    assert httpapi.answer("/msg/", init, dispatcher=disp) == (
        200,
        {"msg_type": "ack", "of": "init", "round": 0},
    )
    status, obj = httpapi.answer("/msg/", httpapi.typed_message(body(QUERY)), dispatcher=disp)
    assert status == 200 and (obj["msg_type"], obj["rank"], obj["round"]) == ("response", 0, 0)
    assert obj["action"] == "compute"  # rank 1 has not reported: rank 0 keeps computing


def test_a_typed_body_that_is_not_a_message() -> None:
    for bad in (b"[]", body({**QUERY, "k": "3"}), body({**QUERY, "extra": 1}), b"{"):
        with pytest.raises(MessageError):
            httpapi.typed_message(bad)


def test_refusals_are_statuses_not_exceptions(disp: Dispatcher) -> None:
    status, obj = httpapi.answer("/msg/", QueryMsg(0, 3, 0.25, 1.0), dispatcher=disp)
    assert status == 409 and "not initialised" in obj["error"]


def test_overload_is_a_503() -> None:
    class Full(Dispatcher):
        def enqueue(self, msg: object, put_timeout: float = 1.0) -> Any:
            raise OverloadedError("the queue is full")

    full = Full(Router())
    status, obj = httpapi.answer("/msg/", QUERY_MSG, dispatcher=full)
    assert (status, obj) == (503, {"error": "the queue is full"})


@pytest.mark.parametrize(("num_workers", "ready"), [(1, 1), (2, 0)])
def test_apply_speaks_upstream(num_workers: int, ready: int) -> None:
    """``/apply/`` answers the query's action as upstream's ``ready``; in this thread
    (``in_thread``, runserver's hot path), without the dispatcher's thread."""
    disp = Dispatcher(Router())  # never started: everything runs here
    httpapi.answer("/init/", InitMsg(num_workers, 0.5), in_thread=True, dispatcher=disp)
    query = httpapi.upstream_message("/apply/", {"r": "0", "k": "3", "c": "0.25", "te": "1"})
    assert query == QueryMsg(0, 3, 0.25, 1.0)
    twin = httpapi.answer_message(query, in_thread=True, dispatcher=disp)[1]
    assert int(twin["action"] == "sync") == ready  # what /apply/ translates
    assert httpapi.answer("/apply/", query, in_thread=True, dispatcher=disp) == (
        200,
        {"ready": ready},
    )


def test_upstream_json_fields_must_be_an_object() -> None:
    assert httpapi.json_fields(b'{"r": 1}') == {"r": 1}
    with pytest.raises(MessageError, match="must be a JSON object"):
        httpapi.json_fields(b"[1]")


# --- the fast path's verdict ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "data", "expected"),
    [
        ("/msg/", body(QUERY), QUERY_MSG),
        ("/msg/", body({**QUERY, "k": -1}), None),
        ("/apply/", body(UPSTREAM_QUERY), QUERY_MSG),
        ("/apply/", body({**UPSTREAM_QUERY, "x": 1}), None),
        ("/apply/", FORM, None),  # upstream's form: JSON only now (docs/security.md)
        ("/apply/", b"[]", None),
        ("/init/", body(INIT), None),
    ],
)
def test_plain_message(route: str, data: bytes, expected: Any) -> None:
    assert httpapi.plain_message(route, data) == expected


@pytest.mark.parametrize(
    "given",
    [
        {},  # no Host
        {"host": "bad host"},
        {"host": "127.0.0.1:1", "x_esync_token": "wrong"},
        {"host": "127.0.0.1:1", "x_esync_token": TOKEN, "content_type": "text/plain"},
        {"host": "127.0.0.1:1", "x_esync_token": TOKEN, "content_type": FORM_TYPE},
        {"host": "node-a", "x_esync_token": TOKEN, "content_type": "application/json"},
        {
            "host": "127.0.0.1:1",
            "x_esync_token": TOKEN,
            "content_type": "application/json",
            "origin": "http://elsewhere.example",
        },
    ],
)
def test_fast_path_leaves_to_django(
    given: dict[str, str], disp: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpapi, "get_dispatcher", lambda: disp)
    route = "/apply/" if "content_type" in given else "/msg/"
    data = body(UPSTREAM_QUERY) if route == "/apply/" else body(QUERY)
    assert httpapi.fast_answer(headers(**given), data, TOKEN, route) is None
    assert disp.handled == 0


def test_fast_path_answers_a_plain_request(
    disp: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpapi, "get_dispatcher", lambda: disp)
    plain = headers(
        host="[::1]:10010", authorization=f"Bearer {TOKEN}", content_type="application/json"
    )
    assert httpapi.fast_answer(plain, body(INIT), TOKEN) == (
        200,
        b'{"msg_type":"ack","of":"init","round":0}',
    )
    upstream = headers(host="localhost", x_esync_token=TOKEN, content_type="application/json")
    fields = body(UPSTREAM_QUERY)
    assert httpapi.fast_answer(upstream, fields, TOKEN, "/apply/") == (200, b'{"ready":0}')
    assert disp.handled == 2
