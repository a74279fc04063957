from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import io
import json
import logging
import pathlib
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pydantic
import pytest
import structlog

from infrakit.logging import (
    DEFAULT_PATTERNS,
    REDACTED,
    PIIRedactor,
    configure_logging,
    is_sensitive_key,
    reset_logging,
)

SENTRY_DEFAULT_DENYLIST = [
    "password", "passwd", "secret", "api_key", "apikey", "auth", "credentials", "mysql_pwd",
    "privatekey", "private_key", "token", "session", "csrftoken", "sessionid", "x_csrftoken",
    "x_forwarded_for", "set_cookie", "cookie", "authorization", "x_api_key", "aiohttp_session",
    "connect.sid", "csrf_token", "csrf", "_csrf", "_csrf_token", "PHPSESSID", "_session",
    "symfony", "user_session", "_xsrf", "XSRF-TOKEN",
]  # fmt: skip
SENTRY_DEFAULT_PII_DENYLIST = ["x_forwarded_for", "x_real_ip", "ip_address", "remote_addr"]


class TestKeyMatching:
    """Which keys are sensitive, and which are not."""

    @pytest.mark.parametrize("key", SENTRY_DEFAULT_DENYLIST + SENTRY_DEFAULT_PII_DENYLIST)
    def test_sentry_denylists(self, key: str) -> None:
        assert is_sensitive_key(key)

    def test_patterns_include_sentry_lists(self) -> None:
        assert set(SENTRY_DEFAULT_DENYLIST + SENTRY_DEFAULT_PII_DENYLIST) <= DEFAULT_PATTERNS

    @pytest.mark.parametrize(
        "key",
        [
            "access_token", "refresh_token", "api_token", "client_secret", "secret_key",
            "db_password", "X-Api-Key", "x-api-key", "apiKey", "ApiKey", "API_KEY", "accessToken",
            "Authorization", "proxy-authorization", "Proxy-Authorization", "Set-Cookie",
            "user_email", "email", "phone", "ssn", "credit_card", "card_number", "cvv", "iban",
            "session_id", "user.password", "PASSWORD", "newPassword",
        ],
    )  # fmt: skip
    def test_compound_and_cased_keys(self, key: str) -> None:
        assert is_sensitive_key(key)

    @pytest.mark.parametrize(
        "key",
        [
            "tokenizer", "token_count", "author", "session_count", "authority", "sessions_total",
            "user_id", "event", "level", "timestamp", "request_id", "path", "status_code",
            "passwordless_enabled", "emailer", "", "tokens_used",
        ],
    )  # fmt: skip
    def test_no_false_positives(self, key: str) -> None:
        assert not is_sensitive_key(key)

    def test_non_string_keys_are_not_sensitive(self) -> None:
        assert not is_sensitive_key(1)
        assert not is_sensitive_key(None)

    def test_extra_patterns(self) -> None:
        assert not is_sensitive_key("national_insurance")
        assert is_sensitive_key("national_insurance", ["national_insurance"])
        assert is_sensitive_key("customer-National-Insurance", ["national_insurance"])


@dataclasses.dataclass
class Login:
    user: str
    password: str


class Card(pydantic.BaseModel):
    holder: str
    card_number: str


class Color(enum.Enum):
    RED = "red"


class Leaky(enum.Enum):
    TARGET = "redis://:pw@h:6379/0"


class Connection:
    def __structlog__(self) -> dict[str, str]:
        return {"url": "redis://:pw@cache:6379/0", "password": "pw"}

    def __repr__(self) -> str:
        return "Connection()"


class TestRedactor:
    """The structlog processor."""

    def redact(self, event: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = PIIRedactor(**kwargs).redact(event)
        return result

    def test_nested_structures(self) -> None:
        event = {
            "event": "login",
            "password": "hunter2",
            "user": {"name": "ann", "api_key": "k", "prefs": [{"token": "t"}, {"theme": "dark"}]},
            "items": ({"secret": 1}, "plain"),
            "tags": {"a", "b"},
            "raw": {"cookie": b"\x00bytes"},
            "obj": Login("ann", "pw"),
            "card": Card(holder="ann", card_number="4111"),
        }
        out = self.redact(event)
        assert out["password"] == REDACTED
        assert out["user"] == {
            "name": "ann",
            "api_key": REDACTED,
            "prefs": [{"token": REDACTED}, {"theme": "dark"}],
        }
        assert out["items"] == ({"secret": REDACTED}, "plain")
        assert isinstance(out["items"], tuple)
        assert out["tags"] == {"a", "b"}
        assert out["raw"] == {"cookie": REDACTED}
        assert out["obj"] == {"user": "ann", "password": REDACTED}
        assert out["card"] == {"holder": "ann", "card_number": REDACTED}

    def test_whole_container_under_sensitive_key(self) -> None:
        out = self.redact({"credentials": {"user": "a", "pw": "b"}, "token": [1, 2]})
        assert out == {"credentials": REDACTED, "token": REDACTED}

    def test_caller_objects_are_not_mutated(self) -> None:
        inner = {"token": "t", "ok": 1}
        items = [inner]
        event = {"data": {"items": items}, "password": "p"}
        out = self.redact(event)
        assert event == {"data": {"items": [{"token": "t", "ok": 1}]}, "password": "p"}
        assert inner == {"token": "t", "ok": 1}
        assert out["data"]["items"][0]["token"] == REDACTED

    def test_processor_redacts_structlogs_own_dict_in_place(self) -> None:
        nested = {"token": "t"}
        event = {"password": "p", "data": nested}
        out = PIIRedactor()(None, "info", event)
        assert out is event
        assert out == {"password": REDACTED, "data": {"token": REDACTED}}
        assert nested == {"token": "t"}  # nested values belong to the caller

    def test_untouched_containers_are_not_copied(self) -> None:
        clean = {"a": [1, 2], "b": {"c": "d"}}
        out = self.redact({"clean": clean})
        assert out["clean"] is clean

    def test_urls_with_passwords_are_masked_under_any_key(self) -> None:
        out = self.redact({"dsn_target": "postgresql://app:pw@db/app", "note": "a@b"})
        assert out["dsn_target"] == "postgresql://app:***@db/app"
        assert out["note"] == "a@b"

    def test_a_name_value_pair_anywhere(self) -> None:
        out = self.redact(
            {
                "header": ("X-Api-Key", "k1"),
                "user": {"auth": 1, "h": (b"cookie", b"c")},
                "t": ("a", "b"),
            }
        )
        assert out["header"] == ("X-Api-Key", REDACTED)
        assert out["user"] == {"auth": REDACTED, "h": ("cookie", REDACTED)}
        assert out["t"] == ("a", "b")

    def test_keys_are_scrubbed_too(self) -> None:
        event = {
            "event": "health",
            "status": {"redis://:pw1@h:6379/0": "down", "postgresql://u:pw2@db/app": "up"},
            "redis://:pw3@cache:6379/0": "down",
            "headers": {b"x-upstream=redis://:pw4@h": 1, "token=abc": 2, "plain": 3},
        }
        out = self.redact(event)
        assert out["status"] == {"redis://:***@h:6379/0": "down", "postgresql://u:***@db/app": "up"}
        assert out["redis://:***@cache:6379/0"] == "down"
        assert out["headers"] == {"x-upstream=redis://:***@h": 1, "token=[REDACTED]": 2, "plain": 3}
        assert "pw" not in repr(out)
        assert event["status"] == {
            "redis://:pw1@h:6379/0": "down",
            "postgresql://u:pw2@db/app": "up",
        }

    def test_keys_scrubbed_alike_both_stay(self) -> None:
        out = self.redact({"m": {"redis://:a@h": 1, "redis://:b@h": 2}})
        assert out["m"] == {"redis://:***@h": 1, "redis://:***@h (2)": 2}

    @pytest.mark.usefixtures("json_encoder")
    def test_keys_in_the_rendered_line(self) -> None:
        stream = io.StringIO()
        configure_logging("INFO", "json", stream=stream)
        try:
            structlog.get_logger().info("health", status={"redis://:pw@h:6379/0": "down"})
            structlog.get_logger().info("health", **{"redis://:pw@h:6379/0": "down"})
            logging.getLogger("lib").warning("x", extra={"status": {"redis://:pw@h/0": "down"}})
        finally:
            reset_logging()
        assert ":pw@" not in stream.getvalue()
        assert stream.getvalue().count(":***@") == 3

    def test_objects_that_cannot_hold_a_secret_stay_as_they_are(self) -> None:
        when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
        ident = uuid.UUID(int=7)
        values = {
            "at": when,
            "day": when.date(),
            "took": datetime.timedelta(seconds=3),
            "id": ident,
            "price": decimal.Decimal("9.99"),
            "color": Color.RED,
            "path": pathlib.PurePosixPath("/srv/app"),
            "nested": [{"at": when}],
        }
        out = self.redact(values)
        for key, value in values.items():
            assert out[key] == value
            assert type(out[key]) is type(value)
        assert out["nested"] is values["nested"]

    def test_enums_and_paths_holding_secrets_are_scrubbed(self) -> None:
        out = self.redact(
            {"mode": Leaky.TARGET, "path": pathlib.PurePosixPath("/tmp/password=hunter2")}
        )
        assert out["mode"] == "<Leaky.TARGET: 'redis://:***@h:6379/0'>"
        assert out["path"] == "PurePosixPath('/tmp/password=[REDACTED]"

    def test_structlog_hook_is_honoured_and_scrubbed(self) -> None:
        out = self.redact({"conn": Connection(), "hooks": [Connection()]})
        assert out["conn"] == {"url": "redis://:***@cache:6379/0", "password": REDACTED}
        assert out["hooks"] == [out["conn"]]

    @pytest.mark.usefixtures("json_encoder")
    def test_in_captured_logs_and_in_the_line(self) -> None:
        from infrakit.testing import capture_logs

        when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
        stream = io.StringIO()
        configure_logging("INFO", "json", stream=stream)
        try:
            with capture_logs() as events:
                structlog.get_logger().info("e", at=when, id=uuid.UUID(int=7), conn=Connection())
        finally:
            reset_logging()
        (event,) = events
        assert (event["at"], event["id"]) == (when, uuid.UUID(int=7))
        line = json.loads(stream.getvalue())
        assert line["at"] == repr(when)  # as structlog's JSONRenderer prints it
        assert line["id"] == repr(uuid.UUID(int=7))
        assert line["conn"] == {"url": "redis://:***@cache:6379/0", "password": REDACTED}

    def test_replacement_and_extra_patterns(self) -> None:
        out = self.redact(
            {"national_id": "x", "nationality": "y"},
            additional_patterns=["national_id"],
            replacement="***",
        )
        assert out == {"national_id": "***", "nationality": "y"}

    def test_cycles_do_not_recurse_forever(self) -> None:
        loop: list[Any] = []
        loop.append(loop)
        out = self.redact({"loop": loop})
        depth = 0
        node: Any = out["loop"]
        while isinstance(node, list):
            node = node[0]
            depth += 1
        assert node == "[TOO DEEP]"
        assert depth <= 40

    @pytest.mark.parametrize("pattern", ["", "  ", "__", 3])
    def test_bad_pattern_is_value_error(self, pattern: Any) -> None:
        with pytest.raises(ValueError, match="redaction pattern"):
            PIIRedactor([pattern])


@dataclasses.dataclass
class HalfBuilt:
    user: str
    token: str = dataclasses.field(init=False)  # never set: getattr raises


class BrokenMapping(Mapping[str, str]):
    def __getitem__(self, key: str) -> str:
        raise RuntimeError("no items")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("no keys")

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "BrokenMapping(password='Kq9hunter2')"


@pytest.mark.usefixtures("json_encoder")
class TestNothingLeaksWhenRedactionFails:
    """A value the redactor cannot walk, and a record the handler cannot
    write: neither the output nor stderr shows the raw values."""

    SECRET = "Kq9hunter2"

    def run(self, log: Any, *, break_formatter: bool = False) -> tuple[list[Any], str]:
        out, err = io.StringIO(), io.StringIO()
        configure_logging("INFO", "json", stream=out)
        try:
            if break_formatter:
                (handler,) = [
                    h for h in logging.getLogger().handlers if hasattr(h, "infrakit_handler")
                ]
                handler.setFormatter(_FailingFormatter())
            with contextlib.redirect_stderr(err):
                log()
        finally:
            reset_logging()
        assert self.SECRET not in out.getvalue() + err.getvalue()
        return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()

    def test_dataclass_with_an_unset_field(self) -> None:
        lines, err = self.run(
            lambda: logging.getLogger("lib").warning(
                "login password=%s", self.SECRET, extra={"obj": HalfBuilt("ann")}
            )
        )
        assert err == ""
        assert lines[0]["obj"] == {"user": "ann", "token": REDACTED}
        assert lines[0]["event"] == f"login password={REDACTED}"

    def test_a_value_that_breaks_redaction(self) -> None:
        def log() -> None:
            logging.getLogger("lib").warning(
                "login password=%s", self.SECRET, extra={"obj": BrokenMapping()}
            )
            structlog.get_logger().warning("login", obj=BrokenMapping(), password=self.SECRET)

        (stdlib, native), err = self.run(log)
        assert err == ""
        assert stdlib["redaction_error"] == native["redaction_error"] == "RuntimeError"
        assert (stdlib["event"], stdlib["logger"], stdlib["level"]) == (
            f"login password={REDACTED}",
            "lib",
            "warning",
        )
        assert "obj" not in stdlib

    def test_a_record_that_cannot_be_written(self) -> None:
        lines, err = self.run(
            lambda: logging.getLogger("lib").warning("login password=%s", self.SECRET),
            break_formatter=True,
        )
        assert lines == []
        assert "Logging error: RuntimeError" in err
        assert "'lib'" in err
        assert "login" not in err  # neither the message nor the source line


class _FailingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        raise RuntimeError("cannot format")
