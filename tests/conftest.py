"""Fixtures shared by every layer (unit, integration, e2e) and the CI hook against silent
skips. Helpers live in tests/support/, not here: no test imports this file."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.state_server import RUNSERVER, RunningServer, running_state_server


@pytest.fixture
def log_dir(tmp_path) -> str:
    path = tmp_path / "logs"
    path.mkdir()
    return str(path)


@pytest.fixture(scope="module")
def state_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A real State Server process on a free port: of the spec the test's ``serves(...)``
    mark names (tests/support/state_server.py), runserver without a token otherwise. One
    per module and spec, or one per test run with ``serves(..., private=True)``."""
    spec = getattr(request, "param", RUNSERVER)
    if spec.private and request.scope != "function":
        raise pytest.UsageError("a private State Server needs serves(..., private=True)")
    with running_state_server(spec, tmp_path_factory.mktemp("state-server")) as server:
        yield server


# --- CI: no silent skips ------------------------------------------------------------------
# With ESYNC_REQUIRE_ALL=1 (.ci/run sets it) a test that skips because this machine lacks a
# capability the project needs (network namespaces, chromium, sshd), or any skip of a test
# marked ``netns``, is reported as a failure with its reason. Other skips, xfails, and runs
# without the variable are unchanged.

REQUIRE_ALL_VAR = "ESYNC_REQUIRE_ALL"
REQUIRED_SKIP_WORDS = ("netns", "namespace", "chromium", "sshd")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if (
        os.environ.get(REQUIRE_ALL_VAR, "") not in ("", "0")
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        reason = _skip_reason(report)
        needed = item.get_closest_marker("netns") is not None
        if needed or any(word in reason.lower() for word in REQUIRED_SKIP_WORDS):
            report.outcome = "failed"
            report.longrepr = f"{REQUIRE_ALL_VAR}=1 forbids this skip: {reason}"
    return report
