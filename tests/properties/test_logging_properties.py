"""Seed properties 13 and 14 (logging), and 18 for the logging API."""

from __future__ import annotations

import io
import json
import logging
import re
import string
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from infrakit.logging import (
    REDACTED,
    PIIRedactor,
    configure_logging,
    is_sensitive_key,
    request_context,
    reset_logging,
    set_request_id,
)

SENSITIVE_WORDS = [
    ["password"], ["api", "key"], ["access", "token"], ["client", "secret"], ["authorization"],
    ["cookie"], ["credit", "card"], ["email"], ["ssn"], ["session", "id"], ["private", "key"],
]  # fmt: skip
SAFE_KEYS = ["user", "count", "tokenizer", "author", "status", "path", "session_count", "items"]


@st.composite
def sensitive_keys(draw: st.DrawFn) -> str:
    words = draw(st.sampled_from(SENSITIVE_WORDS))
    prefix = draw(st.sampled_from(["", "db_", "user-", "X-", "my."]))
    style = draw(st.sampled_from(["snake", "kebab", "camel", "upper", "title"]))
    if style == "snake":
        core = "_".join(words)
    elif style == "kebab":
        core = "-".join(w.capitalize() for w in words)
    elif style == "camel":
        core = words[0] + "".join(w.capitalize() for w in words[1:])
    elif style == "upper":
        core = "_".join(words).upper()
    else:
        core = "".join(w.capitalize() for w in words)
    return prefix + core


keys = st.one_of(sensitive_keys(), st.sampled_from(SAFE_KEYS))
# lower-case words: no rule has anything to take from them (no separator, no
# URL, no credential word), so they must come out exactly as they went in
plain_words = st.from_regex(r"[a-z]{1,8}(?: [a-z]{1,8}){0,3}", fullmatch=True).filter(
    lambda s: "bearer" not in s and "basic" not in s
)
scalars = st.one_of(
    st.text(max_size=20),
    plain_words,
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=25,
)
events = st.dictionaries(keys, values, min_size=1, max_size=8)


def assert_redacted(original: Any, redacted: Any) -> None:
    if isinstance(original, dict):
        assert isinstance(redacted, dict)
        assert set(original) == set(redacted)
        for key, value in original.items():
            if is_sensitive_key(key):
                assert redacted[key] == REDACTED, key
            else:
                assert_redacted(value, redacted[key])
    elif isinstance(original, tuple) and len(original) == 2 and is_sensitive_key(original[0]):
        # a (name, value) pair, as in header lists: judged by its name
        assert redacted[1] == REDACTED
    elif isinstance(original, list | tuple):
        assert type(redacted) is type(original)
        assert len(redacted) == len(original)
        for a, b in zip(original, redacted, strict=True):
            assert_redacted(a, b)
    elif isinstance(original, str):
        assert isinstance(redacted, str)
        if PLAIN.fullmatch(original):
            assert redacted == original
    elif isinstance(original, bytes):
        assert isinstance(redacted, str)  # decoded, as text
        if PLAIN.fullmatch(original.decode("latin-1")):
            assert redacted == original.decode()
    else:
        assert redacted == original


PLAIN = re.compile(r"(?!.*bearer)(?!.*basic)[a-z ]*")

# Secrets written the ways the text rules promise to read (docs/logging.md):
# each must be gone from the redacted event, wherever it sits.
SHAPES = [
    "{name}={secret}", "{name}: {secret}", "{{'{name}': '{secret}'}}",
    '{{"{name}": "{secret}", "n": 1}}', "Cfg({name}=b'{secret}')", "{name}=['{secret}', 'x']",
    "GET /x?{name}={secret}&page=2 HTTP/1.1", "redis://:{secret}@cache:6379/0",
    "https://u:{secret}@h/cb?next=/", "see https://gw/x?next=https://u:{secret}@in/y",
    "Authorization: Bearer {secret}", "sent Basic {secret}",
]  # fmt: skip


@st.composite
def planted(draw: st.DrawFn) -> tuple[Any, str]:
    secret = "Zq8" + draw(st.text(string.ascii_letters + string.digits, min_size=8, max_size=16))
    text = draw(st.sampled_from(SHAPES)).format(name=draw(sensitive_keys()), secret=secret)
    text = f"{draw(plain_words)} {text} {draw(plain_words)}"
    wrap = draw(st.sampled_from(["str", "bytes", "list", "tuple", "dict", "deep"]))
    value: Any = {
        "str": text,
        "bytes": text.encode(),
        "list": [1, text],
        "tuple": (text, None),
        "dict": {draw(st.sampled_from(SAFE_KEYS)): text},
        "deep": {"a": [{"b": (text,)}]},
    }[wrap]
    return value, secret


class TestProperty13:
    """**Property 13: PII Redaction Completeness** (Validates: Requirements 5.1, 5.2)."""

    @given(event=events)
    def test_every_sensitive_value_is_redacted_at_any_depth(self, event: dict[str, Any]) -> None:
        snapshot = repr(event)
        # structlog hands the processor a dict of its own; nested values are the caller's
        out = PIIRedactor()(None, "info", dict(event))
        assert_redacted(event, out)
        assert PIIRedactor().redact(event) == out
        assert repr(event) == snapshot  # the caller's objects are not mutated

    @given(key=sensitive_keys(), secret=st.text(string.ascii_letters, min_size=12, max_size=20))
    def test_rendered_json_never_holds_the_secret(self, key: str, secret: str) -> None:
        def render(value: str) -> str:
            stream = io.StringIO()
            configure_logging("INFO", stream=stream)
            try:
                structlog.get_logger().info("e", nested={"list": [{key: value}]}, **{key: value})
                logging.getLogger("lib").warning("s", extra={"ctx": {key: value}})
            finally:
                reset_logging()
            return stream.getvalue()

        if secret in render("PLACEHOLDER"):
            return  # the secret is a substring of the line itself (its key, say)
        text = render(secret)
        assert secret not in text
        assert text.count(REDACTED) == 3


class TestPlantedSecrets:
    """Secrets in free text, in every shape the rules promise to read, under keys
    that name no secret, at any depth: none survives, in the event or the line."""

    @given(plants=st.lists(planted(), min_size=1, max_size=4))
    @pytest.mark.usefixtures("json_encoder")
    def test_no_planted_secret_survives(self, plants: list[tuple[Any, str]]) -> None:
        event = {
            f"{SAFE_KEYS[i % len(SAFE_KEYS)]}{i}": value for i, (value, _) in enumerate(plants)
        }
        out = PIIRedactor()(None, "info", dict(event))
        stream = io.StringIO()
        configure_logging("INFO", stream=stream)
        try:
            structlog.get_logger().info("e", **event)
        finally:
            reset_logging()
        for _, secret in plants:
            assert secret not in repr(out)
            assert secret not in stream.getvalue()


class TestProperty14:
    """**Property 14: Request ID Context Propagation** (Validates: Requirements 5.5)."""

    @given(
        request_id=st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=64),
        messages=st.lists(st.text(max_size=10), min_size=1, max_size=5),
    )
    @pytest.mark.usefixtures("json_encoder")
    def test_every_event_in_context_has_the_request_id(
        self, request_id: str, messages: list[str]
    ) -> None:
        stream = io.StringIO()
        configure_logging("DEBUG", stream=stream)
        try:
            with request_context(request_id):
                for message in messages:
                    structlog.get_logger().info(message)
                    logging.getLogger("stdlib").info(message)
            structlog.get_logger().info("after")
        finally:
            reset_logging()
        # only this test's events: a thread left running by another test may
        # log into the configured stream meanwhile
        ours = {*messages, "after"}
        lines = [
            line
            for line in map(json.loads, stream.getvalue().splitlines())
            if line["event"] in ours
        ]
        assert len(lines) == 2 * len(messages) + 1
        assert all(line["request_id"] == request_id for line in lines[:-1])
        assert "request_id" not in lines[-1]


class TestProperty18Logging:
    """**Property 18: Validation Error Type Consistency** for the logging API."""

    @given(level=st.text(max_size=12))
    def test_invalid_levels(self, level: str) -> None:
        if level.strip().upper() in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            return
        with pytest.raises(ValueError, match=r".+") as exc:
            configure_logging(level, stream=io.StringIO())
        assert str(exc.value)

    @given(pattern=st.text(alphabet=" _-.\t", max_size=5))
    def test_empty_patterns(self, pattern: str) -> None:
        with pytest.raises(ValueError, match=r".+"):
            PIIRedactor([pattern])

    @given(request_id=st.text(alphabet=" \t\n", max_size=5))
    def test_blank_request_ids(self, request_id: str) -> None:
        with pytest.raises(ValueError, match=r".+"):
            set_request_id(request_id)
