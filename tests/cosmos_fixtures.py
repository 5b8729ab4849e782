"""Pytest plugin: fixtures for the Cosmos DB store on the local test server.

Loaded from tests/conftest.py with ``pytest_plugins = ["tests.cosmos_fixtures"]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.cosmos import (
    REAL_SKIP_REASON,
    TestServer,
    real_environment,
    server_environment,
    unique_name,
)
from worker.store.cosmos import CosmosStore

StoreFactory = Callable[..., Awaitable[CosmosStore]]


@pytest.fixture(scope="session")
def cosmos_server() -> Iterator[TestServer]:
    """The test server, installed with npm ci if needed, for the whole session."""
    with TestServer() as server:
        yield server


@pytest.fixture
async def cosmos_store_factory(cosmos_server: TestServer) -> AsyncIterator[StoreFactory]:
    """Build opened stores, each on a database of its own; all are deleted afterwards.

    Keyword arguments are extra settings, such as ``COSMOS_PAGE_SIZE="10"``.
    """
    stores: list[CosmosStore] = []

    async def make(**settings: str) -> CosmosStore:
        database = settings.pop("COSMOS_DATABASE", None) or unique_name("db")
        environment = server_environment(cosmos_server.endpoint, database, **settings)
        store = CosmosStore.from_environment(environment)
        await store.create_resources()
        await store.open()
        stores.append(store)
        return store

    yield make

    for store in stores:
        if store.is_open:
            await store.delete_database()
        await store.close()


@pytest.fixture
async def cosmos_store(cosmos_store_factory: StoreFactory) -> CosmosStore:
    """An opened store on a fresh database of the test server."""
    return await cosmos_store_factory()


@pytest.fixture
def cosmos_environment(cosmos_server: TestServer) -> dict[str, str]:
    """Settings for a fresh (not yet created) database on the test server."""
    return server_environment(cosmos_server.endpoint, unique_name("db"))


@pytest.fixture
def real_cosmos_environment() -> dict[str, str]:
    """Settings for a real account or emulator; the test is skipped without one."""
    environment = real_environment()
    if environment is None:
        pytest.skip(REAL_SKIP_REASON)
    return environment


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Say why the real-account tests did not run even without -rs.
    skipped = terminalreporter.stats.get("skipped", [])
    if any(REAL_SKIP_REASON in str(getattr(report, "longrepr", "")) for report in skipped):
        terminalreporter.write_line(f"real Cosmos DB tests skipped: {REAL_SKIP_REASON}")
