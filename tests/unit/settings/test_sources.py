"""Where values come from besides the profile: files (``${file:...}``, ``*_FILE``
variables, the secrets directory), env files, and text read by the key's type."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infrakit import ConfigError, InfraSettings, load_settings
from infrakit.cli import main
from infrakit.database.session import SqlAlchemyDatabaseSettings
from infrakit.settings import limits
from infrakit.settings.loader import TextValue, parse_value, value_kind
from infrakit.tokens.redis_store import RedisTokenSettings
from tests.conftest import WriteProfile

SECRET = "s3cr3t-from-a-file-7f2a"


#: production (and single-host) read auth.secret from JWT_SECRET, with no fallback
JWT = {"JWT_SECRET": "j" * 32}


def load(profiles_dir: Path, name: str, **kwargs: object) -> InfraSettings:
    kwargs["environ"] = {**JWT, **kwargs.get("environ", {})}  # type: ignore[dict-item]
    return load_settings(name, profiles_dir=profiles_dir, **kwargs)  # type: ignore[arg-type]


def error(profiles_dir: Path, name: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as exc:
        load(profiles_dir, name, **kwargs)
    return str(exc.value)


def url(settings: InfraSettings) -> str:
    section = settings.database
    assert isinstance(section, SqlAlchemyDatabaseSettings)
    return section.url.get_secret_value()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


class TestFileInterpolation:
    """``${file:path}``: a file's text, one trailing newline removed."""

    def test_reads_the_file_relative_to_the_profile(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        (profiles_dir / "name").write_text(f"{SECRET}\n", encoding="utf-8")
        write_profile("p", "service:\n  name: ${file:name}\n")
        settings = load(profiles_dir, "p")
        assert settings.service.name == SECRET
        assert settings.sources()["service.name"] == f"{_shown(profiles_dir)}/p.yaml:2:3 " + (
            f"(file {profiles_dir / 'name'})"
        )

    def test_absolute_path_and_only_one_newline_removed(
        self, write_profile: WriteProfile, profiles_dir: Path, tmp_path: Path
    ) -> None:
        (tmp_path / "a").write_text("one\n\n", encoding="utf-8")
        (tmp_path / "b").write_bytes(b"two\r\n")
        (tmp_path / "c").write_text("  spaced  ", encoding="utf-8")
        write_profile(
            "p",
            f"""
            service:
              name: ${{file:{tmp_path}/a}}
              environment: ${{file:{tmp_path}/b}}
              version: "v${{file:{tmp_path}/c}}"
            """,
        )
        service = load(profiles_dir, "p").service
        assert (service.name, service.environment, service.version) == (
            "one\n",
            "two",
            "v  spaced  ",
        )

    def test_missing_file_names_the_line_and_path(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  name: ${file:/run/secrets/nope}\n")
        text = error(profiles_dir, "p")
        assert "p.yaml:2:3: service.name: the file /run/secrets/nope does not exist" in text

    def test_a_missing_file_for_an_overridden_key_is_no_error(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  name: ${file:/run/secrets/nope}\n")
        settings = load(profiles_dir, "p", overrides={"service.name": "given"})
        assert settings.service.name == "given"

    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (lambda p: p.mkdir(), "is a directory"),
            (os.mkfifo, "is not a regular file"),  # and is not waited on
            (lambda p: p.write_bytes(b"ok\xff\xfe" + SECRET.encode()), "is not UTF-8 text"),
        ],
    )
    def test_unusable_files(
        self,
        write_profile: WriteProfile,
        profiles_dir: Path,
        tmp_path: Path,
        make: object,
        message: str,
    ) -> None:
        path = tmp_path / "value"
        make(path)  # type: ignore[operator]
        write_profile("p", f"service:\n  name: ${{file:{path}}}\n")
        text = error(profiles_dir, "p")
        assert f"p.yaml:2:3: service.name: the file {path} {message}" in text
        assert SECRET not in text

    def test_too_large(
        self, write_profile: WriteProfile, profiles_dir: Path, tmp_path: Path
    ) -> None:
        path = tmp_path / "big"
        path.write_bytes(b"x" * (limits.MAX_FILE_BYTES + 1))
        write_profile("p", f"service:\n  name: ${{file:{path}}}\n")
        text = error(profiles_dir, "p")
        assert "p.yaml:2:3: service.name:" in text
        assert "over the loader's limit of 1,048,576 bytes (MAX_FILE_BYTES)" in text

    def test_counts_against_the_expansion_budget(
        self, write_profile: WriteProfile, profiles_dir: Path, tmp_path: Path
    ) -> None:
        path = tmp_path / "half"
        path.write_text("x" * (limits.MAX_FILE_BYTES - 10), encoding="utf-8")
        write_profile("p", "service:\n  name: '" + f"${{file:{path}}}" * 5 + "'\n")
        assert "(MAX_EXPANDED_CHARS)" in error(profiles_dir, "p")
        many = "${file:x}" * (limits.MAX_INTERPOLATIONS + 1)
        write_profile("p", f"service:\n  name: '{many}'\n")
        assert "(MAX_INTERPOLATIONS)" in error(profiles_dir, "p")

    def test_empty_reference(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "service:\n  name: ${file:}\n")
        assert "service.name: ${file:} names no file" in error(profiles_dir, "p")


def _shown(path: Path) -> str:
    """How the loader names a path (relative to the working directory when under it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class TestValuesFromFilesAreSecrets:
    """A value read from a file is masked wherever it lands, whatever its key."""

    @pytest.fixture
    def profile(self, write_profile: WriteProfile, profiles_dir: Path) -> Path:
        (profiles_dir / "name").write_text(SECRET, encoding="utf-8")
        return write_profile(
            "p",
            """
            service:
              name: ${file:name}
            telemetry:
              exporter: memory
              excluded_paths: ["/health", "/${file:name}"]
            """,
        )

    @pytest.mark.parametrize(
        "options", [[], ["--format", "json"], ["--sources"], ["--sources", "--format", "json"]]
    )
    def test_config_show(
        self, profile: Path, capsys: pytest.CaptureFixture[str], options: list[str]
    ) -> None:
        code, out, err = run(["config", "show", str(profile), *options], capsys)
        assert code == 0, err
        assert SECRET not in out + err
        assert "***" in out
        if "--sources" in options and "json" in options:
            shown = json.loads(out)
            assert shown["service.name"]["value"] == "***"
            assert shown["service.name"]["source"].endswith(f"(file {profile.parent / 'name'})")
            assert shown["telemetry.excluded_paths"]["value"] == ["/health", "***"]

    def test_masked_and_diff(self, profile: Path, capsys: pytest.CaptureFixture[str]) -> None:
        settings = load_settings(profile, environ={})
        assert settings.masked()["service"]["name"] == "***"
        assert settings.service.name == SECRET  # the application still gets it
        code, out, _ = run(["config", "diff", str(profile), "test"], capsys)
        assert code == 0
        assert SECRET not in out
        assert 'service.name: "***" -> "infrakit-test"' in out

    def test_reprs_never_show_it(self, profile: Path) -> None:
        """``repr``/``str`` of the settings and of their sections (what a
        debugger, a traceback's locals or an f-string prints) mask a value read
        from a file, in a plain ``str`` field and inside a list alike."""
        settings = load_settings(profile, environ={})
        for shown in (
            repr(settings),
            str(settings),
            repr(settings.service),
            str(settings.telemetry),
            f"{settings.telemetry!r}",
        ):
            assert SECRET not in shown
        assert "name='***'" in repr(settings.service)
        assert settings.telemetry.excluded_paths[1] == f"/{SECRET}"  # the app still gets it

    def test_errors_never_show_it(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        (profiles_dir / "n").write_text(SECRET, encoding="utf-8")
        write_profile(
            "p",
            """
            database:
              pool_size: ${file:n}
            telemetry:
              exporter: memory
              excluded_paths: ["${file:n}"]
            """,
        )
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "p")
        text = str(exc.value)
        assert SECRET not in text + repr(exc.value)
        assert "database.pool_size: Input should be a valid integer" in text
        assert "(got ***)" in text
        # a validator quoting the value it refused
        assert "excluded path patterns must start with '/', got '***'" in text


class TestFileVariables:
    """``${NAME}`` answered by the file ``NAME_FILE`` names (the official images' way)."""

    def test_name_file(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        (profiles_dir / "pw").write_text(f"{SECRET}\n", encoding="utf-8")
        write_profile("p", "service:\n  name: ${POSTGRES_PASSWORD}\n")
        env = {"POSTGRES_PASSWORD_FILE": str(profiles_dir / "pw")}
        settings = load(profiles_dir, "p", environ=env)
        assert settings.service.name == SECRET
        assert settings.masked()["service"]["name"] == "***"
        assert settings.sources()["service.name"].endswith(
            f"(${{POSTGRES_PASSWORD}} from file {profiles_dir / 'pw'} ($POSTGRES_PASSWORD_FILE))"
        )

    def test_both_set_is_an_error(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "service:\n  name: ${PW}\n")
        text = error(profiles_dir, "p", environ={"PW": "a", "PW_FILE": "/x"})
        assert "service.name: both PW and PW_FILE are set" in text

    def test_missing_file(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "service:\n  name: ${PW}\n")
        text = error(profiles_dir, "p", environ={"PW_FILE": "/run/secrets/nope"})
        assert "p.yaml:2:3: service.name: the file PW_FILE names, /run/secrets/nope" in text


class TestSecretsDir:
    """pydantic-settings' ``secrets_dir``: files named like the variables."""

    @pytest.fixture
    def secrets(self, tmp_path: Path) -> Path:
        directory = tmp_path / "secrets"
        directory.mkdir()
        (directory / "INFRAKIT__DATABASE__URL").write_text(
            f"postgresql+asyncpg://app:{SECRET}@db:5432/app\n", encoding="utf-8"
        )
        (directory / "redis_url").write_text(f"redis://:{SECRET}@cache:6379/0", encoding="utf-8")
        (directory / "OTEL_EXPORTER_OTLP_ENDPOINT").write_text("http://collector:4318")
        (directory / ".hidden").write_text("ignored")
        return directory

    def test_production_from_a_secrets_dir(self, secrets: Path, tmp_path: Path) -> None:
        settings = load(tmp_path, "production", secrets_dir=secrets)
        assert url(settings) == f"postgresql+asyncpg://app:{SECRET}@db:5432/app"
        tokens = settings.tokens
        assert isinstance(tokens, RedisTokenSettings)
        assert tokens.url.get_secret_value() == f"redis://:{SECRET}@cache:6379/0"
        sources = settings.sources()
        assert sources["database.url"] == f"secret file {secrets / 'INFRAKIT__DATABASE__URL'}"
        assert sources["tokens.url"].endswith(f"(${{REDIS_URL}} from file {secrets / 'redis_url'})")
        masked = settings.masked()
        assert masked["database"]["url"] == masked["tokens"]["url"] == "***"
        # even a key that names no secret
        assert masked["telemetry"]["endpoint"] == "***"

    def test_the_environment_wins(self, secrets: Path, tmp_path: Path) -> None:
        env = {
            "INFRAKIT__DATABASE__URL": "sqlite+aiosqlite:///:memory:",
            "REDIS_URL": "redis://other:6379/0",
        }
        settings = load(tmp_path, "production", secrets_dir=secrets, environ=env)
        assert url(settings) == "sqlite+aiosqlite:///:memory:"
        assert settings.sources()["database.url"] == "env INFRAKIT__DATABASE__URL"
        assert settings.masked()["database"]["url"] == "sqlite+aiosqlite:///:memory:"

    def test_from_the_environment_variable(self, secrets: Path, tmp_path: Path) -> None:
        settings = load(tmp_path, "production", environ={"INFRAKIT_SECRETS_DIR": str(secrets)})
        assert SECRET in url(settings)

    def test_names_match_without_case(self, tmp_path: Path) -> None:
        (tmp_path / "infrakit__service__name").write_text("lower")
        assert load(tmp_path, "test", secrets_dir=tmp_path).service.name == "lower"

    def test_typed_like_a_variable(self, tmp_path: Path) -> None:
        (tmp_path / "INFRAKIT__DATABASE__POOL_SIZE").write_text("7\n")
        (tmp_path / "INFRAKIT__TELEMETRY__EXCLUDED_PATHS").write_text('["/a"]\n')
        (tmp_path / "INFRAKIT__LOGGING__REDACT__REPLACEMENT").write_text("[GONE]\n")
        settings = load(tmp_path, "test", secrets_dir=tmp_path)
        assert isinstance(settings.database, SqlAlchemyDatabaseSettings)
        assert settings.database.pool_size == 7
        assert settings.telemetry.excluded_paths == ["/a"]
        assert settings.logging.redact.replacement == "[GONE]"

    @pytest.mark.parametrize("kind", ["missing", "file"])
    def test_a_named_directory_must_exist(self, tmp_path: Path, kind: str) -> None:
        path = tmp_path / "secrets"
        if kind == "file":
            path.write_text("")
        text = error(tmp_path, "test", secrets_dir=path)
        expected = "does not exist" if kind == "missing" else "is not a directory"
        assert f"the secrets directory {path} {expected}" in text

    def test_a_file_outside_the_directory_is_refused(self, tmp_path: Path) -> None:
        directory = tmp_path / "secrets"
        directory.mkdir()
        (tmp_path / "elsewhere").write_text("x")
        (directory / "INFRAKIT__SERVICE__NAME").symlink_to(tmp_path / "elsewhere")
        text = error(tmp_path, "test", secrets_dir=directory)
        assert "resolves outside the secrets directory" in text

    def test_kubernetes_layout(self, tmp_path: Path) -> None:
        """A mounted Secret: ``..data`` -> a timestamped directory, names linked into it."""
        directory = tmp_path / "secrets"
        stamped = directory / "..2026_01_01_00_00_00.1"
        stamped.mkdir(parents=True)
        (stamped / "INFRAKIT__SERVICE__NAME").write_text("from-k8s\n")
        (directory / "..data").symlink_to(stamped.name)
        (directory / "INFRAKIT__SERVICE__NAME").symlink_to("..data/INFRAKIT__SERVICE__NAME")
        assert load(tmp_path, "test", secrets_dir=directory).service.name == "from-k8s"


class TestEnvFile:
    """A .env file: its variables count as environment variables; the real ones win."""

    @pytest.fixture
    def env_file(self, tmp_path: Path) -> Path:
        path = tmp_path / ".env"
        path.write_text(
            "# for production\n"
            "export DATABASE_URL=postgresql+asyncpg://db.internal/app\n"
            "REDIS_URL='redis://cache:6379/0'\n"
            'OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318"\n'
            "INFRAKIT__DATABASE__POOL_SIZE=7\n",
            encoding="utf-8",
        )
        return path

    def test_feeds_variables_and_keys(self, env_file: Path, tmp_path: Path) -> None:
        settings = load(tmp_path, "production", env_file=env_file)
        assert url(settings) == "postgresql+asyncpg://db.internal/app"
        assert isinstance(settings.database, SqlAlchemyDatabaseSettings)
        assert settings.database.pool_size == 7
        sources = settings.sources()
        shown = _shown(env_file)
        assert sources["database.pool_size"] == f"env INFRAKIT__DATABASE__POOL_SIZE ({shown}:5)"
        assert sources["database.url"].endswith(f"(${{DATABASE_URL}} from {shown}:2)")
        # a value from an env file is not a secret by itself (as an env var is not)
        assert settings.masked()["database"]["url"] == "postgresql+asyncpg://db.internal/app"

    def test_the_real_environment_wins(self, env_file: Path, tmp_path: Path) -> None:
        env = {"INFRAKIT__DATABASE__POOL_SIZE": "3", "DATABASE_URL": "sqlite+aiosqlite:///:memory:"}
        settings = load(tmp_path, "production", env_file=env_file, environ=env)
        assert isinstance(settings.database, SqlAlchemyDatabaseSettings)
        assert settings.database.pool_size == 3
        assert url(settings) == "sqlite+aiosqlite:///:memory:"
        assert settings.sources()["database.pool_size"] == "env INFRAKIT__DATABASE__POOL_SIZE"

    def test_from_the_environment_variable(self, env_file: Path, tmp_path: Path) -> None:
        settings = load(tmp_path, "production", environ={"INFRAKIT_ENV_FILE": str(env_file)})
        assert url(settings) == "postgresql+asyncpg://db.internal/app"

    def test_may_choose_the_profile(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text("INFRAKIT_PROFILE=test\n")
        assert load_settings(environ={}, env_file=tmp_path / ".env").profile == "test"

    def test_a_named_file_must_exist(self, tmp_path: Path) -> None:
        text = error(tmp_path, "test", env_file=tmp_path / "nope.env")
        assert f"the env file {tmp_path / 'nope.env'} does not exist" in text
        assert "--env-file" in text

    def test_bad_lines_name_their_line(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.env"
        path.write_text(f"A=1\nB='{SECRET}\nC\n", encoding="utf-8")
        text = error(tmp_path, "test", env_file=path)
        assert f"{_shown(path)}:2: cannot parse this line of the env file" in text
        assert SECRET not in text

    def test_a_name_without_value(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.env"
        path.write_text("A=1\nLONELY\n", encoding="utf-8")
        assert f"{_shown(path)}:2: LONELY has no value" in error(tmp_path, "test", env_file=path)


class TestValuesByType:
    """Env and ``--set`` text is read by the type of the key it sets."""

    @pytest.mark.parametrize("text", ["[HIDDEN]", "{gone}", "[", '["a"]', " {x} "])
    def test_a_string_key_takes_the_text(self, tmp_path: Path, text: str) -> None:
        env = {"INFRAKIT__LOGGING__REDACT__REPLACEMENT": text}
        settings = load(tmp_path, "test", environ=env)
        assert settings.logging.redact.replacement == text

    def test_a_list_key_still_parses_json(self, tmp_path: Path) -> None:
        env = {"INFRAKIT__LOGGING__REDACT__EXTRA_PATTERNS": '["national_id", "iban"]'}
        settings = load(tmp_path, "test", environ=env)
        assert settings.logging.redact.extra_patterns == ["national_id", "iban"]

    def test_bad_json_for_a_list_key(self, tmp_path: Path) -> None:
        env = {"INFRAKIT__LOGGING__REDACT__EXTRA_PATTERNS": "[national_id"}
        text = error(tmp_path, "test", environ=env)
        assert "logging.redact.extra_patterns: value looks like JSON but does not parse" in text

    def test_a_section_and_a_mapping_take_json(self, tmp_path: Path) -> None:
        env = {
            "INFRAKIT__LOGGING__REDACT": '{"replacement": "[X]"}',
            "INFRAKIT__TELEMETRY__EXPORTER": "otlp",
            "INFRAKIT__TELEMETRY__HEADERS": '{"x-api-key": "k"}',
        }
        settings = load(tmp_path, "test", environ=env)
        assert settings.logging.redact.replacement == "[X]"

    def test_kinds(self) -> None:
        assert value_kind(("logging", "redact", "replacement")) == "text"
        assert value_kind(("database", "pool_size")) == "text"
        assert value_kind(("telemetry", "excluded_paths")) == "json"
        assert value_kind(("telemetry", "known_methods"), {"telemetry": {}}) == "json"
        assert value_kind(("audit", "signing_key"), {"audit": {"backend": "sql"}}) == "text"
        assert value_kind(("logging", "redact")) == "json"
        assert value_kind(("no", "such", "key")) is None
        assert parse_value("[1]", None) == [1]  # unknown: JSON when it looks like it
        assert parse_value("[x", "either") == "[x"

    def test_set_on_the_command_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, err = run(
            [
                "config", "show", "test", "--format", "json",
                "--set", "logging.redact.replacement=[HIDDEN]",
                "--set", 'logging.redact.extra_patterns=["iban"]',
            ],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        redact = json.loads(out)["logging"]["redact"]
        assert (redact["replacement"], redact["extra_patterns"]) == ("[HIDDEN]", ["iban"])

    def test_bad_json_on_the_command_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run(
            ["config", "validate", "test", "--set", "logging.redact.extra_patterns=[iban"], capsys
        )
        assert code == 1
        assert "--set logging.redact.extra_patterns: logging.redact.extra_patterns: value" in err

    def test_python_text_values(self, tmp_path: Path) -> None:
        overrides = {"database.pool_size": TextValue("4"), "service.name": TextValue("[x]")}
        settings = load(tmp_path, "test", overrides=overrides)
        assert settings.service.name == "[x]"
        assert settings.sources()["service.name"] == "override service.name"


class TestSettingsOptions:
    """pydantic-settings' own source options are refused, not silently ignored."""

    @pytest.mark.parametrize("option", ["_env_file", "_secrets_dir", "_env_prefix"])
    def test_refused(self, option: str) -> None:
        with pytest.raises(TypeError, match=rf"does not take {option}=.*load_settings\("):
            InfraSettings(**{option: "x"})


class TestUnsetVariablesOfLowerLayers:
    """An unset variable is an error only if nothing above sets its key."""

    def test_overrides_and_env_answer_production(self, tmp_path: Path) -> None:
        overrides = {"database.url": "sqlite+aiosqlite:///:memory:", "tokens.backend": "memory"}
        env = {"INFRAKIT__TELEMETRY__ENDPOINT": "http://collector:4318"}
        settings = load(tmp_path, "production", overrides=overrides, environ=env)
        assert url(settings) == "sqlite+aiosqlite:///:memory:"

    def test_another_backend_needs_no_address(self, tmp_path: Path) -> None:
        overrides = {"tokens.backend": "memory", "telemetry.exporter": "none"}
        text = error(tmp_path, "production", overrides=overrides)
        assert "DATABASE_URL" in text
        assert "REDIS_URL" not in text
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in text

    def test_a_child_profile_may_answer(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("base", "service:\n  name: ${NAME}\n  version: ${VERSION}\n")
        write_profile("child", "extends: base\nservice:\n  name: child\n")
        text = error(profiles_dir, "child")
        assert "VERSION" in text
        assert "NAME is not set" not in text

    def test_a_child_that_requires_is_not_answered_by_its_base(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("base", "service:\n  name: base-name\n")
        write_profile("child", "extends: base\nservice:\n  name: ${NAME}\n")
        assert "child.yaml:3:3: service.name: environment variable NAME is not set" in error(
            profiles_dir, "child"
        )

    def test_a_list_with_an_unset_variable(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "telemetry:\n  exporter: memory\n  excluded_paths: ['/a', '${P}']\n")
        assert "telemetry.excluded_paths.1: environment variable P is not set" in error(
            profiles_dir, "p"
        )
        overrides = {"telemetry.excluded_paths": ["/b"]}
        assert load(profiles_dir, "p", overrides=overrides).telemetry.excluded_paths == ["/b"]


class TestCommandLine:
    """--env-file and --secrets-dir; production and single-host."""

    def test_validate_production_names_the_variables(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("DATABASE_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("JWT_SECRET", JWT["JWT_SECRET"])
        code, out, err = run(["config", "validate", "production"], capsys)
        assert (code, out) == (1, "")
        assert "3 problems in profile 'production'" in err
        for name in ("DATABASE_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            assert f"environment variable {name} is not set" in err
        code, out, _ = run(["config", "validate", "single-host"], capsys)
        assert (code, out) == (0, "ok: profile 'single-host' is valid\n")

    def test_env_file_and_secrets_dir(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (tmp_path / ".env").write_text(f"REDIS_URL=redis://cache:6379/0\nJWT_SECRET={'j' * 32}\n")
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "DATABASE_URL").write_text(f"postgresql+asyncpg://app:{SECRET}@db/app\n")
        (secrets / "OTEL_EXPORTER_OTLP_ENDPOINT").write_text("http://collector:4318\n")
        argv = ["config", "show", "production", "--sources", "--env-file", str(tmp_path / ".env")]
        code, out, err = run([*argv, "--secrets-dir", str(secrets)], capsys)
        assert code == 0, err
        assert SECRET not in out + err
        lines = {line.split()[0]: line for line in out.splitlines()}
        assert '"***"' in lines["database.url"]
        assert f"from file {secrets / 'DATABASE_URL'}" in lines["database.url"]
        assert '"redis://cache:6379/0"' in lines["tokens.url"]
        assert '"***"' in lines["telemetry.endpoint"]


def test_the_missing_jwt_secret_hint_survives_scrubbing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI scrubs error text; the fix it prints for an empty JWT secret stays readable
    (it printed 'JWT_SECRET=[REDACTED] rand -hex 32)')."""
    for name, value in {
        "DATABASE_URL": "postgresql+asyncpg://db/app",
        "REDIS_URL": "redis://cache:6379/0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JWT_SECRET", raising=False)
    code, _, err = run(["config", "validate", "production"], capsys)
    assert code == 1
    assert "make one with `openssl rand -hex 32`" in err
    assert "JWT_SECRET in production" in err
