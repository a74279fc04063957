"""The token store contract on the in-memory backend (Redis: tests/integration)."""

from __future__ import annotations

import pytest

from infrakit.testing.contracts import MakeStore, TokenStoreContract
from infrakit.tokens import InMemoryTokenStore


class TestInMemoryTokenStore(TokenStoreContract):
    """InMemoryTokenStore keeps the contract."""

    @pytest.fixture
    def make_store(self) -> MakeStore:
        async def make() -> InMemoryTokenStore:
            return InMemoryTokenStore(max_entries=10_000, max_lifetime_s=86_400)

        return make
