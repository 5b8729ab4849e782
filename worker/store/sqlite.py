"""The embedded store: one SQLite file in WAL mode, safe for several processes.

Each document is kept whole as JSON; the columns the queries need are generated
from it, so the document stays the single source of truth. Every change is one
conditional UPDATE, which SQLite applies atomically across processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from worker.errors import BadDocumentError, StoreUnavailableError
from worker.item import (
    LAST_ERROR,
    PROGRESS_AT,
    ErrorInfo,
    Item,
    Progress,
    claim_fields,
    finish_fields,
    format_time,
    item_or_none,
    utc_now,
)
from worker.store.base import Counts

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL DEFAULT 1,
    doc TEXT NOT NULL,
    state TEXT GENERATED ALWAYS AS (json_extract(doc, '$.state')) STORED,
    progress TEXT GENERATED ALWAYS AS (json_extract(doc, '$.progress')) STORED,
    claim_id TEXT GENERATED ALWAYS AS (json_extract(doc, '$.claimId')) STORED,
    lease_until TEXT GENERATED ALWAYS AS (json_extract(doc, '$.leaseUntil')) STORED
);
CREATE INDEX IF NOT EXISTS items_by_stage ON items (state, progress, id);
CREATE INDEX IF NOT EXISTS items_by_lease ON items (progress, lease_until)
    WHERE progress = 'InProgress';
"""

# json_set arguments for the fields a finish writes; lastError goes through json()
# so that it is stored as an object, not as a string.
FINISH_SQL = """
UPDATE items SET
    doc = json_set(doc, '$.progress', ?, '$.leaseUntil', NULL,
                   '$.progressChangedAt', ?, '$.lastError', json(?)),
    version = version + 1
WHERE id = ? AND progress = 'InProgress' AND claim_id = ?
"""


class SqliteStore:
    """Routing items in one SQLite file."""

    def __init__(self, path: str | Path, page_size: int = 200) -> None:
        self.path = Path(path)
        self.page_size = page_size
        self.description = f"SQLite file {str(self.path)!r}"
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: sqlite3.Connection | None = None
        self._fast: sqlite3.Connection | None = None
        self._lock: asyncio.Lock | None = None

    # Two connections: one on the event loop's thread that never waits for a
    # lock (almost every statement takes microseconds, and a thread hop would
    # cost more than the statement), and one on a thread of its own that waits
    # as long as needed when another process holds the write lock. A statement
    # refused as busy on the first is simply run again on the second.
    async def _run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        if self._lock is None or self._fast is None or self._executor is None:
            raise StoreUnavailableError(f"{self.description} is not open")
        async with self._lock:
            try:
                return function(self._fast)
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode & 0xFF not in (
                    sqlite3.SQLITE_BUSY,
                    sqlite3.SQLITE_LOCKED,
                ):
                    raise
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._wait_and_call, function)

    def _wait_and_call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        assert self._waiting is not None
        return function(self._waiting)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._waiting = await loop.run_in_executor(self._executor, self._connect)
            self._fast = sqlite3.connect(self.path, isolation_level=None, timeout=0)
            self._fast.execute("PRAGMA synchronous=NORMAL")
        except (sqlite3.Error, OSError) as error:
            await self.close()
            raise StoreUnavailableError(
                f"cannot open {self.description}: {error}. "
                "Set --store or WORKER_STORE to a writable file path."
            ) from error
        self._lock = asyncio.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise OSError(f"{str(self.path)!r} is a folder, not a file")
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(SCHEMA)
        return connection

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, waiting.close)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._lock = None

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _items(self, rows: Iterable[tuple[str, int, str]]) -> list[Item]:
        items = []
        for item_id, version, doc in rows:
            try:
                document = json.loads(doc)
            except ValueError as error:
                # Only a file edited by hand holds text that is not JSON.
                logger.warning(
                    "skipping item %r: its stored text is not JSON: %s",
                    item_id,
                    error,
                    extra={"action": "bad_document", "item_id": item_id},
                )
                continue
            item = item_or_none(document, str(version))
            if item is not None:
                items.append(item)
        return items

    async def _select(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        def select(connection: sqlite3.Connection) -> list[Any]:
            return connection.execute(sql, parameters).fetchall()

        return await self._run(select)

    async def _pages(self, where: str, parameters: tuple[Any, ...]) -> AsyncIterator[Item]:
        """Items matching ``where``, a page at a time, in id order (keyset paging)."""
        sql = f"SELECT id, version, doc FROM items WHERE {where} AND id > ? ORDER BY id LIMIT ?"
        after = ""
        while True:
            rows = await self._select(sql, (*parameters, after, self.page_size))
            for item in self._items(rows):
                yield item
            if len(rows) < self.page_size:
                return
            after = rows[-1][0]

    def ready_items(self, stage: str) -> AsyncIterator[Item]:
        return self._pages("state = ? AND progress = 'Ready'", (stage,))

    async def _update(self, sql: str, parameters: tuple[Any, ...]) -> int:
        """Run one UPDATE and return how many rows it changed."""

        def update(connection: sqlite3.Connection) -> int:
            return connection.execute(sql, parameters).rowcount

        return await self._run(update)

    async def claim(self, item: Item, owner: str, lease_seconds: float) -> Item | None:
        now = utc_now()
        fields = claim_fields(uuid.uuid4().hex, owner, now + timedelta(seconds=lease_seconds), now)
        document = {**item.document, **fields}
        # The version condition guarantees the stored document is the one we
        # read, so writing it whole with the claim fields loses nothing.
        changed = await self._update(
            "UPDATE items SET doc = ?, version = version + 1"
            " WHERE id = ? AND version = ? AND progress = 'Ready'",
            (json.dumps(document, ensure_ascii=False), item.id, _version(item)),
        )
        if changed != 1:
            return None
        return Item.from_document(document, str(_version(item) + 1))

    async def renew(self, item: Item, lease_seconds: float) -> Item | None:
        lease_until = format_time(utc_now() + timedelta(seconds=lease_seconds))
        rows = await self._select(
            "UPDATE items SET doc = json_set(doc, '$.leaseUntil', ?), version = version + 1"
            " WHERE id = ? AND progress = 'InProgress' AND claim_id = ?"
            " RETURNING id, version, doc",
            (lease_until, item.id, item.claim_id),
        )
        items = self._items(rows)
        return items[0] if items else None

    async def finish(self, item: Item, progress: Progress, error: ErrorInfo | None = None) -> bool:
        fields = finish_fields(progress, error, utc_now())
        changed = await self._update(FINISH_SQL, (*_finish_values(fields), item.id, item.claim_id))
        return changed == 1

    def expired_claims(self, now: datetime) -> AsyncIterator[Item]:
        return self._pages("progress = 'InProgress' AND lease_until < ?", (format_time(now),))

    async def fail_expired(self, item: Item, error: ErrorInfo, now: datetime) -> bool:
        fields = finish_fields(Progress.FAILED, error, now)
        changed = await self._update(
            FINISH_SQL + " AND lease_until < ?",
            (*_finish_values(fields), item.id, item.claim_id, format_time(now)),
        )
        return changed == 1

    async def add(self, documents: Iterable[Mapping[str, Any]]) -> int:
        rows = []
        for document in documents:
            item_id = document.get("id")
            if not isinstance(item_id, str) or not item_id:
                raise BadDocumentError(f"document has no string 'id' (got {item_id!r})")
            rows.append((item_id, json.dumps(document, ensure_ascii=False)))

        def insert(connection: sqlite3.Connection) -> int:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany("INSERT INTO items (id, doc) VALUES (?, ?)", rows)
            return len(rows)

        try:
            return await self._run(insert)
        except sqlite3.IntegrityError as error:
            raise BadDocumentError(f"cannot add items: {error} (ids must be new)") from error

    async def get(self, item_id: str) -> Item | None:
        rows = await self._select("SELECT id, version, doc FROM items WHERE id = ?", (item_id,))
        items = self._items(rows)
        return items[0] if items else None

    async def documents(self) -> list[dict[str, Any]]:
        """Every stored document, for tests and small inspections."""
        rows = await self._select("SELECT doc FROM items ORDER BY id", ())
        return [json.loads(row[0]) for row in rows]

    async def counts(self) -> Counts:
        rows = await self._select(
            "SELECT state, progress, count(*) FROM items GROUP BY state, progress", ()
        )
        counts: Counts = {}
        for state, progress, number in rows:
            stage = counts.setdefault(str(state), {p.value: 0 for p in Progress})
            stage[str(progress)] = number
        return counts

    async def delete(self, item_ids: Iterable[str]) -> int:
        ids = [(item_id,) for item_id in item_ids]

        def remove(connection: sqlite3.Connection) -> int:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                cursor = connection.executemany("DELETE FROM items WHERE id = ?", ids)
            return cursor.rowcount

        return await self._run(remove)


def _version(item: Item) -> int:
    try:
        return int(item.version)
    except ValueError:
        # A version from another store (an ETag) never matches a SQLite row.
        return -1


def _finish_values(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    return (fields["progress"], fields[PROGRESS_AT], json.dumps(fields[LAST_ERROR]))
