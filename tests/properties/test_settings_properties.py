"""Properties of the profile loader; seed property 18 for settings."""

from __future__ import annotations

import contextlib
import io
import json
import string
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infrakit import ConfigError, Infra, load_settings
from infrakit.cli import main as cli_main
from infrakit.database.session import SqlAlchemyDatabaseSettings
from infrakit.settings import InfraSettings, limits


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


# --- hostile input at small scale --------------------------------------------
# Each generator is a pathological shape from the loader's bounds, sized so that
# it reaches the real bound (4 Mi expanded characters, 10,000 values, 64
# levels, 256-character keys, 100-character integers) while the input itself
# stays small: the work of one example is capped by these sizes and the
# loader's bounds, not by a clock.


def _nest(depth: int, kind: str) -> str:
    return {"flow": "[" * depth + "]" * depth, "map": "{a: " * depth + "1" + "}" * depth}[kind]


def _block(depth: int) -> str:
    return "\n".join(" " * (i + 1) + f"k{i}:" for i in range(depth)) + " 1"


def _alias_bomb(levels: int, fanout: int) -> str:
    parts = [f"&a0 [{', '.join(['lol'] * fanout)}]"]
    parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


hostile_yaml = st.one_of(
    yaml_ish,
    st.integers(0, 2000).map(lambda n: "service:\n  name: '" + "${A}" * n + "'\n"),
    st.tuples(st.integers(0, 200), st.sampled_from(["flow", "map"])).map(
        lambda t: "service:\n  name: " + _nest(*t) + "\n"
    ),
    st.integers(1, 150).map(lambda d: "service:\n" + _block(d) + "\n"),
    st.tuples(st.integers(1, 7), st.integers(2, 9), st.booleans()).map(
        lambda t: (
            ("service:\n  ? " + _alias_bomb(*t[:2]) + "\n  : 1\n")
            if t[2]
            else ("service:\n  name: " + _alias_bomb(*t[:2]) + "\n")
        )
    ),
    st.tuples(st.integers(1, 300), st.sampled_from(["", "-", "0x", "0o", "1_"])).map(
        lambda t: f"database:\n  pool_size: {t[1]}{'7' * t[0]}\n"
    ),
    st.integers(1, 600).map(lambda n: "telemetry:\n  headers:\n    " + "k" * n + ": v\n"),
    st.integers(0, 300).map(
        lambda n: "service:\n" + "".join(f"  k{i}: &m{i} {{x{i}: 1}}\n" for i in range(n))
    ),
    st.integers(1, 50).map(
        lambda n: (
            "x: &m {a: 1}\n"
            + "".join(f"y{i}: &m{i} {{<<: [*m{i - 1 if i else ''}, *m]}}\n" for i in range(n))
        )
    ),
)

variable_values = st.one_of(
    st.text(max_size=50),
    st.integers(0, 5000).map(lambda n: "v" * n),
    st.integers(0, 200).map(lambda d: "[" * d + "]" * d),
    st.integers(0, 200).map(lambda d: '{"a": ' * d + "1" + "}" * d),
    st.integers(1, 300).map(lambda n: f"[{'7' * n}]"),
    st.lists(st.text(max_size=10), max_size=5).map(json.dumps),
)
variable_names = st.one_of(
    st.just("A"),
    st.lists(
        st.one_of(
            st.sampled_from(["service", "database", "tokens", "telemetry", "name", "headers"]),
            st.text(string.ascii_letters + "_", max_size=300),
        ),
        min_size=1,
        max_size=100,
    ).map(lambda parts: "INFRAKIT__" + "__".join(parts)),
)
name_text = st.text(string.ascii_letters + string.digits + "._-é", min_size=1, max_size=8)
profile_names = st.one_of(
    st.just("p"),
    name_text,
    # long names, around the 255 characters of a file name
    st.tuples(name_text, st.integers(1, 400)).map(lambda t: (t[0] * t[1])[: t[1]]),
)


def load_bounded(text: str, environ: dict[str, str], name: str = "p") -> int:
    """Load ``name`` with ``text`` as ``p.yaml``: settings or a ConfigError, any
    other exception fails the test. Returns the peak memory of the load, in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "p.yaml").write_text(text, encoding="utf-8")
        tracemalloc.start()
        try:
            with contextlib.suppress(ConfigError):
                load_settings(name, profiles_dir=tmp, environ=environ)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


#: Far above what a bounded load can take (the largest input here expands to
#: 10 MB without the bounds), far below what an unbounded one did.
PEAK_BYTES = 64 << 20


class TestProperty18Bounds:
    """**Property 18: Validation Error Type Consistency** (Validates: Requirements 8.1):
    any profile text, environment or profile name, hostile ones included, is answered
    with settings or a ConfigError (never another exception), in bounded memory."""

    @pytest.fixture(autouse=True)
    def _backends_imported(self) -> None:
        """Import every backend's settings module before memory is measured."""
        load_settings("single-host", environ={"JWT_SECRET": "x" * 32})
        load_settings("test", environ={})

    @given(
        text=hostile_yaml,
        value=st.integers(0, 5000).map(lambda n: "x" * n),
    )
    def test_any_profile(self, text: str, value: str) -> None:
        assert load_bounded(text, {"A": value}) < PEAK_BYTES

    @given(
        environ=st.dictionaries(variable_names, variable_values, max_size=4),
        text=st.sampled_from(["", "service:\n  name: '${A}${A}'\n"]),
    )
    def test_any_environment(self, environ: dict[str, str], text: str) -> None:
        assert load_bounded(text, environ) < PEAK_BYTES

    @given(name=profile_names, root=st.sampled_from(["", "extends: ", "extends: ./"]))
    def test_any_profile_name(self, name: str, root: str) -> None:
        # as the name to load, and as what p.yaml extends
        assert load_bounded("", {}, name) < PEAK_BYTES
        assert load_bounded(f"{root}'{name}'\n" if root else "", {}) < PEAK_BYTES

    def test_the_generators_reach_the_bounds(self) -> None:
        """The shapes above are not too small to matter: each reaches its bound."""
        cases = {
            "MAX_EXPANDED_CHARS": (
                "service:\n  name: '" + "${A}" * 2000 + "'\n",
                {"A": "x" * 5000},
            ),
            "MAX_VALUES": ("service:\n  name: " + _alias_bomb(7, 9) + "\n", {}),
            "MAX_DEPTH": ("service:\n  name: " + _nest(200, "map") + "\n", {}),
            "MAX_INT_CHARS": ("database:\n  pool_size: " + "7" * 300 + "\n", {}),
            "MAX_KEY_CHARS": ("telemetry:\n  headers:\n    " + "k" * 600 + ": v\n", {}),
        }
        for limit, (text, environ) in cases.items():
            with pytest.raises(ConfigError, match=rf"\({limit}\)"):
                load_text(text, environ=environ)
        assert limits.MAX_PROFILE_NAME_CHARS < 400


#: File contents: any text (a trailing newline is the only thing the loader removes).
file_texts = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r"), max_size=200)
#: A secret that cannot appear in output by chance.
file_secrets = st.text(alphabet=string.ascii_letters + string.digits, min_size=12, max_size=40).map(
    lambda s: f"fs-{s}"
)


class TestValuesFromFiles:
    """``${file:...}`` and the secrets directory: contents round-trip, and never show."""

    @given(text=file_texts, newline=st.booleans())
    def test_file_contents_round_trip(self, text: str, newline: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "value").write_bytes((text + ("\n" if newline else "")).encode("utf-8"))
            Path(tmp, "p.yaml").write_text(
                "logging:\n  redact:\n    replacement: ${file:value}\n", encoding="utf-8"
            )
            settings = load_settings(Path(tmp, "p.yaml"), environ={})
        # one newline is removed, the one `echo` adds
        assert settings.logging.redact.replacement == (text if newline else text.removesuffix("\n"))

    @given(text=file_texts)
    def test_secrets_dir_contents_round_trip(self, text: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            name = "INFRAKIT__LOGGING__REDACT__REPLACEMENT"
            Path(tmp, name).write_bytes((text + "\n").encode("utf-8"))
            settings = load_settings("test", environ={}, secrets_dir=tmp)
        assert settings.logging.redact.replacement == text

    @given(
        secret=file_secrets,
        key=st.sampled_from(
            ["service.name", "service.version", "logging.redact.replacement", "database.url"]
        ),
        how=st.sampled_from(["file", "secrets dir", "_FILE"]),
        options=st.sampled_from([[], ["--format", "json"], ["--sources"]]),
    )
    def test_a_file_value_never_shows(
        self, secret: str, key: str, how: str, options: list[str]
    ) -> None:
        value = f"sqlite+aiosqlite:///{secret}.db" if key == "database.url" else secret
        section, _, leaf = key.rpartition(".")
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "value").write_text(value + "\n", encoding="utf-8")
            reference = "${file:value}" if how == "file" else "${THE_VALUE}"
            if section == "logging.redact":
                text = f"extends: test\nlogging:\n  redact:\n    {leaf}: {reference}\n"
            else:
                text = f"extends: test\n{section}:\n  {leaf}: {reference}\n"
            Path(tmp, "p.yaml").write_text(text, encoding="utf-8")
            argv = ["config", "show", str(Path(tmp, "p.yaml")), *options]
            if how == "secrets dir":
                Path(tmp, "value").rename(Path(tmp, "THE_VALUE"))
                argv += ["--secrets-dir", tmp]
            out, err = io.StringIO(), io.StringIO()
            env = {"THE_VALUE_FILE": str(Path(tmp, "value"))} if how == "_FILE" else {}
            with (
                pytest.MonkeyPatch.context() as patch,
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
            ):
                for name, setting in env.items():
                    patch.setenv(name, setting)
                code = cli_main(argv)
        assert code == 0, err.getvalue()
        assert secret not in out.getvalue() + err.getvalue()
        assert "***" in out.getvalue()
