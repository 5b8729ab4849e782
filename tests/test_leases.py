"""Lease renewal from one task per worker, on a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.conftest import add_items
from worker.leases import LeaseKeeper
from worker.store.sqlite import SqliteStore


async def claimed(store: SqliteStore, lease: float) -> Any:
    [document] = await add_items(store, 1)
    item = await store.get(document["id"])
    assert item is not None
    result = await store.claim(item, "keeper-test", lease)
    assert result is not None
    return result


async def test_a_short_lease_held_after_a_long_one_is_renewed_on_time(
    sqlite_store: SqliteStore,
) -> None:
    keeper = LeaseKeeper(sqlite_store)
    long_held = keeper.hold(await claimed(sqlite_store, 60), 60)
    short = await claimed(sqlite_store, 0.3)
    short_held = keeper.hold(short, 0.3)

    await asyncio.sleep(0.45)

    latest = await keeper.release(short_held)
    await keeper.release(long_held)
    await keeper.close()
    assert latest.lease_until > short.lease_until
    assert latest.version != short.version


async def test_released_claims_are_no_longer_renewed(sqlite_store: SqliteStore) -> None:
    keeper = LeaseKeeper(sqlite_store)
    item = await claimed(sqlite_store, 0.2)
    held = keeper.hold(item, 0.2)
    await keeper.release(held)

    await asyncio.sleep(0.3)

    stored = await sqlite_store.get(item.id)
    await keeper.close()
    assert stored is not None and stored.lease_until == item.lease_until


async def test_a_claim_taken_away_is_dropped_with_a_warning(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.item import ErrorInfo, utc_now

    keeper = LeaseKeeper(sqlite_store)
    item = await claimed(sqlite_store, 0.15)
    caplog.set_level(logging.WARNING)
    await asyncio.sleep(0.02)
    # Another worker's recovery takes the claim away before the first renewal.
    await sqlite_store.fail_expired(
        item, ErrorInfo("LeaseExpired", "x"), utc_now().replace(year=2100)
    )
    held = keeper.hold(item, 0.15)

    await asyncio.sleep(0.1)

    await keeper.release(held)
    await keeper.close()
    assert [r.item_id for r in caplog.records if getattr(r, "action", "") == "claim_taken"] == [
        item.id
    ]
