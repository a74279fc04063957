"""A backend written outside the kit: one module plus one registration line
(tests/examples/sharded_store.py, the example of docs/writing-a-backend.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrakit import ConfigError, Infra, load_settings, register_backend, registry
from infrakit.cli import main as cli
from infrakit.settings.reference import render_reference
from infrakit.testing.contracts import MakeStore, TokenStoreContract
from tests.examples.sharded_store import ShardedTokenSettings, ShardedTokenStore


@pytest.fixture
def sharded() -> Iterator[None]:
    register_backend("tokens", "sharded", "tests.examples.sharded_store:BACKEND")  # the one line
    yield
    registry.unregister_backend("tokens", "sharded")


PROFILE = """
tokens:
  backend: sharded
  shards: {shards}
  signing_secret: sup3r-s3cret-value
"""


def write(tmp_path: Path, shards: object) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE.format(shards=shards), encoding="utf-8")
    return str(path)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli(argv)
    out, err = capsys.readouterr()
    return code, out + err


class TestTheNewBackendIsAFirstClassCitizen:
    """Its keys are validated, masked, tracked and documented like the kit's own."""

    def test_validated(
        self, sharded: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert run(["config", "validate", write(tmp_path, 4)], capsys)[0] == 0
        code, text = run(["config", "validate", write(tmp_path, 0)], capsys)
        assert code == 1
        assert "p.yaml:4:3: tokens.shards: Input should be greater than or equal to 1" in text

    def test_a_key_of_the_memory_store_is_refused_naming_its_backend(
        self, sharded: None, tmp_path: Path
    ) -> None:
        path = tmp_path / "p.yaml"
        path.write_text("tokens: {backend: sharded, max_entries: 5}\n", encoding="utf-8")
        message = r"tokens\.max_entries: not a key of the tokens backend 'sharded': it belongs"
        with pytest.raises(ConfigError, match=message + " to 'memory'"):
            load_settings(str(path), environ={})

    def test_masked_and_tracked_in_config_show(
        self, sharded: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, text = run(["config", "show", write(tmp_path, 8), "--format", "json"], capsys)
        assert code == 0
        shown = json.loads(text)["tokens"]
        assert shown["shards"] == 8
        assert shown["signing_secret"] == "**********"
        code, text = run(["config", "show", write(tmp_path, 8), "--sources"], capsys)
        assert "sup3r" not in text
        assert "tokens.shards" in text
        assert "p.yaml:4:3" in text

    def test_in_the_schema_and_the_reference(
        self, sharded: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        reference = render_reference()
        assert "### `tokens.backend: sharded`" in reference
        assert "`tokens.shards`" in reference
        code, text = run(["config", "schema"], capsys)
        assert code == 0
        assert "ShardedTokenSettings" in text

    async def test_built_started_and_checked(self, sharded: None, tmp_path: Path) -> None:
        settings = load_settings(write(tmp_path, 3), environ={})
        async with Infra(settings) as infra:
            store = infra.tokens
            assert isinstance(store, ShardedTokenStore)
            assert store.settings.shards == 3
            assert (await infra.health()).ok


class TestTheContractHolds(TokenStoreContract):
    """The kit's contract suite runs on the new backend unchanged."""

    @pytest.fixture
    def make_store(self) -> MakeStore:
        async def make() -> ShardedTokenStore:
            return ShardedTokenStore(ShardedTokenSettings(shards=4, max_lifetime_s=86_400))

        return make
