"""Properties of the profile loader; seed property 18 for settings."""

from __future__ import annotations

import contextlib
import io
import string
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infrakit import ConfigError, Infra, load_settings
from infrakit.cli import main as cli_main
from infrakit.database.session import SqlAlchemyDatabaseSettings
from infrakit.settings import InfraSettings


def load_text(content: str | bytes, **kwargs: Any) -> InfraSettings:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        kwargs.setdefault("environ", {})
        return load_settings(path, **kwargs)


yaml_ish = st.text(
    alphabet=st.sampled_from(list("abcdefgxyz:-[]{}!&*#|>'\"\n $%@,.0123456789\t_/\\?")),
    max_size=200,
)


class TestLoaderNeverCrashes:
    """Arbitrary text or bytes as a profile: valid settings or ConfigError, nothing else."""

    @given(content=st.text(max_size=300))
    def test_arbitrary_text(self, content: str) -> None:
        with contextlib.suppress(ConfigError):
            load_text(content)

    @given(content=yaml_ish)
    def test_yaml_shaped_text(self, content: str) -> None:
        with contextlib.suppress(ConfigError):
            load_text(content)

    @given(content=st.binary(max_size=300))
    def test_arbitrary_bytes(self, content: bytes) -> None:
        with contextlib.suppress(ConfigError):
            load_text(content)

    @given(
        section=st.sampled_from(["service", "database", "tokens", "audit", "telemetry", "logging"]),
        key=st.text(string.ascii_lowercase + "_", min_size=1, max_size=15),
        value=st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans()),
    )
    def test_random_keys_and_values(self, section: str, key: str, value: Any) -> None:
        with contextlib.suppress(ConfigError):
            load_text("", overrides={f"{section}.{key}": value})


secrets = st.text(
    string.ascii_letters + string.digits + "!$%^*()-_=+~:/?#[]@", min_size=8, max_size=24
)


def every_rendering(settings: InfraSettings) -> list[str]:
    out = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
        str(settings.masked()),
        str(settings.sources()),
    ]
    out.extend(repr(getattr(settings, s)) for s in ("database", "tokens", "telemetry"))
    return out


class TestSecretsNeverShow:
    """A generated secret never appears in any string the kit makes of settings."""

    @given(secret=secrets)
    def test_settings_strings(self, secret: str) -> None:
        placeholder = "PLACEHOLDERxyz"
        env = {
            "DB_PASS": secret,
            "INFRAKIT__TOKENS__BACKEND": "redis",
            "INFRAKIT__TOKENS__URL": f"redis://:{quote(secret, safe='')}@cache:6379/0",
            "INFRAKIT__TELEMETRY__EXPORTER": "otlp",
            "INFRAKIT__TELEMETRY__HEADERS": f'{{"authorization": "Bearer {secret}"}}',
        }
        profile = "database:\n  url: postgresql+asyncpg://app:${DB_PASS}@db:5432/app\n"
        baseline = every_rendering(load_text(profile, environ={**env, "DB_PASS": placeholder}))
        if any(secret in text for text in baseline):
            return  # the secret is a substring of unrelated output (e.g. 'postgresql')
        settings = load_text(profile, environ=env)
        assert isinstance(database := settings.database, SqlAlchemyDatabaseSettings)
        assert database.url.get_secret_value().count(secret) == 1
        for text in every_rendering(settings):
            assert secret not in text
            assert quote(secret, safe="") not in text

    @given(secret=secrets)
    def test_cli_output(self, secret: str) -> None:
        def render(value: str) -> list[str]:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "p.yaml"
                path.write_text(
                    f"database:\n  url: 'postgresql+asyncpg://app:{value}@db/app'\n"
                    f"telemetry:\n  headers: {{x-api-key: '{value}'}}\n",
                    encoding="utf-8",
                )
                outputs = []
                for argv in (["show", str(path)], ["show", str(path), "--sources"]):
                    out, err = io.StringIO(), io.StringIO()
                    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                        cli_main(["config", *argv])
                    outputs.append(out.getvalue().replace(tmp, "") + err.getvalue())
                return outputs

        if any(secret in text for text in render("PLACEHOLDERxyz")):
            return  # the secret is a substring of unrelated output
        for text in render(secret):
            assert secret not in text

    @given(secret=secrets, bad=st.sampled_from(["pool_size: -3", "pool_size: x", "echo: maybe"]))
    def test_error_messages(self, secret: str, bad: str) -> None:
        def render(value: str) -> str:
            profile = (
                f"database:\n  url: 'postgresql+asyncpg://app:{value}@db/app'\n  {bad}\n"
                f"tokens:\n  url: 'redis//:{value}@broken'\n  pasword: '{value}'\n"
            )
            with pytest.raises(ConfigError) as exc:
                load_text(profile)
            return str(exc.value) + repr(exc.value.problems)

        if secret in render("PLACEHOLDERxyz"):
            return  # the secret is a substring of the message itself (a key name, say)
        assert secret not in render(secret)


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "database.pool_size": st.integers(1, 500),
    "database.max_overflow": st.integers(0, 500),
    "database.pool_recycle_s": st.integers(0, 10_000),
    "tokens.max_entries": st.integers(1, 10**7),
    "tokens.max_lifetime_s": st.integers(1, 10**8),
    "audit.max_entries": st.integers(1, 10**6),
    "telemetry.sample_ratio": st.floats(0, 1),
    "service.environment": st.text(string.ascii_letters, min_size=1, max_size=10),
}


def get(settings: InfraSettings, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(settings, section), key)


class TestPrecedence:
    """default < YAML < env < override, for random keys and layers."""

    @given(
        key=st.sampled_from(sorted(FIELDS)),
        data=st.data(),
        layers=st.sets(st.sampled_from(["yaml", "env", "override"])),
    )
    def test_highest_layer_wins(self, key: str, data: st.DataObject, layers: set[str]) -> None:
        strategy = FIELDS[key]
        yaml_value, env_value, override_value = (data.draw(strategy) for _ in range(3))
        section, field = key.split(".")
        profile = f"{section}:\n  {field}: {yaml_value!r}\n" if "yaml" in layers else ""
        env = (
            {f"INFRAKIT__{section.upper()}__{field.upper()}": repr(env_value)}
            if "env" in layers
            else {}
        )
        if isinstance(env_value, str):
            env = dict.fromkeys(env, env_value)
        overrides = {key: override_value} if "override" in layers else None
        settings = load_text(profile, environ=env, overrides=overrides)
        if "override" in layers:
            expected, source = override_value, f"override {key}"
        elif "env" in layers:
            expected, source = env_value, next(f"env {k}" for k in env)
        elif "yaml" in layers:
            expected, source = yaml_value, "fuzz.yaml:2:3"
        else:
            expected, source = get(InfraSettings(), key), "default"
        assert (
            get(settings, key) == pytest.approx(expected)
            if isinstance(expected, float)
            else get(settings, key) == expected
        )
        assert settings.sources()[key].endswith(source)


class TestProperty18Settings:
    """**Property 18: Validation Error Type Consistency** (Validates: Requirements 8.1)."""

    @given(
        case=st.one_of(
            st.tuples(st.just("database.pool_size"), st.integers(max_value=0)),
            st.tuples(st.just("database.max_overflow"), st.integers(max_value=-1)),
            st.tuples(
                st.just("telemetry.sample_ratio"),
                st.floats(allow_nan=False).filter(lambda x: not 0 <= x <= 1),
            ),
            st.tuples(
                st.just("logging.level"),
                st.text(max_size=8).filter(
                    lambda s: (
                        s.strip().upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
                    )
                ),
            ),
            st.tuples(
                st.just("tokens.backend"),
                st.text(max_size=8).filter(lambda s: s not in {"memory", "redis"}),
            ),
            st.tuples(st.just("database.url"), st.text(string.ascii_letters, max_size=8)),
        )
    )
    def test_invalid_values_raise_value_error_with_message(self, case: tuple[str, Any]) -> None:
        key, value = case
        with pytest.raises(ValueError, match=r".+") as exc:
            load_text("", overrides={key: value})
        assert isinstance(exc.value, ConfigError)
        assert key in str(exc.value)

    @given(component=st.sampled_from(["cache", "db", "Tokens", ""]))
    def test_unknown_component_overrides(self, component: str) -> None:
        settings = load_text("")
        with pytest.raises(ValueError, match=r".+"):
            Infra(settings, components={component: object()})
