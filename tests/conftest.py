"""Shared fixtures: real SQLite files, item factories and stages that record calls."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from worker.item import Item, Progress
from worker.stages import Stage
from worker.store.base import Store
from worker.store.sqlite import SqliteStore

# A real Cosmos DB-compatible server over HTTPS, started once per session.
pytest_plugins = ["tests.cosmos_fixtures"]


def make_document(
    state: str = "Upload", progress: Progress = Progress.READY, **fields: Any
) -> dict[str, Any]:
    """A routing item document with a fresh id; ``fields`` add or override."""
    document: dict[str, Any] = {
        "id": f"item-{uuid.uuid4().hex[:10]}",
        "state": state,
        "progress": progress.value,
        "retryCount": 0,
    }
    document.update(fields)
    return document


class Calls:
    """Records every stage-function call, outside any store, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_item: Counter[str] = Counter()
        self.kwargs: dict[str, dict[str, Any]] = {}

    def record(self, item: Item, kwargs: dict[str, Any]) -> None:
        with self._lock:
            self.by_item[item.id] += 1
            self.kwargs[item.id] = kwargs

    @property
    def total(self) -> int:
        return sum(self.by_item.values())


@pytest.fixture(autouse=True)
async def close_shared_stores() -> AsyncIterator[None]:
    """Close the stores the Functions handlers opened and share on the test's loop."""
    yield
    from worker import functions

    await functions.close_shared_stores()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def recording_stage(calls: Calls) -> Callable[..., Stage]:
    """Build a stage whose function records its calls and can sleep or fail."""

    def build(
        name: str = "Upload",
        *,
        sleep: float = 0.0,
        fail_ids: frozenset[str] = frozenset(),
        is_async: bool = True,
        **kwargs: Any,
    ) -> Stage:
        if is_async:

            async def function(item: Item, **options: Any) -> None:
                calls.record(item, options)
                await asyncio.sleep(sleep)
                if item.id in fail_ids:
                    raise RuntimeError(f"cannot process {item.id}")
        else:
            import time

            def function(item: Item, **options: Any) -> None:  # type: ignore[misc]
                calls.record(item, options)
                time.sleep(sleep)
                if item.id in fail_ids:
                    raise RuntimeError(f"cannot process {item.id}")

        return Stage(name, function, f"record_{name.lower()}", kwargs)

    return build


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "items.db"


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(db_path)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def seed(sqlite_store: SqliteStore) -> Callable[..., Awaitable[list[dict[str, Any]]]]:
    """Add ``count`` documents of a stage to the SQLite store and return them."""

    async def add(count: int, *args: Any, **fields: Any) -> list[dict[str, Any]]:
        return await add_items(sqlite_store, count, *args, **fields)

    return add


# ---------------------------------------------------------------- both stores

#: Page size of the stores the contract and fault suites use: small, so that
#: paging happens with few items.
PAGE_SIZE = 10


@dataclasses.dataclass
class Backend:
    store: Store
    #: how another process opens the same store (see CLAIM_SCRIPT)
    spec: dict[str, Any]

    @property
    def store_option(self) -> str:
        """The value of the command line's ``--store`` for this store."""
        return str(self.spec["path"]) if self.spec["kind"] == "sqlite" else "cosmos"

    @property
    def environment(self) -> dict[str, str]:
        """Settings a process needs, beyond ``--store``, to open this store."""
        return dict(self.spec.get("env", {}))


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    path = tmp_path / "contract.db"
    async with SqliteStore(path, page_size=PAGE_SIZE) as opened:
        yield Backend(opened, {"kind": "sqlite", "path": str(path)})


@pytest.fixture
async def cosmos_backend(cosmos_store_factory: Any) -> Backend:
    cosmos_store = await cosmos_store_factory(COSMOS_PAGE_SIZE=str(PAGE_SIZE))
    settings = cosmos_store.settings
    environment = {
        "COSMOS": f"AccountEndpoint={settings.endpoint};AccountKey={settings.key};",
        "COSMOS_VERIFY_TLS": "false",
        "COSMOS_DATABASE": settings.database,
    }
    return Backend(cosmos_store, {"kind": "cosmos", "env": environment})


@pytest.fixture(params=["sqlite", "cosmos"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The same store contract on each store."""
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


async def add_items(
    store: Store,
    count: int,
    state: str = "Upload",
    progress: Progress = Progress.READY,
    **fields: Any,
) -> list[dict[str, Any]]:
    """Add ``count`` documents of a stage to any store and return them."""
    documents = [make_document(state, progress, **fields) for _ in range(count)]
    await store.add(documents)
    return documents
