"""The conftest hook that turns capability skips into failures in CI (ESYNC_REQUIRE_ALL=1).

A tiny test session (pytester, in a subprocess) loads the hook from tests/conftest.py and runs
skips of every kind, with and without the variable.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = f"""
import importlib.util

_spec = importlib.util.spec_from_file_location("esync_conftest", {str(ROOT / "tests" / "conftest.py")!r})
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
pytest_runtest_makereport = _mod.pytest_runtest_makereport
pytest_configure = lambda config: config.addinivalue_line("markers", "netns: namespaces")
"""  # noqa: E501 (generated code)

TESTS = """
import pytest

def test_netns_at_run_time():
    pytest.skip("needs root to create network namespaces (ip netns add)")

@pytest.mark.skipif(True, reason="needs chromium to render the status page")
def test_chromium_marker():
    pass

def test_sshd():
    pytest.skip("no sshd on this host")

@pytest.mark.netns
def test_marked_netns_with_another_reason():
    pytest.skip("emulated hosts: needs the 'ip' binary (iproute2 / util-linux)")

def test_unrelated_skip():
    pytest.skip("needs a GPU")

def test_xfail_mentioning_netns():
    pytest.xfail("netns flake, tracked")

def test_passes():
    pass
"""


@pytest.fixture
def session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the real conftest imports the project
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_tiny=TESTS)
    return pytester


def test_without_the_variable_capability_skips_stay_skips_with_their_reason(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ESYNC_REQUIRE_ALL", raising=False)
    result = session.runpytest_subprocess("-rsx", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
    result.stdout.fnmatch_lines(
        ["*SKIPPED*needs root to create network namespaces*", "*SKIPPED*needs chromium*"]
    )


def test_with_the_variable_capability_skips_fail_with_their_reason(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESYNC_REQUIRE_ALL", "1")
    result = session.runpytest_subprocess("-rA", "-p", "no:cacheprovider")
    # chromium's skipif fires in setup: an error; the others fail in the call
    result.assert_outcomes(passed=1, failed=3, errors=1, skipped=1, xfailed=1)
    out = result.stdout.str()
    for reason in (
        "needs root to create network namespaces",
        "needs chromium to render the status page",
        "no sshd on this host",
        "emulated hosts: needs the 'ip' binary",
    ):
        assert f"ESYNC_REQUIRE_ALL=1 forbids this skip: {reason}" in out, out
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_ci_script_sets_the_variable() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "export ESYNC_REQUIRE_ALL=1" in script
    assert script.index("export ESYNC_REQUIRE_ALL=1") < script.index("make test")
