"""The loader's bounds: hostile input is a ConfigError naming the bound, found cheaply."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import pytest

from infrakit import ConfigError, InfraSettings, load_settings
from infrakit.cli import main as cli_main
from infrakit.settings import limits
from infrakit.telemetry.exporters.otlp import OtlpTelemetrySettings
from tests.conftest import WriteProfile

SECRET = "s3cr3t-VALUE-never-shown"
MB = 1 << 20


def load(profiles_dir: Path, name: str, **kwargs: object) -> InfraSettings:
    kwargs.setdefault("environ", {})
    return load_settings(name, profiles_dir=profiles_dir, **kwargs)  # type: ignore[arg-type]


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """The peak of memory allocated by Python inside the block, in bytes."""
    tracemalloc.start()
    peak = 0
    try:
        yield lambda: peak
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def refused(load: Callable[[], object], limit: str) -> str:
    """Run ``load``; it must raise a ConfigError naming ``limit``, whose message
    is returned. The error must say how to fix it and show no secret value."""
    with pytest.raises(ConfigError) as exc:
        load()
    text = str(exc.value)
    assert f"({limit})" in text, text
    assert f"{getattr(limits, limit):,}" in text
    assert "Hint: " in text
    assert SECRET not in text
    assert len(text) < 2000  # a huge name or key is shown cut, not in full
    return text


class TestInterpolation:
    """``${...}`` is counted while it expands: the bound is hit before the memory is spent."""

    def test_500mb_of_expansion_is_refused_early(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        # 40 KB of profile, 10,000 x a 50 KB variable: a 500 MB value before
        write_profile("p", "service:\n  name: '" + "${A}" * 10_000 + "'\n")
        env = {"A": SECRET + "x" * (50_000 - len(SECRET))}
        with peak_memory() as peak:
            text = refused(lambda: load(profiles_dir, "p", environ=env), "MAX_EXPANDED_CHARS")
        assert "p.yaml:2:3: service.name:" in text
        assert "${A} is 50,000 characters" in text
        assert peak() < 64 * MB  # the bound is 4 Mi characters, not 500 MB

    def test_200k_references_are_a_config_error_not_memory_error(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  name: '" + "${A}" * 200_000 + "'\n")
        env = {"A": "x" * 50_000}  # 10 GB: a MemoryError, or the machine's memory
        refused(lambda: load(profiles_dir, "p", environ=env), "MAX_EXPANDED_CHARS")

    def test_references_are_counted_even_when_they_expand_to_nothing(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  name: 'x${A}" + "${A}" * 20_000 + "'\n")
        text = refused(lambda: load(profiles_dir, "p", environ={"A": ""}), "MAX_INTERPOLATIONS")
        assert "p.yaml:2:3: service.name:" in text

    def test_the_count_spans_the_extends_chain(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        half = limits.MAX_INTERPOLATIONS // 2 + 1
        write_profile("base", "service:\n  version: '" + "${A}" * half + "'\n")
        write_profile("p", "extends: base\nservice:\n  name: '" + "${A}" * half + "'\n")
        refused(lambda: load(profiles_dir, "p", environ={"A": ""}), "MAX_INTERPOLATIONS")

    def test_a_real_sized_value_still_interpolates(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  name: '${A}-${A}'\n")
        settings = load(profiles_dir, "p", environ={"A": "n" * 100_000})
        assert settings.service.name == "n" * 100_000 + "-" + "n" * 100_000


class TestProfileFile:
    """A file's size is read before the file is."""

    def test_50mb_profile_is_refused_without_reading_it(self, profiles_dir: Path) -> None:
        # a valid profile, padded with comments: it loaded, in over a minute
        with (profiles_dir / "big.yaml").open("w", encoding="utf-8") as file:
            file.write("service:\n  name: big\n")
            line = "#" + "x" * 99 + "\n"
            for _ in range(50):
                file.write(line * 10_000)
        with peak_memory() as peak:
            text = refused(lambda: load(profiles_dir, "big"), "MAX_PROFILE_BYTES")
        assert "big.yaml: the profile file is 50,500,021 bytes" in text
        assert peak() < 8 * MB  # not read: the file is 50 MB

    def test_a_profile_at_the_limit_loads(self, profiles_dir: Path) -> None:
        head = "service:\n  name: edge\n"
        padding = "#" * (limits.MAX_PROFILE_BYTES - len(head) - 1) + "\n"
        (profiles_dir / "edge.yaml").write_text(head + padding, encoding="utf-8")
        assert load(profiles_dir, "edge").service.name == "edge"

    def test_the_extends_chain_is_bounded(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p0", "service:\n  name: bottom\n")
        for i in range(1, limits.MAX_EXTENDS + 1):
            write_profile(f"p{i}", f"extends: p{i - 1}\n")
        assert load(profiles_dir, f"p{limits.MAX_EXTENDS - 1}").service.name == "bottom"
        text = refused(lambda: load(profiles_dir, f"p{limits.MAX_EXTENDS}"), "MAX_EXTENDS")
        assert "p1.yaml:1:1: extends:" in text


class TestYaml:
    """What YAML itself can make of a small file: aliases, nesting, keys, numbers."""

    def test_5000_digit_integer_is_a_config_error(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        # Python refuses to convert over 4,300 digits with a raw ValueError
        write_profile("p", "database:\n  pool_size: " + "7" * 5000 + "\n")
        text = refused(lambda: load(profiles_dir, "p"), "MAX_INT_CHARS")
        assert "p.yaml:2:14: database.pool_size: an integer is 5,000 characters" in text

    def test_a_big_integer_under_the_limit_is_validated_as_usual(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        write_profile("p", "service:\n  name: " + "7" * limits.MAX_INT_CHARS + "\n")
        with pytest.raises(ConfigError, match=r"p\.yaml:2:3: service\.name: Input should be a"):
            load(profiles_dir, "p")

    def test_alias_used_as_a_key_is_never_built(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        # 9**10 items behind one key: building its repr for the message hung
        levels = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
        write_profile("p", "service:\n  ? [" + ", ".join(levels) + "]\n  : 1\n")
        with pytest.raises(
            ConfigError, match=r"p\.yaml:2:5: service: keys must be strings, got a list"
        ):
            load(profiles_dir, "p")

    @pytest.mark.parametrize("depth", [limits.MAX_DEPTH + 1, 100_000])
    def test_deep_nesting(
        self, write_profile: WriteProfile, profiles_dir: Path, depth: int
    ) -> None:
        write_profile("p", "service:\n  name: " + "[" * depth + "]" * depth + "\n")
        text = refused(lambda: load(profiles_dir, "p"), "MAX_DEPTH")
        assert "p.yaml:2:" in text

    def test_deep_block_nesting(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        lines = [" " * i + f"k{i}:" for i in range(2 * limits.MAX_DEPTH)]
        write_profile("p", "service:\n" + "\n".join(" " + line for line in lines) + " 1\n")
        refused(lambda: load(profiles_dir, "p"), "MAX_DEPTH")

    def test_huge_key(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "telemetry:\n  headers:\n    " + "k" * 1000 + ": v\n")
        text = refused(lambda: load(profiles_dir, "p"), "MAX_KEY_CHARS")
        assert "p.yaml:3:5: telemetry.headers: the key 'kkkk" in text
        assert "k" * 100 not in text

    def test_many_keys_stop_at_the_bound(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        # 60,000 keys: each one scanned every key seen so far (minutes)
        write_profile("p", "service:\n" + "".join(f"  k{i}: {i}\n" for i in range(60_000)))
        text = refused(lambda: load(profiles_dir, "p"), "MAX_VALUES")
        assert "p.yaml:" in text

    def test_thousands_of_keys_under_the_bound_load_with_their_sources(
        self, write_profile: WriteProfile, profiles_dir: Path
    ) -> None:
        n = limits.MAX_VALUES // 2 - 10
        headers = "".join(f"    h{i}: v{i}\n" for i in range(n))
        write_profile("p", "telemetry:\n  exporter: otlp\n  headers:\n" + headers)
        env = {"INFRAKIT__TELEMETRY__HEADERS__H7": "from-env"}
        settings = load(profiles_dir, "p", environ=env)
        assert isinstance(telemetry := settings.telemetry, OtlpTelemetrySettings)
        assert len(telemetry.headers) == n
        assert telemetry.headers["h7"].get_secret_value() == "from-env"
        sources = settings.sources()
        assert sources["telemetry.headers.h7"] == "env INFRAKIT__TELEMETRY__HEADERS__H7"
        assert sources[f"telemetry.headers.h{n - 1}"].endswith(f"p.yaml:{n + 3}:5")


class TestEnvironment:
    """``INFRAKIT__`` names and values are measured before they are split or parsed."""

    def test_100k_deep_json_value(self, tmp_path: Path) -> None:
        # a list key: its value is JSON (a string key takes the text as it is)
        env = {"INFRAKIT__TELEMETRY__EXCLUDED_PATHS": "[" * 100_000 + "]" * 100_000}
        text = refused(lambda: load(tmp_path, "test", environ=env), "MAX_DEPTH")
        assert (
            "env INFRAKIT__TELEMETRY__EXCLUDED_PATHS: telemetry.excluded_paths: "
            "the JSON value's nesting" in text
        )

    def test_json_just_over_the_depth(self, tmp_path: Path) -> None:
        depth = limits.MAX_DEPTH + 1
        env = {"INFRAKIT__TELEMETRY__EXCLUDED_PATHS": "[" * depth + "]" * depth}
        refused(lambda: load(tmp_path, "test", environ=env), "MAX_DEPTH")

    def test_5000_digit_integer_in_json(self, tmp_path: Path) -> None:
        env = {"INFRAKIT__TELEMETRY__EXCLUDED_PATHS": "[" + "7" * 5000 + "]"}
        text = refused(lambda: load(tmp_path, "test", environ=env), "MAX_INT_CHARS")
        assert "env INFRAKIT__TELEMETRY__EXCLUDED_PATHS" in text

    @pytest.mark.timeout(60)  # hang protection only: it took 77 s
    def test_name_of_5000_segments(self, tmp_path: Path) -> None:
        name = "INFRAKIT__SERVICE__" + "__".join(["a"] * 5000)
        text = refused(lambda: load(tmp_path, "test", environ={name: "x"}), "MAX_DEPTH")
        assert "the variable name's nesting is 5,001 segments" in text
        assert "(15,017 characters)" in text  # the name is shown cut

    def test_long_name_segment(self, tmp_path: Path) -> None:
        env = {"INFRAKIT__SERVICE__" + "N" * 5000: "x"}
        refused(lambda: load(tmp_path, "test", environ=env), "MAX_KEY_CHARS")

    def test_huge_value(self, tmp_path: Path) -> None:
        env = {"INFRAKIT__SERVICE__NAME": SECRET * (limits.MAX_VALUE_CHARS // len(SECRET) + 1)}
        text = refused(lambda: load(tmp_path, "test", environ=env), "MAX_VALUE_CHARS")
        assert text.startswith("env INFRAKIT__SERVICE__NAME: service.name: the value is")

    def test_every_bad_variable_is_reported(self, tmp_path: Path) -> None:
        env = {
            "INFRAKIT__TELEMETRY__EXCLUDED_PATHS": "[" * 100,
            "INFRAKIT__SERVICE__" + "__".join(["a"] * 100): "x",
        }
        with pytest.raises(ConfigError) as exc:
            load(tmp_path, "test", environ=env)
        assert len(exc.value.problems) == 2


class TestNames:
    """Profile names and paths are measured before the file system sees them."""

    def test_5000_character_profile_name(self, tmp_path: Path) -> None:
        text = refused(lambda: load(tmp_path, "p" * 5000), "MAX_PROFILE_NAME_CHARS")
        assert "...' is 5,000 characters" in text

    def test_the_longest_name_is_a_file_name(self, tmp_path: Path) -> None:
        name = "p" * limits.MAX_PROFILE_NAME_CHARS
        with pytest.raises(ConfigError, match="not found"):
            load(tmp_path, name)
        (tmp_path / f"{name}.yaml").write_text("service: {name: long}\n", encoding="utf-8")
        assert load(tmp_path, name).service.name == "long"
        refused(lambda: load(tmp_path, name + "p"), "MAX_PROFILE_NAME_CHARS")

    def test_5000_character_profile_path(self, tmp_path: Path) -> None:
        path = str(tmp_path / ("p" * 5000)) + ".yaml"
        refused(lambda: load(tmp_path, path), "MAX_PATH_CHARS")

    def test_path_component_too_long_for_the_file_system(self, tmp_path: Path) -> None:
        path = str(tmp_path / ("p" * 1000)) + ".yaml"  # under MAX_PATH_CHARS; NAME_MAX is 255
        with pytest.raises(ConfigError, match="File name too long"):
            load(tmp_path, path)

    def test_extends_too_long(self, write_profile: WriteProfile, profiles_dir: Path) -> None:
        write_profile("p", "extends: " + "q" * 300 + "\n")
        with pytest.raises(ConfigError, match="File name too long"):
            load(profiles_dir, "p")
        write_profile("p", "extends: " + "q" * 5000 + "\n")
        text = refused(lambda: load(profiles_dir, "p"), "MAX_PATH_CHARS")
        assert "p.yaml:1:1: extends:" in text

    def test_profiles_dir_from_the_environment(self) -> None:
        env = {"INFRAKIT_PROFILES_DIR": "/tmp/" + "d" * 5000}
        refused(lambda: load_settings("test", environ=env), "MAX_PATH_CHARS")


class TestOverrides:
    """Overrides from Python and ``--set`` are held to the same bounds."""

    def test_deep_override_key(self, tmp_path: Path) -> None:
        overrides = {"service." + ".".join(["a"] * 100): 1}
        refused(lambda: load(tmp_path, "test", overrides=overrides), "MAX_DEPTH")

    def test_long_override_segment(self, tmp_path: Path) -> None:
        overrides = {"service." + "a" * 1000: 1}
        refused(lambda: load(tmp_path, "test", overrides=overrides), "MAX_KEY_CHARS")

    def test_cli_set_names_the_key(self, tmp_path: Path) -> None:
        err = io.StringIO()
        with redirect_stderr(err):
            code = cli_main(
                ["config", "validate", "test", "--profiles-dir", str(tmp_path),
                 "--set", "logging.redact.extra_patterns=" + "[" * 100_000]
            )  # fmt: skip
        assert code == 1
        assert (
            "--set logging.redact.extra_patterns: logging.redact.extra_patterns: "
            "the JSON value's nesting" in err.getvalue()
        )
        assert "(MAX_DEPTH)" in err.getvalue()


class TestDocumented:
    """Every bound is in the profiles guide, with its value."""

    def test_table_matches_the_constants(self) -> None:
        guide = Path(__file__).resolve().parents[3] / "docs" / "profiles.md"
        rows = {
            line.split("|")[1].strip(" `"): line
            for line in guide.read_text(encoding="utf-8").splitlines()
            if line.startswith("| `MAX_")
        }
        names = [name for name in limits.__all__ if name.startswith("MAX_")]
        assert sorted(rows) == sorted(names)
        for name in names:
            assert f"| {getattr(limits, name):,}" in rows[name], name
