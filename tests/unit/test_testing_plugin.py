"""The pytest plugin, as an application's test suite would use it."""

from __future__ import annotations

import pytest

USER_TESTS = """
from datetime import UTC, datetime, timedelta

import structlog

from infrakit.telemetry import traced
from infrakit.testing import override
from infrakit.tokens import InMemoryTokenStore


async def test_infra_fixture(infra):
    await infra.tokens.store("j", "u", datetime.now(UTC) + timedelta(minutes=5))
    assert await infra.tokens.is_valid("j")
    await infra.audit.log_action("login", "session", user_id="u")
    assert await infra.audit.count() == 1


async def test_factory_with_overrides(infra_factory):
    infra = await infra_factory(overrides={"tokens.max_entries": 3})
    assert infra.tokens.max_entries == 3


async def test_override_reaches_and_restores(infra):
    double = InMemoryTokenStore(max_entries=1)
    real = infra.tokens
    with override(infra, tokens=double):
        assert infra.tokens is double
    assert infra.tokens is real


async def test_captured_logs_are_redacted(infra, captured_logs):
    structlog.get_logger().info("login", user="ann", password="hunter2")
    (event,) = [e for e in captured_logs if e["event"] == "login"]
    assert event["password"] == "[REDACTED]"
    assert event["level"] == "info"


async def test_captured_spans_with_infra(infra, captured_spans):
    @traced("work")
    async def work():
        return 1

    await work()
    assert captured_spans.names == ["work"]


def test_captured_spans_without_infra(captured_spans):
    @traced
    def calc():
        return 2

    calc()
    assert len(captured_spans) == 1
"""


def test_plugin_fixtures_work_for_users(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def _marked(marker: str) -> str:
    """USER_TESTS with every async test marked, as strict mode and anyio want."""
    body = USER_TESTS.replace("async def test_", f"@pytest.mark.{marker}\nasync def test_")
    return "import pytest\n" + body


def test_plugin_fixtures_work_in_strict_mode(pytester: pytest.Pytester) -> None:
    """pytest-asyncio's default mode: no asyncio_mode line, tests marked asyncio
    (before, every test using infra failed: 'requested an async fixture')."""
    pytester.makepyfile(test_user=_marked("asyncio"))
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=6)
    assert "strict" in result.stdout.str()  # the mode really was strict


def test_plugin_fixtures_work_without_pytest_asyncio(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pytest-asyncio at all (its import fails, its plugin is off): the
    fixtures are plain coroutine fixtures, run by anyio's plugin."""
    hidden = pytester.mkpydir("hidden") / "pytest_asyncio"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('not installed here')\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden.parent))
    pytester.makepyfile(
        test_user=_marked("anyio")
        + "\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=6)
