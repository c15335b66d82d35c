"""Who may talk to the State Server, rule by rule, without a socket or a process
(StateServer/security.py, StateServer/httpapi.py's write and read checks, the launcher's token
and host-name hygiene). Every probe of issue #23 that needs no server is here; the ones that
do are tests/integration/test_security_http.py's and tests/e2e/test_security_launch.py's."""

from __future__ import annotations

import os
import subprocess

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "StateServer.stateserver.settings")
import django  # noqa: E402 (after the settings module is chosen)

django.setup()

from django.test import RequestFactory, override_settings  # noqa: E402

from launcher import local, ssh, supervision  # noqa: E402
from StateServer import httpapi, security  # noqa: E402

TOKEN = "rule-token"
JSON = "application/json"


def headers(**given: str) -> httpapi.Header:
    named = {name.replace("_", "-"): value for name, value in given.items()}
    return named.get


# --- exposure and host names ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_addresses(host: str) -> None:
    assert security.is_loopback(host)
    assert security.exposure_error(host, None, False, "--insecure") is None


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.1.2.3", "192.0.2.7", "example.org"])
def test_an_exposed_bind_without_a_token_is_refused_with_the_way_out(host: str) -> None:
    assert not security.is_loopback(host)
    problem = security.exposure_error(host, None, False, "--insecure")
    assert problem is not None and "ESYNC_TOKEN" in problem and "--insecure" in problem
    assert security.exposure_error(host, TOKEN, False, "--insecure") is None
    assert security.exposure_error(host, None, True, "--insecure") is None


def test_bind_hosts_of_gunicorn_binds() -> None:
    got = security.bind_hosts("127.0.0.1:10010, [::1]:8000,0.0.0.0:1,unix:/tmp/s")
    assert got == ["127.0.0.1", "[::1]", "0.0.0.0"]


def test_allowed_hosts_follow_the_bind_and_never_allow_any() -> None:
    loop = security.allowed_hosts("127.0.0.1")
    assert "localhost" in loop and "127.0.0.1" in loop and "*" not in loop
    assert "10.0.0.5" in security.allowed_hosts("10.0.0.5")
    assert "10.0.0.5" not in loop
    wildcard = security.allowed_hosts("0.0.0.0")
    assert "*" not in wildcard and "evil.example" not in wildcard
    assert set(loop) <= set(wildcard)


def test_the_fast_path_checks_the_host_as_django_does() -> None:
    with override_settings(ALLOWED_HOSTS=["127.0.0.1", "localhost"]):
        assert httpapi.host_allowed("127.0.0.1:10010")
        assert httpapi.host_allowed("localhost")
        assert not httpapi.host_allowed("evil.example:10010")  # a rebound DNS name


def test_the_settings_never_default_to_any_host() -> None:
    from django.conf import settings

    if not os.environ.get("ESYNC_ALLOWED_HOSTS"):
        assert "*" not in settings.ALLOWED_HOSTS


# --- writes -----------------------------------------------------------------------------------


def test_a_write_needs_the_token() -> None:
    assert httpapi.write_refusal(headers(content_type=JSON), TOKEN) == (403, httpapi.TOKEN_ERROR)
    wrong = headers(content_type=JSON, x_esync_token="guess")
    assert httpapi.write_refusal(wrong, TOKEN)[0] == 403
    bearer = headers(content_type=JSON, authorization=f"Bearer {TOKEN}")
    assert httpapi.write_refusal(bearer, TOKEN) is None


@pytest.mark.parametrize(
    "ctype",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", ""],
)
def test_what_a_web_page_can_send_without_asking_is_refused(ctype: str) -> None:
    status, error = httpapi.write_refusal(headers(content_type=ctype, x_esync_token=TOKEN), TOKEN)
    assert status == 415 and "application/json" in error
    assert httpapi.write_refusal(headers(content_type=ctype), None)[0] == 415  # token or not


def test_a_foreign_origin_is_refused_and_the_own_one_passes() -> None:
    own = headers(
        content_type=JSON, x_esync_token=TOKEN, host="127.0.0.1:9", origin="http://127.0.0.1:9"
    )
    assert httpapi.write_refusal(own, TOKEN) is None
    for origin in ("http://evil.example", "null", "http://127.0.0.1:10"):
        foreign = headers(
            content_type="application/json; charset=utf-8",
            x_esync_token=TOKEN,
            host="127.0.0.1:9",
            origin=origin,
        )
        status, error = httpapi.write_refusal(foreign, TOKEN)
        assert status == 403 and "Origin" in error


def test_the_fast_path_leaves_every_refusal_to_django() -> None:
    body = b'{"msg_type":"init","num_workers":2,"epsilon":0}'
    plain = headers(host="127.0.0.1", content_type="text/plain", x_esync_token=TOKEN)
    assert httpapi.fast_answer(plain, body, TOKEN) is None
    with override_settings(ALLOWED_HOSTS=["127.0.0.1"]):
        rebound = headers(host="evil.example", content_type=JSON, x_esync_token=TOKEN)
        assert httpapi.fast_answer(rebound, body, TOKEN) is None


# --- reads ------------------------------------------------------------------------------------


def test_reads_are_open_on_loopback_and_need_the_token_elsewhere() -> None:
    none = headers()
    assert httpapi.read_allowed(none, "127.0.0.1", (), TOKEN)
    assert httpapi.read_allowed(none, "10.0.0.9", (), None)  # no token set: a loopback server
    assert not httpapi.read_allowed(none, "10.0.0.9", (None, None), TOKEN)
    assert not httpapi.read_allowed(none, "10.0.0.9", ("guess",), TOKEN)
    assert httpapi.read_allowed(none, "10.0.0.9", (None, TOKEN), TOKEN)  # the cookie
    assert httpapi.read_allowed(headers(x_esync_token=TOKEN), "10.0.0.9", (), TOKEN)


@override_settings(ESYNC_TOKEN=TOKEN, ALLOWED_HOSTS=["testserver"])
def test_the_dashboard_refuses_a_remote_reader_and_remembers_a_token_link() -> None:
    from StateServer.dashboard.views import dashboard_json_view

    factory = RequestFactory()
    remote = factory.get("/dashboard.json", REMOTE_ADDR="10.0.0.9")
    refused = dashboard_json_view(remote)
    assert refused.status_code == 403 and b"token" in refused.content
    linked = dashboard_json_view(
        factory.get(f"/dashboard.json?token={TOKEN}", REMOTE_ADDR="10.0.0.9")
    )
    assert linked.status_code == 200
    assert linked.cookies[httpapi.READ_COOKIE].value == TOKEN
    assert linked.cookies[httpapi.READ_COOKIE]["samesite"] == "Strict"
    assert linked.cookies[httpapi.READ_COOKIE]["httponly"]
    again = factory.get("/dashboard.json", REMOTE_ADDR="10.0.0.9")
    again.COOKIES[httpapi.READ_COOKIE] = TOKEN
    assert dashboard_json_view(again).status_code == 200
    local_reader = factory.get("/dashboard.json", REMOTE_ADDR="127.0.0.1")
    assert dashboard_json_view(local_reader).status_code == 200


# --- the launcher's token ----------------------------------------------------------------------


def test_the_run_token_is_made_once_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(supervision.TOKEN_VAR, raising=False)
    made = supervision.run_token()
    assert len(made) >= 32 and os.environ[supervision.TOKEN_VAR] == made
    assert supervision.run_token() == made
    assert supervision.child_env(1)[supervision.TOKEN_VAR] == made  # children by environment
    monkeypatch.setenv(supervision.TOKEN_VAR, "given")
    assert supervision.run_token() == "given"


def test_the_remote_command_reads_the_token_from_its_file(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-never-on-argv"
    env = ssh.remote_env(1, {"X": "1"})
    env[supervision.TOKEN_VAR] = secret
    command = ssh.remote_command("/r", ["python", "main.py"], env, "/d/w.pgid", "/d/.token")
    assert secret not in command
    assert "cat /d/.token" in command and "X=1" in command
    assert secret not in ssh.remote_command("/r", ["true"], env, "/d/w.pgid")


def test_the_dashboard_link_carries_the_token_only_off_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(supervision.TOKEN_VAR, "tok/en")
    assert (
        local.dashboard_link("http://127.0.0.1:9", "127.0.0.1") == "http://127.0.0.1:9/dashboard/"
    )
    link = local.dashboard_link("http://10.0.0.1:9", "10.0.0.1")
    assert link == "http://10.0.0.1:9/dashboard/?token=tok%2Fen"


def test_ps_lite_talks_over_unix_sockets_on_one_machine() -> None:
    here = ssh.Plan(ssh.Where(), [(ssh.Where(), "1")])
    assert local.ps_lite_transport(here) == {"DMLC_LOCAL": "1"}
    there = ssh.Where(host="nodeA", hostname="nodeA")
    assert local.ps_lite_transport(ssh.Plan(ssh.Where(), [(there, "1")], "10.0.0.1", "eth0")) == {}


# --- remote hygiene ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["node-a", "n1.cluster.example", "a" * 63, "x1"])
def test_host_names_that_pass(name: str) -> None:
    assert ssh.valid_hostname(name)


@pytest.mark.parametrize(
    "name", ["", "..", ".", "a..b", "../etc", "a/b", "-a", "a-", "a b", "a" * 64, "ä", "a;rm"]
)
def test_a_bad_reported_host_name_is_refused(name: str) -> None:
    assert not ssh.valid_hostname(name)
    out = f"ESYNC-HOSTNAME {name}\nESYNC-ROOT\nESYNC-PYTHON\nESYNC-LINKS lo\n"
    res = subprocess.CompletedProcess([], 0, out, "")
    hostname, _, problems = ssh.read_probe(res, "/r", "/p", "lo")
    assert hostname == "" and problems and "host name" in problems[0]
