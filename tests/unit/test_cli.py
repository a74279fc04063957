from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infrakit.cli import main
from tests.conftest import WriteProfile


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


class TestConfigValidate:
    """`infrakit config validate`: 0 when valid, 1 with the ConfigError line."""

    def test_valid(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(["config", "validate", "test"], capsys)
        assert code == 0
        assert "ok: profile 'test' is valid" in out

    def test_invalid(
        self, write_profile: WriteProfile, profiles_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_profile("prod", "tokens:\n  backnd: redis\n")
        code, out, err = run(
            ["config", "validate", "prod", "--profiles-dir", str(profiles_dir)], capsys
        )
        assert code == 1
        assert out == ""
        assert "prod.yaml:2:3: tokens.backnd: unknown key (did you mean 'backend'?)" in err
        assert "Traceback" not in err

    def test_a_missing_secret_variable_reads_whole(
        self,
        write_profile: WriteProfile,
        profiles_dir: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The scrubber reads each part of a problem on its own: with the key,
        "auth.secret: environment" looked like a secret and was masked."""
        monkeypatch.delenv("SIGNING_KEY", raising=False)
        write_profile("p", "auth:\n  algorithms: [HS256]\n  secret: ${SIGNING_KEY}\n")
        code, _, err = run(["config", "validate", "p", "--profiles-dir", str(profiles_dir)], capsys)
        assert code == 1
        assert "p.yaml:3:3: auth.secret: environment variable SIGNING_KEY is not set" in err
        assert "SIGNING_KEY_FILE naming a file" in err
        assert "[REDACTED]" not in err

    def test_each_part_of_a_problem_is_still_scrubbed(self) -> None:
        from infrakit.errors import ConfigError, ConfigProblem
        from infrakit.scrub import scrub_text

        error = ConfigError(
            ConfigProblem(
                "cannot parse 'password=hunter2-pw'",
                key="auth.secret",
                where="p.yaml:3:3",
                value="token=s3cr3t-v4lue",
                hint="not like api_key=k3y-v4lue",
            )
        )
        text = error.render(scrub_text)
        assert text.startswith("p.yaml:3:3: auth.secret: cannot parse")
        for secret in ("hunter2-pw", "s3cr3t-v4lue", "k3y-v4lue"):
            assert secret not in text
        assert str(error) == error.render()  # unscrubbed for the kit's own callers

    def test_missing_profile(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        code, _, err = run(["config", "validate", "nope", "--profiles-dir", str(tmp_path)], capsys)
        assert code == 1
        assert "profile 'nope' not found" in err

    def test_set_overrides(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run(["config", "validate", "test", "--set", "database.pool_size=0"], capsys)
        assert code == 1
        assert "override database.pool_size: database.pool_size" in err


class TestConfigShow:
    """`infrakit config show`: the effective configuration, secrets masked."""

    def test_yaml_and_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(["config", "show", "test"], capsys)
        assert code == 0
        assert yaml.safe_load(out)["telemetry"]["exporter"] == "memory"
        code, out, _ = run(["config", "show", "test", "--format", "json"], capsys)
        assert json.loads(out)["audit"]["backend"] == "memory"

    def test_sources(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("INFRAKIT__DATABASE__POOL_SIZE", "7")
        code, out, _ = run(
            [
                "config",
                "show",
                "test",
                "--sources",
                "--format",
                "json",
                "--set",
                "audit.max_entries=5",
            ],
            capsys,
        )
        assert code == 0
        data = json.loads(out)
        assert data["database.pool_size"] == {
            "value": 7,
            "source": "env INFRAKIT__DATABASE__POOL_SIZE",
        }
        assert data["audit.max_entries"]["source"] == "override audit.max_entries"
        assert data["telemetry.exporter"]["source"].endswith("test.yaml:15:3")
        assert data["database.echo"]["source"] == "default"
        _, out, _ = run(["config", "show", "test", "--sources"], capsys)
        assert any(
            line.startswith("database.pool_size") and "# env" in line for line in out.splitlines()
        )

    def test_secrets_are_masked(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app:TOPSECRET@db/app")
        monkeypatch.setenv("JWT_SECRET", "JWTSECRET-" + "x" * 32)
        code, out, _ = run(["config", "show", "single-host"], capsys)
        assert code == 0
        assert "TOPSECRET" not in out
        assert "JWTSECRET" not in out
        assert "secret: '**********'" in out
        assert "postgresql+asyncpg://app:***@db/app" in out


class TestConfigSchemaAndDiff:
    """`config schema` for editors; `config diff` for reviews."""

    def test_schema(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(["config", "schema"], capsys)
        schema = json.loads(out)
        assert code == 0
        assert set(schema["properties"]) >= {"service", "database", "tokens", "extends"}
        assert schema["additionalProperties"] is False

    def test_diff(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(["config", "diff", "test", "local"], capsys)
        assert code == 0
        assert 'audit.backend: "memory" -> "sql"' in out
        code, out, _ = run(["config", "diff", "test", "test"], capsys)
        assert "no differences" in out


class TestUsage:
    """Usage errors exit 2; no traceback unless -v."""

    @pytest.mark.parametrize(
        "argv",
        [[], ["config"], ["config", "bogus"], ["config", "show", "--format", "xml"], ["nope"]],
    )
    def test_usage_errors(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err

    def test_bad_set(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run(["config", "validate", "test", "--set", "nokey"], capsys)
        assert code == 2
        assert "--set expects KEY=VALUE" in err

    def test_console_script_exit_codes(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text("database: {pool_size: 0}\n")
        cmd = [sys.executable, "-m", "infrakit.cli", "config", "validate", str(bad)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp_path)
        assert proc.returncode == 1
        assert proc.stderr.startswith("infrakit: error: bad.yaml:1:12: database.pool_size")
        assert "Traceback" not in proc.stderr
        proc = subprocess.run(
            [sys.executable, "-m", "infrakit.cli", "-v", "config", "validate", str(bad)],
            capture_output=True, text=True, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr


class TestDescribe:
    """`infrakit describe` starts a profile, prints what was built, and stops."""

    def test_describe_test_profile(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(["describe", "test"], capsys)
        assert code == 0
        assert "profile: test" in out
        assert "components:" in out
        for component in ("telemetry", "database", "tokens", "audit"):
            assert f"  {component} " in out
        assert out.count(" up ") == 4


class TestCheck:
    """`infrakit check`: a table or JSON, exit 1 naming what is down."""

    def test_all_up(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(["check", "test"], capsys)
        assert code == 0
        for component in ("telemetry", "database", "tokens", "audit"):
            assert component in out
        assert "down" not in out

    def test_down_is_named_and_masked(self, capsys: pytest.CaptureFixture[str]) -> None:
        argv = [
            "check", "test", "--json", "--timeout", "1",
            "--set", "tokens.backend=redis",
            "--set", "tokens.url=redis://:s3cret@127.0.0.1:9/0",
        ]  # fmt: skip
        code, out, err = run(argv, capsys)
        assert code == 1
        report = json.loads(out)
        by_name = {c["component"]: c for c in report["components"]}
        assert by_name["tokens"]["status"] == "down"
        assert "redis://:***@127.0.0.1:9/0" in by_name["tokens"]["error"]
        assert by_name["database"]["status"] == "up"
        assert "s3cret" not in out + err
        assert "down: tokens" in err


class TestCheckAndDescribeAgree:
    """One probe serves both: the same states, and --timeout must be positive."""

    @pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
    def test_timeout_must_be_a_positive_number(
        self, value: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        for command in ("check", "describe"):
            with pytest.raises(SystemExit) as exc:
                main([command, "test", "--timeout", value])
            assert exc.value.code == 2
            assert "--timeout" in capsys.readouterr().err

    def test_same_states(self, capsys: pytest.CaptureFixture[str]) -> None:
        broken = ["--set", "tokens.backend=redis", "--set", "tokens.url=redis://:pw@127.0.0.1:9/0"]
        states = {}
        for command in ("check", "describe"):
            code, out, _ = run([command, "test", "--timeout", "2", *broken], capsys)
            assert code == 1
            states[command] = [
                line.split()[:3]
                for line in out.splitlines()
                if line.startswith("  ")
                and line.split()[0] in ("telemetry", "database", "tokens", "audit")
            ]
        assert states["check"] == states["describe"]
        assert ["tokens", "redis", "down"] in states["check"]
