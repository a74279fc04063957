"""The redaction rules at the rendered output: sentry-python's scrubber cases,
the key matrix, and what must stay visible."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import random
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from infrakit import load_settings
from infrakit.errors import ConfigError
from infrakit.logging import configure_logging, reset_logging
from infrakit.scrub import (
    NOT_SECRETS,
    Scrubber,
    is_sensitive_key,
    mask_url,
    parse_url,
    scrub_text,
)
from infrakit.settings.models import RedactSettings, ServiceSettings, TelemetrySettings
from infrakit.telemetry import TelemetryProvider
from infrakit.testing import span_attributes

R = "[REDACTED]"


@pytest.fixture
def lines(json_encoder: str) -> Iterator[Any]:
    """``lines(**configure_logging options)`` -> a callable returning the JSON lines so
    far (each test using it runs with orjson and with the stdlib encoder)."""
    out = io.StringIO()

    def configure(**options: Any) -> Any:
        configure_logging("DEBUG", "json", stream=out, **options)
        return lambda: [json.loads(line) for line in out.getvalue().splitlines()]

    yield configure
    reset_logging()


def _frame(event: dict[str, Any], name: str) -> dict[str, Any]:
    frames = [f for exc in event["exception"] for f in exc["frames"] if f["name"] == name]
    assert frames, event
    frame: dict[str, Any] = frames[0]
    return frame


class TestSentryScrubberCases:
    """sentry-python's tests/test_scrubber.py, as they apply to a log pipeline."""

    def test_request_scrubbing(self, lines: Any) -> None:
        read = lines()
        request = {
            "headers": {
                "COOKIE": "secret",
                "authorization": "Bearer bla",
                "ORIGIN": "google.com",
                "ip_address": "127.0.0.1",
            },
            "cookies": {"sessionid": "secret", "foo": "bar"},
            "data": {"token": "secret", "foo": "bar"},
        }
        structlog.get_logger().info("request", request=request)
        assert read()[0]["request"] == {
            "headers": {"COOKIE": R, "authorization": R, "ORIGIN": "google.com", "ip_address": R},
            # as Sentry: "cookies" names no secret, its secret entries go
            "cookies": {"sessionid": R, "foo": "bar"},
            "data": {"token": R, "foo": "bar"},
        }

    def test_stack_var_scrubbing(self, lines: Any) -> None:
        read = lines(traceback_locals=True)
        try:
            password = "supersecret"  # noqa: F841
            api_key = "1231231231"  # noqa: F841
            safe = "keepthis"  # noqa: F841
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            structlog.get_logger().exception("boom")
        variables = _frame(read()[0], "test_stack_var_scrubbing")["locals"]
        assert variables["password"] == R
        assert variables["api_key"] == R
        assert variables["safe"] == "'keepthis'"

    def test_no_locals_unless_asked(self, lines: Any) -> None:
        read = lines()
        try:
            safe = "keepthis"  # noqa: F841
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            structlog.get_logger().exception("boom")
            logging.getLogger("lib").exception("stdlib boom")
        for event in read():
            assert "locals" not in _frame(event, "test_no_locals_unless_asked")
            assert "keepthis" not in json.dumps(event)

    def test_breadcrumb_extra_scrubbing(self, lines: Any) -> None:
        read = lines()
        logger = logging.getLogger("breadcrumbs")
        logger.warning("breadcrumb 1", extra={"foo": 1, "password": "secret"})
        logger.critical("whoops", extra={"bar": 69, "auth": "secret"})
        first, second = read()
        assert (first["foo"], first["password"]) == (1, R)
        assert (second["bar"], second["auth"]) == (69, R)

    def test_span_data_scrubbing(self) -> None:
        provider = TelemetryProvider(TelemetrySettings(exporter="memory"), ServiceSettings())
        provider.initialize()
        try:
            with provider.tracer.start_as_current_span("bar") as span:
                span.set_attribute("password", "secret")
                span.set_attribute("datafoo", "databar")
            (finished,) = provider.finished_spans()
        finally:
            provider.shutdown()
        assert span_attributes(finished)["password"] == R
        assert span_attributes(finished)["datafoo"] == "databar"

    def test_custom_denylist(self, lines: Any) -> None:
        read = lines(
            additional_pii_patterns=["my_sensitive_var", "my_pii_var"], traceback_locals=True
        )
        try:
            my_sensitive_var = "secret"  # noqa: F841
            my_pii_var = "jane.doe"  # noqa: F841
            safe = "keepthis"  # noqa: F841
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            structlog.get_logger().exception("boom")
        variables = _frame(read()[0], "test_custom_denylist")["locals"]
        assert variables["my_sensitive_var"] == R
        assert variables["my_pii_var"] == R
        assert variables["safe"] == "'keepthis'"

    def test_custom_denylist_reaches_spans(self) -> None:
        provider = TelemetryProvider(
            TelemetrySettings(exporter="memory"),
            ServiceSettings(),
            redact=RedactSettings(extra_patterns=["national_id"], extra_params=["ticket"]),
        )
        provider.initialize()
        try:
            with provider.tracer.start_as_current_span("x") as span:
                span.set_attribute("user.national_id", "X123")
                span.set_attribute("url.query", "ticket=T1&page=2")
            (finished,) = provider.finished_spans()
        finally:
            provider.shutdown()
        assert span_attributes(finished)["user.national_id"] == R
        assert span_attributes(finished)["url.query"] == "ticket=REDACTED&page=2"

    def test_scrubbing_doesnt_affect_local_vars(self, lines: Any) -> None:
        read = lines(traceback_locals=True)
        try:
            password = "cat123"
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            structlog.get_logger().exception("boom")
        assert (
            _frame(read()[0], "test_scrubbing_doesnt_affect_local_vars")["locals"]["password"] == R
        )
        assert password == "cat123"

    def test_recursive_scrubbing(self, lines: Any) -> None:
        read = lines()
        structure = {"deep": {"deeper": [{"deepest": {"password": "my_darkest_secret"}}]}}
        structlog.get_logger().info("deep", extra=structure)
        assert read()[0]["extra"]["deep"]["deeper"][0]["deepest"]["password"] == R
        assert structure["deep"]["deeper"][0]["deepest"]["password"] == "my_darkest_secret"

    def test_scrubber_does_not_override_original(self, lines: Any) -> None:
        read = lines(traceback_locals=True)
        data = {"csrf": "secret"}
        try:
            raise RuntimeError("An error")
        except RuntimeError:
            structlog.get_logger().exception("boom", data=data)
        event = read()[0]
        assert event["data"] == {"csrf": R}
        assert (
            "secret"
            not in _frame(event, "test_scrubber_does_not_override_original")["locals"]["data"]
        )
        assert data == {"csrf": "secret"}


# Sentry's DEFAULT_DENYLIST and DEFAULT_PII_DENYLIST (sentry_sdk/scrubber.py).
SENTRY_KEYS = [
    "password", "passwd", "secret", "api_key", "apikey", "auth", "credentials", "mysql_pwd",
    "privatekey", "private_key", "token", "session", "csrftoken", "sessionid", "x_csrftoken",
    "x_forwarded_for", "set_cookie", "cookie", "authorization", "proxy-authorization",
    "x_api_key", "aiohttp_session", "connect.sid", "csrf_token", "csrf", "_csrf",
    "_csrf_token", "PHPSESSID", "_session", "symfony", "user_session", "_xsrf", "XSRF-TOKEN",
    "x_real_ip", "ip_address", "remote_addr",
]  # fmt: skip


def _words(key: str) -> list[str]:
    parts = re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+", key)
    return [p.lower() for p in parts] or [key.lower()]


def spellings(key: str) -> list[str]:
    """Ten ways applications write the same key."""
    words = _words(key)
    return [
        key,
        key.lower(),
        key.upper(),
        "_".join(words),
        "-".join(words),
        words[0] + "".join(w.capitalize() for w in words[1:]),
        "".join(w.capitalize() for w in words),
        ".".join(words),
        "user_" + "_".join(words),
        "X-" + "-".join(w.capitalize() for w in words),
    ]


def _place(position: str, key: str, secret: str) -> None:
    log = structlog.get_logger()
    if position == "kwarg":
        log.info("e", **{key: secret})
    elif position == "nested":
        log.info("e", ctx={"outer": {key: secret}})
    elif position == "list":
        log.info("e", items=[{"a": 1}, {key: secret}])
    elif position == "header_pairs":
        log.info("e", headers=[(key.encode(), secret.encode()), (b"accept", b"*/*")])
    elif position == "bytes_key":
        log.info("e", data={key.encode(): secret})
    elif position == "stdlib_extra":
        logging.getLogger("lib").warning("e", extra={"ctx": {key: secret}})
    elif position == "free_text":
        log.info(f"request with {key}={secret} failed")
    else:  # pragma: no cover
        raise AssertionError(position)


POSITIONS = [
    "kwarg", "nested", "list", "header_pairs", "bytes_key", "stdlib_extra", "free_text",
]  # fmt: skip


@pytest.mark.usefixtures("json_encoder")
class TestKeyMatrix:
    """Every Sentry denylist key, in ten spellings and seven positions: 0 leaks."""

    @pytest.mark.parametrize("position", POSITIONS)
    def test_no_leak(self, position: str) -> None:
        out = io.StringIO()
        configure_logging("INFO", "json", stream=out)
        leaks = []
        try:
            for key in SENTRY_KEYS:
                for spelling in spellings(key):
                    secret = f"S3cr3t{abs(hash((spelling, position))) % 10**8:08d}"
                    start = len(out.getvalue())
                    _place(position, spelling, secret)
                    if secret in out.getvalue()[start:]:
                        leaks.append(spelling)
        finally:
            reset_logging()
        assert leaks == []
        assert out.getvalue().count("\n") == len(SENTRY_KEYS) * 10

    @pytest.mark.parametrize(
        "key",
        [
            "PGPASSWORD", "userpassword", "authtoken", "passwords", "secrets",
            "aws_secret_access_key", "signing_key", "encryption_key", "credential",
            "credentials", "refresh_tokens", "access_tokens", "clientSecret",
            "X-Amz-Security-Token", "X-Api-Key", "apiKey", "api_keys", "user_sessions",
            "set_cookies", "telephone", "mobile_number",
        ],
    )  # fmt: skip
    def test_compound_and_plural_forms(self, key: str) -> None:
        assert is_sensitive_key(key)
        assert is_sensitive_key(key.encode())


class TestNotSecrets:
    """What a naive suffix rule would catch, and must not."""

    VISIBLE = sorted(
        NOT_SECRETS
        | {"tokenizer", "token_count", "session_count", "keyboard"}
        # plurals that count or collect, and words that merely end like a pattern
        | {"tokens", "input_tokens", "gen_ai.usage.input_tokens", "active_sessions"}
        | {"cookies", "headphone", "studio.headphones", "automobile", "user_has_password"}
    )

    @pytest.mark.parametrize("key", VISIBLE)
    def test_stays_visible(self, key: str, lines: Any) -> None:
        read = lines()
        structlog.get_logger().info("e", **{key: "plainvalue"})
        assert not is_sensitive_key(key)
        assert read()[0][key] == "plainvalue"

    @pytest.mark.parametrize("key", ["nano_auth", "houseAuth", "xphone", "megaSession"])
    def test_exemptions_hold_at_word_boundaries_only(self, key: str) -> None:
        # "no_auth", "use_auth", "iphone", "obsession" end these, but not as words
        assert is_sensitive_key(key)

    def test_logger_names_and_config_errors_are_shown(self, lines: Any) -> None:
        read = lines()
        logging.getLogger("infrakit.tokens").warning("pool recycled")
        structlog.get_logger().info("usage", input_tokens=812, tokens=900)
        stdlib, usage = read()
        assert stdlib["logger"] == "infrakit.tokens"
        assert (usage["input_tokens"], usage["tokens"]) == (812, 900)
        with pytest.raises(ConfigError) as caught:
            load_settings(
                "test", overrides={"tokens.backend": "redis", "tokens.socket_timeout_s": "soon"}
            )
        assert "(got 'soon')" in str(caught.value)


def exported_attributes(attributes: dict[str, Any], **redact: Any) -> Any:
    """The attributes of one span as the exporter received them."""
    provider = TelemetryProvider(
        TelemetrySettings(exporter="memory"), ServiceSettings(), redact=RedactSettings(**redact)
    )
    provider.initialize()
    try:
        with provider.tracer.start_as_current_span("x") as span:
            span.set_attributes(attributes)
        (finished,) = provider.finished_spans()
    finally:
        provider.shutdown()
    return finished.attributes


LONG_SECRET = "Kq9" + "s3cr3tpart" * 8  # puts the URL's '@' past 80 characters


def _connect(password: str) -> None:
    target = f"postgresql+asyncpg://app:{LONG_SECRET}@db.internal:5432/app"  # noqa: F841
    auth_args = ("default", password)  # noqa: F841 - redis-py's name for it
    args = ("AUTH", "default", password)  # noqa: F841 - redis-py's send_command
    sessions = [password]  # noqa: F841
    raise ConnectionError("could not connect")


@pytest.mark.usefixtures("json_encoder")
class TestTracebackLocals:
    """traceback_locals: true, in both formats: what each local may show."""

    @pytest.mark.parametrize("log_format", ["json", "console"])
    def test_no_secret_in_any_local(self, log_format: str) -> None:
        out = io.StringIO()
        configure_logging("INFO", log_format, stream=out, traceback_locals=True)
        try:
            try:
                _connect(LONG_SECRET)
            except ConnectionError:
                structlog.get_logger().exception("down")
                logging.getLogger("lib").exception("down")
        finally:
            reset_logging()
        text = out.getvalue()
        assert text.count("auth_args") == 2
        assert "s3cr3tpart" not in text
        assert "postgresql+asyncpg://app:***@db.internal:5432/app" in text

    def test_json_locals_are_cut_after_scrubbing(self, lines: Any) -> None:
        read = lines(traceback_locals=True)
        try:
            note = "x" * 200  # noqa: F841
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            structlog.get_logger().exception("boom")
        shown = _frame(read()[0], "test_json_locals_are_cut_after_scrubbing")["locals"]["note"]
        assert shown == "'" + "x" * 79 + "+122"

    @pytest.mark.parametrize(
        ("name", "mentions"),
        [
            ("auth_args", True), ("password_hash", True), ("apiKeyId", True), ("tokens", True),
            ("session_factory", True), ("token_count", False), ("auth_method", False),
            ("author_name", False), ("tokenizer", False), ("args", False), ("self", False),
        ],
    )  # fmt: skip
    def test_which_local_names_mention_a_secret(self, name: str, mentions: bool) -> None:
        from infrakit.scrub import KeyMatcher

        assert KeyMatcher().mentions(name) is mentions


class _Holder:
    def __repr__(self) -> str:
        return "Holder(user='ann', password=SecretThing(b'hunter2'), auth=['hunter3'])"


class TestValues:
    """After a sensitive name, the whole value goes, whatever its shape."""

    def test_object_repr(self, lines: Any) -> None:
        read = lines()
        structlog.get_logger().info("connecting", client=_Holder())
        logging.getLogger("lib").warning("connecting with %r", _Holder())
        for event in read():
            assert "hunter" not in json.dumps(event)
        assert read()[0]["client"] == "Holder(user='ann', password=[REDACTED], auth=[REDACTED])"


class TestQueryParameters:
    """Sensitive parameter names in free text, as uvicorn's access log writes them."""

    @pytest.mark.parametrize(
        ("path", "shown"),
        [
            ("/blob?sv=2022-11-02&sig=AZURESIG123", "/blob?sv=[REDACTED]&sig=[REDACTED]"),
            ("/login?pass=hunter2&next=/", "/login?pass=[REDACTED]&next=/"),
            ("/x?ticket=T1SECRET", "/x?ticket=[REDACTED]"),
            ("/share?sas=SASSECRET", "/share?sas=[REDACTED]"),
        ],
    )
    def test_access_log_lines(self, path: str, shown: str, lines: Any) -> None:
        read = lines(extra_params=["ticket"])
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "GET", path, "1.1", 200
        )
        assert read()[0]["event"] == f'127.0.0.1:50000 - "GET {shown} HTTP/1.1" 200'


class TestSpanAttributes:
    """The URL-shaped attributes of spans."""

    def test_http_target_like_url_query(self) -> None:
        attributes = exported_attributes(
            {"http.target": "/blob?sv=2022&sig=AZURESIG123&ticket=T1&page=2"},
            extra_params=["ticket"],
        )
        assert attributes["http.target"] == "/blob?sv=REDACTED&sig=REDACTED&ticket=REDACTED&page=2"

    def test_url_full_with_a_url_inside(self) -> None:
        attributes = exported_attributes(
            {"url.full": "https://app/login?next=https://u:hunter2@internal/x&token=t1"}
        )
        assert attributes["url.full"] == (
            "https://app/login?next=https://u:***@internal/x&token=REDACTED"
        )


_rng = random.Random(1)
IPV6_TEXT = "peers " + ", ".join(
    str(ipaddress.IPv6Address(_rng.getrandbits(128))) for _ in range(200)
)
JSON_TEXT = "payload " + json.dumps(
    {f"field_{i}": {"id": i, "name": f"n{i}", "at": "2024-05-01T12:30:45Z"} for i in range(30)}
)
TIMES_TEXT = "ran at 01:02:03.456, 04:05:06 and 07:08:09 " * 40


class TestCost:
    """The scrubber's work on large texts stays proportionate, measured without
    a clock: a ':' or '=' that no sensitive name can end before (IPv6
    addresses, times, JSON keys naming no secret) costs no Python-level work
    at all (counted with a profile hook)."""

    @staticmethod
    def python_calls(text: str) -> int:
        scrubber = Scrubber()
        scrubber.text("warm: up")
        calls = 0

        def count(frame: Any, event: str, arg: Any) -> None:
            nonlocal calls
            if event in ("call", "c_call"):
                calls += 1

        sys.setprofile(count)
        try:
            assert scrubber.text(text) is text
        finally:
            sys.setprofile(None)
        return calls

    @pytest.mark.parametrize(
        "text", [IPV6_TEXT, JSON_TEXT, TIMES_TEXT], ids=["ipv6", "json", "times"]
    )
    def test_no_work_per_separator(self, text: str) -> None:
        assert text.count(":") >= 150
        assert self.python_calls(text) < 20


class TestTextRules:
    """Free text: what each rule masks, and what it leaves alone."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("see redis://:pw@h:6379/0 now", "see redis://:***@h:6379/0 now"),
            ("postgresql://u:a@b/c:d@db/x", "postgresql://u:***@db/x"),
            ("redis://h/0?password=Y&db=1", "redis://h/0?password=***&db=1"),
            ("https://h/cb#access_token=abc&state=1", "https://h/cb#access_token=***&state=1"),
            ("GET /x?token=abc&page=2", "GET /x?token=[REDACTED]&page=2"),
            ("Authorization: Bearer abc.def.ghi", "Authorization: [REDACTED]"),
            ("sent Basic dXNlcjpwYXNz here", "sent Basic [REDACTED] here"),
            ("got eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln ok", "got [REDACTED] ok"),
            (
                "Login(username='ann', password='x\\'y')",
                "Login(username='ann', password='[REDACTED]')",
            ),
            ('{"api_key": "abc", "n": 1}', '{"api_key": "[REDACTED]", "n": 1}'),
            ("PGPASSWORD=pw psql", "PGPASSWORD=[REDACTED] psql"),
            ("{'password': 'abcdef+12", "{'password': '[REDACTED]'"),  # cut by truncation
            ("status: ok, took 12 ms at 01:02:03", "status: ok, took 12 ms at 01:02:03"),
            ("the tokenizer: fast; author=ann", "the tokenizer: fast; author=ann"),
            ("https://docs.example.com/a?page=2", "https://docs.example.com/a?page=2"),
            # a sensitive name's whole value, as a repr writes it
            ("{'password': b'x', 'n': 1}", "{'password': [REDACTED], 'n': 1}"),
            ("{'password': ['x', 'y'], 'n': 1}", "{'password': [REDACTED], 'n': 1}"),
            ("{'password': ('x',), 'n': 1}", "{'password': [REDACTED], 'n': 1}"),
            ("{'token': {'a': [1, (2, ')')], 'b': '}'}, 'n': 1}", "{'token': [REDACTED], 'n': 1}"),
            ("Cfg(secret=SecretThing('x'), n=1)", "Cfg(secret=[REDACTED], n=1)"),
            ("Cfg(secret=<Thing object at 0x7f>, n=1)", "Cfg(secret=[REDACTED], n=1)"),
            ("password=pa#ss next", "password=[REDACTED] next"),
            ("password=<x> next", "password=[REDACTED] next"),
            ("password=&x next", "password=[REDACTED] next"),
            ("password=pa'ss\"x next", "password=[REDACTED] next"),
            ("private_key=-----BEGIN EC PRIVATE KEY-----\nMIIabc\n-----END EC PRIVATE KEY----- ok",
             "private_key=[REDACTED] ok"),
            ("secret=(cut short by trunc", "secret=[REDACTED]"),
            # ... but in a URL query, '&' and '#' end it
            ("/x?password=pa&b=1#frag", "/x?password=[REDACTED]&b=1#frag"),
            # a URL that lost its scheme's ':' (a typo in a profile)
            ("'redis//:s3cr3t@h:6379'", "'redis//:***@h:6379'"),
            # a password that reads as "name:" is the URL's, not a pair's
            ("postgresql+asyncpg://app:PASSWORD:@db/app", "postgresql+asyncpg://app:***@db/app"),
            # URLs inside or right after another URL
            ("GET https://app/login?next=https://u:hunter2@internal/x 302",
             "GET https://app/login?next=https://u:***@internal/x 302"),
            ("https://gw/x,redis://:hunter2@c", "https://gw/x,redis://:***@c"),
            ("urls=https://a/b;redis://:hunter2@c", "urls=https://a/b;redis://:***@c"),
            ("https://gw/x?next=https%3A%2F%2Fu%3Ahunter2%40h&a=1", "https://gw/x?next=***&a=1"),
        ],
    )  # fmt: skip
    def test_rules(self, text: str, expected: str) -> None:
        assert scrub_text(text) == expected

    def test_unchanged_text_is_the_same_object(self) -> None:
        text = "nothing to see: here"
        assert scrub_text(text) is text

    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            ("postgresql+asyncpg://u:p@ss@h:5432/db", "postgresql+asyncpg://u:***@h:5432/db"),
            ("postgresql+asyncpg://u@h/db?password=X", "postgresql+asyncpg://u@h/db?password=***"),
            ("redis://h/0?x=a@b", "redis://h/0?x=a@b"),
            ("sqlite+aiosqlite:////home/me@corp/app.db", "sqlite+aiosqlite:////home/me@corp/app.db"),
            ("rediss://:p/w@h:6380/0?ssl_ca_certs=/ca.pem", "rediss://:***@h:6380/0?ssl_ca_certs=/ca.pem"),
            # an '@' in a query value is no user-info, even with a port before it
            ("redis://cache:6379/0?client_name=svc@host", "redis://cache:6379/0?client_name=svc@host"),
            ("https://host/users/@me", "https://host/users/@me"),
            # a '?' in the password, with or without a query after it
            ("postgresql+asyncpg://app:@000000?@db:5432/app", "postgresql+asyncpg://app:***@db:5432/app"),
            ("postgresql://u:pa?@db/x?sslmode=require", "postgresql://u:***@db/x?sslmode=require"),
            ("postgresql://u:pw@h1:5432,h2:5433/db?target_session_attrs=any",
             "postgresql://u:***@h1:5432,h2:5433/db?target_session_attrs=any"),
            ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
            ("http://:pw@h:x/0", "http://:***@h:x/0"),  # no authority parses: mask anyway
            # an '@' after "?name=": a password holding "?name=" unless a path
            # and a real port show the host
            ("postgresql+asyncpg://app:00000?0=@db/app", "postgresql+asyncpg://app:***@db/app"),
            ("postgresql+asyncpg://app:@0000?0=@db/app", "postgresql+asyncpg://app:***@db/app"),
            ("postgresql+asyncpg://app:0000/?0=@db/app", "postgresql+asyncpg://app:***@db/app"),
            ("postgresql+asyncpg://app:1234/?0=@db/app", "postgresql+asyncpg://app:***@db/app"),
            ("https://h:443/x?email=a@b.com", "https://h:443/x?email=***"),
            # parameters inside a parameter's value
            ("https://h/cb?next=/a?token=x&b=1", "https://h/cb?next=/a?token=***&b=1"),
            ("https://app/login?next=https://u:hunter2@internal/x",
             "https://app/login?next=https://u:***@internal/x"),
            ("https://gw/x,redis://:hunter2@c", "https://gw/x,redis://:***@c"),
            ("https://a/b?r=redis://:x@c/0?next=https://u:y@d", "https://a/b?r=redis://:***@c/0?next=https://u:***@d"),
        ],
    )  # fmt: skip
    def test_mask_url(self, url: str, masked: str) -> None:
        assert mask_url(url) == masked

    @pytest.mark.parametrize(
        ("url", "username", "password", "netloc", "path", "query"),
        [
            ("redis://cache:6379/0?client_name=svc@host", None, None, "cache:6379", "/0",
             "client_name=svc@host"),
            ("postgresql+asyncpg://app:@000000?@db:5432/app", "app", "@000000?", "db:5432",
             "/app", ""),
            ("postgresql+asyncpg://u:K@2@127.0.0.1:9/db?password=K@2", "u", "K@2",
             "127.0.0.1:9", "/db", "password=K@2"),
            ("postgresql://u:pa?@db/x?sslmode=require", "u", "pa?", "db", "/x",
             "sslmode=require"),
            ("postgresql://u:p%40w@h1:5432,h2:5433,[::1]:5434/db", "u", "p@w",
             "h1:5432,h2:5433,[::1]:5434", "/db", ""),
            ("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0", None, "pw",
             "s1:26379,s2:26379", "/mymaster/0", ""),
            ("redis://h/0?x=a@b", None, None, "h", "/0", "x=a@b"),
            ("sqlite+aiosqlite:////home/me@corp/app.db", None, None, "",
             "//home/me@corp/app.db", ""),
            ("https://host/users/@me", None, None, "host", "/users/@me", ""),
        ],
    )  # fmt: skip
    def test_parse_url(
        self,
        url: str,
        username: str | None,
        password: str | None,
        netloc: str,
        path: str,
        query: str,
    ) -> None:
        parsed = parse_url(url)
        assert (parsed.username, parsed.password, parsed.netloc) == (username, password, netloc)
        assert (parsed.path, parsed.query) == (path, query)
