from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from infrakit import ConfigError, InfraSettings, load_settings
from infrakit.database.session import SqlAlchemyDatabaseSettings
from infrakit.settings import EMBEDDED_PROFILES_DIR, available_profiles, resolve_profile
from infrakit.telemetry.exporters.otlp import OtlpTelemetrySettings
from infrakit.tokens.redis_store import RedisTokenSettings
from tests.conftest import WriteProfile


def sql(settings: InfraSettings) -> SqlAlchemyDatabaseSettings:
    """The database section, typed by its backend's model."""
    section = settings.database
    assert isinstance(section, SqlAlchemyDatabaseSettings)
    return section


def redis(settings: InfraSettings) -> RedisTokenSettings:
    section = settings.tokens
    assert isinstance(section, RedisTokenSettings)
    return section


def otlp(settings: InfraSettings) -> OtlpTelemetrySettings:
    section = settings.telemetry
    assert isinstance(section, OtlpTelemetrySettings)
    return section


def load(profiles_dir: Path, name: str, **kwargs: object) -> InfraSettings:
    kwargs.setdefault("environ", {})
    return load_settings(name, profiles_dir=profiles_dir, **kwargs)  # type: ignore[arg-type]


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


#: what production reads from the environment, with no fallback
ADDRESSES = {
    "DATABASE_URL": "postgresql+asyncpg://db/app",
    "REDIS_URL": "redis://cache:6379/0",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
}
JWT = {"JWT_SECRET": "s" * 32}


class TestEmbeddedProfiles:
    """The three shipped profiles load and say what they promise."""

    def test_local_is_the_default(self, tmp_path: Path) -> None:
        settings = load_settings(environ={}, profiles_dir=tmp_path)
        assert settings.profile == "local"
        assert settings.tokens.backend == "memory"
        assert settings.audit.backend == "sql"
        assert sql(settings).url.get_secret_value().startswith("sqlite+aiosqlite:///./.infrakit/")
        assert settings.logging.format == "console"

    def test_test_profile_is_all_in_memory(self, tmp_path: Path) -> None:
        settings = load_settings("test", environ={}, profiles_dir=tmp_path)
        assert sql(settings).url.get_secret_value() == "sqlite+aiosqlite:///:memory:"
        assert (settings.tokens.backend, settings.audit.backend) == ("memory", "memory")
        assert settings.telemetry.exporter == "memory"

    def test_production_takes_addresses_from_env(self, tmp_path: Path) -> None:
        env = {
            "DATABASE_URL": "postgresql+asyncpg://app:pw@db.internal:5432/app",
            "REDIS_URL": "redis://cache:6379/1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "JWT_SECRET": "s" * 32,
        }
        settings = load_settings("production", environ=env, profiles_dir=tmp_path)
        assert sql(settings).url.get_secret_value() == env["DATABASE_URL"]
        assert redis(settings).url.get_secret_value() == env["REDIS_URL"]
        endpoint = otlp(settings).endpoint
        assert endpoint is not None
        assert endpoint.get_secret_value() == "http://collector:4318"
        assert (settings.tokens.backend, settings.audit.backend) == ("redis", "sql")
        assert settings.logging.format == "json"
        assert settings.auth.secret is not None
        assert settings.auth.secret.get_secret_value() == "s" * 32

    def test_production_requires_the_jwt_secret(self, tmp_path: Path) -> None:
        """No development fallback: the error names the variable and the fix."""
        with pytest.raises(ConfigError) as caught:
            load_settings("production", environ=ADDRESSES, profiles_dir=tmp_path)
        (problem,) = caught.value.problems
        assert problem.key == "auth.secret"
        assert "${JWT_SECRET}" in problem.where
        assert "production.yaml:" in problem.where
        assert "openssl rand -hex 32" in problem.message

    def test_a_missing_secret_is_not_offered_a_default(self, tmp_path: Path) -> None:
        """The hint for a missing variable offers ``${NAME:-value}``, except for a
        secret: a default written into the profile would be no secret."""
        profile = tmp_path / "p.yaml"
        profile.write_text(
            "service:\n  name: ${SERVICE_NAME}\nauth:\n  secret: ${SIGNING_PASSWORD}\n"
        )
        with pytest.raises(ConfigError) as exc:
            load_settings(str(profile), environ={})
        problems = {p.key: p for p in exc.value.problems}
        secret, plain = problems["auth.secret"], problems["service.name"]
        assert "SIGNING_PASSWORD_FILE" in (secret.hint or "")
        assert ":-" not in (secret.hint or "")
        assert "a secret has no default in a profile" in (secret.hint or "")
        assert "${SERVICE_NAME:-value}" in (plain.hint or "")

    def test_production_requires_its_addresses(self, tmp_path: Path) -> None:
        """No silent fallback to loopback: one error naming every missing variable."""
        with pytest.raises(ConfigError) as exc:
            load_settings("production", environ=JWT, profiles_dir=tmp_path)
        text = str(exc.value)
        assert text.startswith("3 problems in profile 'production':")
        for key, name in [
            ("database.url", "DATABASE_URL"),
            ("tokens.url", "REDIS_URL"),
            ("telemetry.endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ]:
            assert "production.yaml:" in text
            assert f"{key}: environment variable {name} is not set" in text
        assert "127.0.0.1" not in text

    def test_production_names_only_what_is_missing(self, tmp_path: Path) -> None:
        env = {"DATABASE_URL": "postgresql+asyncpg://db.internal/app", **JWT}
        with pytest.raises(ConfigError) as exc:
            load_settings("production", environ=env, profiles_dir=tmp_path)
        assert [p.key for p in exc.value.problems] == ["tokens.url", "telemetry.endpoint"]

    def test_single_host_is_production_on_loopback(self, tmp_path: Path) -> None:
        settings = load_settings(
            "single-host", environ={"JWT_SECRET": "s" * 32}, profiles_dir=tmp_path
        )
        assert sql(settings).url.get_secret_value() == (
            "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        )
        assert redis(settings).url.get_secret_value() == "redis://127.0.0.1:6379/0"
        endpoint = otlp(settings).endpoint
        assert endpoint is not None
        assert endpoint.get_secret_value() == "http://127.0.0.1:4318"
        # everything else is production's
        assert (settings.tokens.backend, settings.audit.backend) == ("redis", "sql")
        assert settings.logging.format == "json"
        assert sql(settings).pool_size == 10
        assert settings.sources()["database.url"].endswith("(${DATABASE_URL})")
        assert "single-host.yaml" in settings.sources()["database.url"]

    def test_single_host_takes_the_variables_too(self, tmp_path: Path) -> None:
        env = {"REDIS_URL": "redis://cache:6379/1", **JWT}
        settings = load_settings("single-host", environ=env, profiles_dir=tmp_path)
        assert redis(settings).url.get_secret_value() == "redis://cache:6379/1"

    def test_profile_from_env_var(self, tmp_path: Path) -> None:
        settings = load_settings(environ={"INFRAKIT_PROFILE": "test"}, profiles_dir=tmp_path)
        assert settings.profile == "test"

    def test_profiles_dir_from_env_var(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("mine", "service: {name: from-dir}")
        settings = load_settings("mine", environ={"INFRAKIT_PROFILES_DIR": str(profiles_dir)})
        assert settings.service.name == "from-dir"

    def test_a_local_file_shadows_the_embedded_one(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("local", "service: {name: mine}")
        assert load(profiles_dir, "local").service.name == "mine"

    def test_profile_as_path(self, tmp_path: Path) -> None:
        path = tmp_path / "elsewhere.yml"
        path.write_text("service: {name: by-path}\n")
        assert load_settings(path, environ={}).service.name == "by-path"
        assert load_settings(str(path), environ={}).service.name == "by-path"

    def test_available_profiles_lists_dir_and_embedded(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("staging", "{}")
        assert available_profiles(profiles_dir) == [
            "local",
            "production",
            "single-host",
            "staging",
            "test",
        ]
        assert resolve_profile("test", profiles_dir=profiles_dir).parent == EMBEDDED_PROFILES_DIR

    def test_empty_file_is_all_defaults(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("empty", "")
        settings = load(profiles_dir, "empty")
        assert settings.model_dump() == InfraSettings().model_dump()
        assert set(settings.sources().values()) == {"default"}


class TestMissingProfile:
    """A profile that is not there names what is."""

    def test_lists_available_and_suggests(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("staging", "{}")
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "stagin")
        text = str(exc.value)
        assert "'stagin' not found" in text
        assert "did you mean 'staging'?" in text
        assert "local, production, single-host, staging, test" in text

    def test_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="does not exist"):
            load_settings(tmp_path / "nope.yaml", environ={})

    @pytest.mark.parametrize("name", ["../etc/passwd", "", " spaced", "-flag"])
    def test_bad_names(self, profiles_dir: Path, name: str) -> None:
        with pytest.raises(ConfigError):
            load(profiles_dir, name)


class TestExtends:
    """`extends` deep-merges over another profile."""

    def test_deep_merge(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile(
            "base",
            """
            service: {name: base, version: "1.0"}
            database: {pool_size: 7, max_overflow: 3}
            telemetry: {excluded_paths: ["/a", "/b"]}
            """,
        )
        write_profile(
            "child",
            """
            extends: base
            service: {version: "2.0"}
            database: {pool_size: 9}
            telemetry: {excluded_paths: ["/c"]}
            """,
        )
        settings = load(profiles_dir, "child")
        assert settings.service.name == "base"
        assert settings.service.version == "2.0"
        assert (sql(settings).pool_size, sql(settings).max_overflow) == (9, 3)
        assert settings.telemetry.excluded_paths == ["/c"]  # lists are replaced, not merged
        sources = settings.sources()
        assert "base.yaml:1:" in sources["service.name"]
        assert "child.yaml:2:" in sources["service.version"]
        assert "child.yaml:4:" in sources["telemetry.excluded_paths"]

    def test_extends_an_embedded_profile(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("ci", "extends: test\nlogging: {level: warning}\n")
        settings = load(profiles_dir, "ci")
        assert settings.telemetry.exporter == "memory"
        assert settings.logging.level == "WARNING"

    def test_extends_by_relative_path(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        (profiles_dir / "shared").mkdir()
        (profiles_dir / "shared" / "common.yaml").write_text("service: {name: common}\n")
        write_profile("app", "extends: shared/common.yaml\n")
        assert load(profiles_dir, "app").service.name == "common"

    def test_cycle_is_an_error(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("a", "extends: b\n")
        write_profile("b", "extends: c\n")
        write_profile("c", "extends: a\n")
        with pytest.raises(ConfigError, match=r"extends forms a cycle: .*a\.yaml -> .*b\.yaml"):
            load(profiles_dir, "a")

    def test_self_extension_is_a_cycle(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("me", "extends: me\n")
        with pytest.raises(ConfigError, match="cycle"):
            load(profiles_dir, "me")

    def test_a_profile_may_extend_the_embedded_one_of_its_name(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("test", "extends: test\nservice: {name: my-tests}\n")
        settings = load(profiles_dir, "test")
        assert settings.service.name == "my-tests"
        assert settings.telemetry.exporter == "memory"  # from the embedded test profile
        assert settings.sources()["telemetry.exporter"].endswith("profiles/test.yaml:15:3")

    def test_unknown_parent(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("kid", "service: {}\nextends: basee\n")
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "kid")
        assert "kid.yaml:2:1: extends: extends: profile 'basee' not found" in str(exc.value)

    def test_extends_must_be_a_string(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("kid", "extends: [a, b]\n")
        with pytest.raises(ConfigError, match="extends must be a profile name"):
            load(profiles_dir, "kid")


class TestInterpolation:
    """${VAR}, ${VAR:-default} and $${ in string values."""

    def test_variable_and_default(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile(
            "p",
            """
            service:
              name: ${NAME}
              environment: ${ENV_NAME:-staging}
              version: v${MAJOR}.${MINOR:-0}
            """,
        )
        settings = load(profiles_dir, "p", environ={"NAME": "api", "MAJOR": "3"})
        assert settings.service.name == "api"
        assert settings.service.environment == "staging"
        assert settings.service.version == "v3.0"
        assert settings.sources()["service.name"].endswith("p.yaml:2:3 (${NAME})")

    def test_interpolated_numbers_are_coerced(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "database:\n  pool_size: ${POOL:-4}\n  echo: ${ECHO:-false}\n")
        settings = load(profiles_dir, "p", environ={"POOL": "12"})
        assert sql(settings).pool_size == 12
        assert sql(settings).echo is False

    def test_escape(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "service:\n  name: cost-$${HOME}-x\n")
        assert load(profiles_dir, "p", environ={"HOME": "/root"}).service.name == "cost-${HOME}-x"

    def test_empty_value_is_used_not_default(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  environment: ${E:-fallback}\n")
        with pytest.raises(ConfigError, match="at least 1 character"):
            load(profiles_dir, "p", environ={"E": ""})

    def test_missing_variable_names_var_key_and_line(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  name: ok\ndatabase:\n  url: ${DATABASE_URL}\n")
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "p")
        (line,) = problems(exc)
        assert "p.yaml:4:3: database.url: environment variable DATABASE_URL is not set" in line
        assert "${DATABASE_URL:-value}" in line

    @pytest.mark.parametrize("text", ["${", "${1BAD}", "${A B}", "x ${unclosed"])
    def test_malformed(self, write_profile: WriteProfile, profiles_dir: Path, text: str) -> None:
        write_profile("p", f"service:\n  name: '{text}'\n")
        with pytest.raises(ConfigError, match=r"p\.yaml:2:3: service\.name: (malformed|unclosed)"):
            load(profiles_dir, "p")

    def test_keys_are_not_interpolated(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  ${X}: 1\n")
        with pytest.raises(ConfigError, match=r"service\.\$\{X\}: unknown key"):
            load(profiles_dir, "p", environ={"X": "name"})


class TestPrecedence:
    """defaults < profile chain < env vars < overrides."""

    def test_full_chain(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("base", "database: {pool_size: 2, max_overflow: 2, pool_recycle_s: 2}\n")
        write_profile("app", "extends: base\ndatabase: {max_overflow: 3, pool_recycle_s: 3}\n")
        env = {"INFRAKIT__DATABASE__POOL_RECYCLE_S": "4", "infrakit__database__echo": "true"}
        settings = load(
            profiles_dir,
            "app",
            environ=env,
            overrides={"database.connect_timeout_s": 9.5, "database": {"pool_recycle_s": 5}},
        )
        db = sql(settings)
        assert (db.pool_size, db.max_overflow, db.pool_recycle_s) == (2, 3, 5)
        assert db.echo is True
        assert db.connect_timeout_s == 9.5
        sources = settings.sources()
        assert "base.yaml:1:" in sources["database.pool_size"]
        assert "app.yaml:2:" in sources["database.max_overflow"]
        assert sources["database.pool_recycle_s"] == "override database.pool_recycle_s"
        assert sources["database.echo"] == "env infrakit__database__echo"
        assert sources["database.pool_pre_ping"] == "default"

    def test_env_json_list(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "{}")
        env = {"INFRAKIT__TELEMETRY__EXCLUDED_PATHS": '["/x", "/y*"]'}
        settings = load(profiles_dir, "p", environ=env)
        assert settings.telemetry.excluded_paths == ["/x", "/y*"]

    def test_env_bad_json(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "{}")
        with pytest.raises(ConfigError, match="env INFRAKIT__TELEMETRY__EXCLUDED_PATHS"):
            load(profiles_dir, "p", environ={"INFRAKIT__TELEMETRY__EXCLUDED_PATHS": "[oops"})

    def test_env_unknown_key_names_the_variable(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "{}")
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "p", environ={"INFRAKIT__DATABSE__URL": "sqlite:///x"})
        assert problems(exc) == [
            "env INFRAKIT__DATABSE__URL: databse: unknown key (did you mean 'database'?)"
        ]

    def test_env_replaces_a_scalar_section(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "{}")
        with pytest.raises(ConfigError, match="INFRAKIT__DATABASE____X: malformed variable name"):
            load(profiles_dir, "p", environ={"INFRAKIT__DATABASE____X": "1"})

    def test_single_underscore_vars_are_not_overrides(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "{}")
        load(profiles_dir, "p", environ={"INFRAKIT_PROFILE": "p", "INFRAKIT_OTHER": "x"})


class TestBadInput:
    """Every problem is reported at once, with file:line:col, key and fix."""

    def test_all_problems_at_once(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile(
            "prod",
            """
            database:
              pool_size: 0
              max_overflow: -1
            tokens:
              backnd: redis
            telemetry:
              sample_ratio: 1.5
            logging:
              level: loud
            """,
        )
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "prod", environ={"INFRAKIT__AUDIT__MAX_ENTRIES": "0"})
        lines = problems(exc)
        assert len(lines) == 6
        text = str(exc.value)
        assert text.startswith("6 problems in profile 'prod':")
        assert (
            "prod.yaml:2:3: database.pool_size: Input should be greater than or equal to 1 (got 0)"
            in text
        )
        assert (
            "prod.yaml:3:3: database.max_overflow: Input should be greater than or equal to 0"
            in text
        )
        assert "prod.yaml:5:3: tokens.backnd: unknown key (did you mean 'backend'?)" in text
        assert (
            "prod.yaml:7:3: telemetry.sample_ratio: Input should be less than or equal to 1" in text
        )
        assert "prod.yaml:9:3: logging.level: Input should be 'DEBUG'" in text
        assert "env INFRAKIT__AUDIT__MAX_ENTRIES: audit.max_entries:" in text

    def test_unknown_key_without_close_match_lists_valid_keys(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "audit:\n  zzz: 1\n")
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "p")
        assert "Hint: valid keys here: backend, checkpoint_every, checkpoint_file," in str(
            exc.value
        )

    def test_unknown_backend_suggests(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "tokens:\n  backend: redsi\n")
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "p")
        assert "p.yaml:2:3: tokens.backend: unknown backend 'redsi' (did you mean 'redis'?)" in str(
            exc.value
        )
        assert "expected one of: memory, redis" in str(exc.value)

    def test_level_is_case_insensitive(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "logging:\n  level: warning\n")
        assert load(profiles_dir, "p").logging.level == "WARNING"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("a: [1, 2\n", r"p\.yaml:2:1: invalid YAML: while parsing a flow sequence"),
            ("- 1\n- 2\n", r"p\.yaml:1:1: a profile must be a mapping of sections"),
            ("just text\n", r"a profile must be a mapping of sections .* got a single value"),
            (
                "!!python/object:os.system {}\n",
                r"p\.yaml:1:1: YAML tag .*python/object.* not allowed",
            ),
            (
                "database:\n  url: !!python/object/apply:os.system ['echo pwned']\n",
                r"p\.yaml:2:8: database\.url: YAML tag .* not allowed",
            ),
            ("service:\n  name: !!python/name:os.system ''\n", r"p\.yaml:2:9: invalid YAML"),
            ("service: {name: a}\nservice: {name: b}\n", r"p\.yaml:2:1: service: duplicate key"),
            ("service:\n  1: x\n", r"keys must be strings"),
            (
                "database:\n  pool_size: ten\n",
                r"p\.yaml:2:3: database\.pool_size: Input should be a valid integer",
            ),
            ("database: 5\n", r"p\.yaml:1:1: database: Input should be a valid dictionary"),
            ("a: &x [*x]\n", r"invalid YAML|refers to itself"),
        ],
    )
    def test_rejected_documents(
        self, write_profile: WriteProfile, profiles_dir: Path, text: str, expected: str
    ) -> None:
        write_profile("p", text)
        with pytest.raises(ConfigError, match=expected):
            load(profiles_dir, "p")

    def test_not_utf8(self, profiles_dir: Path) -> None:
        (profiles_dir / "p.yaml").write_bytes(b"service:\n  name: \xff\xfe\n")
        with pytest.raises(ConfigError, match=r"p\.yaml:2: profile is not UTF-8 text"):
            load(profiles_dir, "p")

    def test_alias_bomb_is_bounded(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
        write_profile("p", "\n".join(lines) + "\n")
        with pytest.raises(ConfigError, match=r"over the loader.s limit of 10,000 \(MAX_VALUES\)"):
            load(profiles_dir, "p")

    def test_merge_keys_are_supported(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile(
            "p",
            """
            _pool: &pool {pool_size: 3, max_overflow: 4}
            """,
        )
        # an unknown top-level key is still an error, even as an anchor holder
        with pytest.raises(ConfigError, match="_pool: unknown key"):
            load(profiles_dir, "p")
        write_profile("q", "database:\n  <<: {pool_size: 3}\n  max_overflow: 4\n")
        assert sql(load(profiles_dir, "q")).pool_size == 3

    def test_config_error_is_a_value_error_and_pickles(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "database: {pool_size: 0}\n")
        with pytest.raises(ValueError, match="pool_size") as exc:
            load(profiles_dir, "p")
        assert isinstance(exc.value, ConfigError)
        clone = pickle.loads(pickle.dumps(exc.value))
        assert str(clone) == str(exc.value)
        assert clone.problems == exc.value.problems

    def test_bad_override_key(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "{}")
        with pytest.raises(
            ConfigError, match=r"override database\.pool_sise: database\.pool_sise: unknown key"
        ):
            load(profiles_dir, "p", overrides={"database.pool_sise": 3})


class TestSecrets:
    """Passwords in URLs and secret fields never show."""

    SECRET = "s3cr3t-Pa55"

    def settings(self, write_profile: WriteProfile, profiles_dir: Path) -> InfraSettings:
        write_profile(
            "p",
            f"""
            database:
              url: postgresql+asyncpg://app:{self.SECRET}@db:5432/app
            tokens:
              backend: redis
              url: redis://:{self.SECRET}@cache:6379/0
            telemetry:
              exporter: otlp
              endpoint: https://user:{self.SECRET}@collector:4318
              headers: {{authorization: "Bearer {self.SECRET}"}}
            """,
        )
        return load(profiles_dir, "p")

    def test_repr_str_and_dumps(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        settings = self.settings(write_profile, profiles_dir)
        for text in (
            repr(settings),
            str(settings),
            settings.model_dump_json(),
            str(settings.masked()),
            str(settings.sources()),
            repr(settings.database),
            str(sql(settings).url),
        ):
            assert self.SECRET not in text
        assert settings.masked()["database"]["url"] == "postgresql+asyncpg://app:***@db:5432/app"
        assert sql(settings).url.get_secret_value().count(self.SECRET) == 1
        assert otlp(settings).headers["authorization"].get_secret_value().endswith(self.SECRET)

    def test_error_messages_mask(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile(
            "p",
            f"""
            database:
              url: 42
              pool_size: "postgresql://u:{self.SECRET}@h/db"
            telemetry:
              exporter: otlp
              headers: {{x-api-key: [{self.SECRET}]}}
            """,
        )
        env = {
            "INFRAKIT__TOKENS__BACKEND": "redis",
            "INFRAKIT__TOKENS__URL": f"redis//:{self.SECRET}@h",  # malformed URL
            "INFRAKIT__SERVICE__NAME": "",
            "INFRAKIT__DATABASE__PASSWORD": self.SECRET,  # unknown key, sensitive name
        }
        with pytest.raises(ConfigError) as exc:
            load(profiles_dir, "p", environ=env)
        text = str(exc.value)
        assert len(exc.value.problems) >= 4
        assert self.SECRET not in text
        assert "tokens.url: not a URL" in text

    def test_url_masking_edge_cases(self) -> None:
        from infrakit.scrub import mask_url

        assert mask_url("postgresql://u:p@h/db") == "postgresql://u:***@h/db"
        assert mask_url("postgresql://u:p/a:b@c@h/db") == "postgresql://u:***@h/db"
        assert mask_url("redis://:pw@h:6379") == "redis://:***@h:6379"
        assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
        assert mask_url("postgresql://user@h/db") == "postgresql://user@h/db"
        assert mask_url("sqlite+aiosqlite:///:memory:") == "sqlite+aiosqlite:///:memory:"
