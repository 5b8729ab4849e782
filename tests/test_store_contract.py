"""The store contract, one suite run against SQLite and against the Cosmos DB test server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend
from worker.errors import BadDocumentError
from worker.item import CLAIM_ID, LAST_ERROR, WORKER_FIELDS, ErrorInfo, Item, Progress, utc_now
from worker.store.base import Store
from worker.store.cosmos import CosmosStore
from worker.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
PAGE_SIZE = 10


def document(
    state: str = "Upload", progress: Progress = Progress.READY, **fields: Any
) -> dict[str, Any]:
    return {
        "id": f"item-{uuid.uuid4().hex[:12]}",
        "state": state,
        "progress": progress.value,
        "retryCount": 0,
        **fields,
    }


async def added(store: Store, *documents: dict[str, Any]) -> list[Item]:
    await store.add(documents)
    items = [await store.get(d["id"]) for d in documents]
    assert all(item is not None for item in items)
    return [item for item in items if item is not None]


async def touch(store: Store, item_id: str, **fields: Any) -> None:
    """Another writer (the routing component, say) changes fields of an item."""
    if isinstance(store, CosmosStore):
        current = await store.container.read_item(item_id, partition_key=item_id)
        await store.container.replace_item(item_id, {**current, **fields})
        return
    assert isinstance(store, SqliteStore)
    with sqlite3.connect(store.path, timeout=30) as connection:
        connection.execute(
            "UPDATE items SET doc = json_patch(doc, ?), version = version + 1 WHERE id = ?",
            (json.dumps(fields), item_id),
        )
    connection.close()


async def stored(store: Store, item_id: str) -> dict[str, Any]:
    item = await store.get(item_id)
    assert item is not None
    return dict(item.document)


# ---------------------------------------------------------------- reading


async def test_ready_items_pages_through_every_ready_item_of_the_stage_once(
    store: Store,
) -> None:
    ready = [document("Upload") for _ in range(3 * PAGE_SIZE + 3)]
    others = [
        document("Initialize"),
        document("Upload", Progress.IN_PROGRESS),
        document("Upload", Progress.COMPLETED),
        document("Upload", Progress.FAILED),
    ]
    await store.add(ready + others)

    seen = [item.id async for item in store.ready_items("Upload")]

    assert sorted(seen) == sorted(d["id"] for d in ready)


async def test_ready_items_treats_the_stage_name_as_data(store: Store) -> None:
    await store.add([document("Upload"), document("it's' OR 1=1 --")])

    tricky = [item.state async for item in store.ready_items("it's' OR 1=1 --")]
    none = [item async for item in store.ready_items("Upload' OR c.state != '")]

    assert tricky == ["it's' OR 1=1 --"]
    assert none == []


async def test_get_returns_the_whole_document_and_none_for_an_unknown_id(store: Store) -> None:
    original = document(extra={"nested": [1, 2]}, note="kept")
    await store.add([original])

    item = await store.get(original["id"])
    missing = await store.get("no-such-item")

    assert item is not None and dict(item.document) == original
    assert item.progress is Progress.READY and item.version
    assert missing is None


# ---------------------------------------------------------------- claims


async def test_claim_moves_the_item_to_in_progress_with_a_new_version(store: Store) -> None:
    [item] = await added(store, document())

    claimed = await store.claim(item, "worker-a", lease_seconds=60)

    assert claimed is not None
    assert claimed.progress is Progress.IN_PROGRESS
    assert claimed.claim_id and claimed.claimed_by == "worker-a"
    assert (
        claimed.lease_until is not None
        and claimed.lease_until > claimed.document["progressChangedAt"]
    )
    assert claimed.version != item.version
    assert await stored(store, item.id) == dict(claimed.document)


async def test_claim_of_a_changed_item_is_refused(store: Store) -> None:
    [item] = await added(store, document())
    await touch(store, item.id, note="changed by someone else")

    assert await store.claim(item, "worker-a", 60) is None
    assert (await stored(store, item.id))["progress"] == "Ready"


async def test_twenty_concurrent_claims_of_one_item_have_one_winner(store: Store) -> None:
    [item] = await added(store, document())

    results = await asyncio.gather(*(store.claim(item, f"w{i}", 60) for i in range(20)))

    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert (await stored(store, item.id))[CLAIM_ID] == winners[0].claim_id


CLAIM_SCRIPT = """
import asyncio, json, sys
from worker.store.cosmos import CosmosStore
from worker.store.sqlite import SqliteStore

spec = json.loads(sys.argv[1])

async def main():
    if spec["kind"] == "sqlite":
        store = SqliteStore(spec["path"])
    else:
        store = CosmosStore.from_environment(spec["env"])
    async with store:
        items = [item async for item in store.ready_items(spec["stage"])]
        print(len(items), flush=True)
        sys.stdin.readline()
        results = await asyncio.gather(*(store.claim(i, spec["owner"], 60) for i in items))
        print(json.dumps([r.id for r in results if r is not None]), flush=True)

asyncio.run(main())
"""


async def test_two_processes_claiming_the_same_items_claim_each_once(
    backend: Backend,
) -> None:
    documents = [document("Race") for _ in range(50)]
    await backend.store.add(documents)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLAIM_SCRIPT,
                json.dumps({**backend.spec, "stage": "Race", "owner": f"process-{n}"}),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]

    # Both list the 50 Ready items first, then claim all of them at once.
    seen = [await asyncio.to_thread(p.stdout.readline) for p in processes]  # type: ignore[union-attr]
    for process in processes:
        process.stdin.write("go\n")  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
    outputs = [await asyncio.to_thread(p.communicate, None, 60) for p in processes]

    assert [int(line) for line in seen] == [50, 50]
    won = [set(json.loads(out)) for out, _ in outputs]
    assert won[0] | won[1] == {d["id"] for d in documents}
    assert not won[0] & won[1]
    for n, ids in enumerate(won):
        for item_id in ids:
            assert (await stored(backend.store, item_id))["claimedBy"] == f"process-{n}"


def open_store(spec: dict[str, Any]) -> Store:
    """A second store on the same data, as another worker would open it."""
    if spec["kind"] == "sqlite":
        return SqliteStore(spec["path"])
    return CosmosStore.from_environment(spec["env"])


async def test_workers_on_threads_claim_each_item_once(backend: Backend) -> None:
    documents = [document("Threads") for _ in range(30)]
    await backend.store.add(documents)
    listed = [item async for item in backend.store.ready_items("Threads")]
    start = threading.Barrier(4)

    def claim_all(owner: str) -> list[str]:
        async def run() -> list[str]:
            store = open_store(backend.spec)
            await store.open()
            try:
                start.wait(timeout=30)
                results = await asyncio.gather(*(store.claim(i, owner, 60) for i in listed))
            finally:
                await store.close()
            return [result.id for result in results if result is not None]

        return asyncio.run(run())

    won = await asyncio.gather(*(asyncio.to_thread(claim_all, f"t{n}") for n in range(4)))

    claimed = [item_id for ids in won for item_id in ids]
    assert sorted(claimed) == sorted(d["id"] for d in documents)


# ---------------------------------------------------------------- finishing


async def test_claim_and_finish_keep_every_field_the_worker_does_not_own(store: Store) -> None:
    original = document(
        "Upload", retryCount=2, routing={"next": "Done", "tags": ["a", "b"]}, _private=1
    )
    [item] = await added(store, original)

    claimed = await store.claim(item, "worker-a", 60)
    assert claimed is not None
    recorded = await store.finish(claimed, Progress.FAILED, ErrorInfo("ValueError", "bad size"))

    assert recorded is True
    final = await stored(store, item.id)
    assert {k: v for k, v in final.items() if k not in WORKER_FIELDS} == {
        **original,
        "progress": "Failed",
    }
    assert final[LAST_ERROR] == {"type": "ValueError", "message": "bad size"}
    assert final["leaseUntil"] is None and final[CLAIM_ID] == claimed.claim_id


async def test_finish_keeps_a_field_another_writer_changed_meanwhile(store: Store) -> None:
    [item] = await added(store, document())
    claimed = await store.claim(item, "worker-a", 60)
    assert claimed is not None
    await touch(store, item.id, note="written during the call", retryCount=5)

    recorded = await store.finish(claimed, Progress.COMPLETED)

    final = await stored(store, item.id)
    assert recorded is True
    assert final["progress"] == "Completed"
    assert final["note"] == "written during the call" and final["retryCount"] == 5


async def test_finish_without_the_claim_is_refused(store: Store) -> None:
    [item] = await added(store, document())
    claimed = await store.claim(item, "worker-a", 60)
    assert claimed is not None
    await touch(store, item.id, claimId="taken-by-another-worker")

    recorded = await store.finish(claimed, Progress.COMPLETED)

    final = await stored(store, item.id)
    assert recorded is False
    assert final["progress"] == "InProgress" and final[CLAIM_ID] == "taken-by-another-worker"


async def test_finish_twice_is_refused_the_second_time(store: Store) -> None:
    [item] = await added(store, document())
    claimed = await store.claim(item, "worker-a", 60)
    assert claimed is not None

    first = await store.finish(claimed, Progress.COMPLETED)
    second = await store.finish(claimed, Progress.FAILED, ErrorInfo("E", "late"))

    assert (first, second) == (True, False)
    assert (await stored(store, item.id))["progress"] == "Completed"


async def test_finish_of_an_unclaimed_item_is_refused(store: Store) -> None:
    [item] = await added(store, document())

    assert await store.finish(item, Progress.COMPLETED) is False
    assert (await stored(store, item.id))["progress"] == "Ready"


# ---------------------------------------------------------------- leases


async def test_renew_extends_the_lease_of_a_claim_still_held(store: Store) -> None:
    [item] = await added(store, document())
    claimed = await store.claim(item, "worker-a", 1)
    assert claimed is not None

    renewed = await store.renew(claimed, 600)

    assert renewed is not None
    assert renewed.lease_until is not None and claimed.lease_until is not None
    assert renewed.lease_until > claimed.lease_until
    assert renewed.claim_id == claimed.claim_id and renewed.version != claimed.version
    assert await store.finish(renewed, Progress.COMPLETED) is True


async def test_finish_with_the_version_before_a_renewal_still_succeeds(store: Store) -> None:
    [item] = await added(store, document())
    claimed = await store.claim(item, "worker-a", 60)
    assert claimed is not None
    assert await store.renew(claimed, 600) is not None

    assert await store.finish(claimed, Progress.COMPLETED) is True


async def test_renew_of_a_claim_taken_away_is_refused(store: Store) -> None:
    [item] = await added(store, document())
    claimed = await store.claim(item, "worker-a", 60)
    assert claimed is not None
    await touch(store, item.id, claimId="someone-else")

    assert await store.renew(claimed, 600) is None


async def test_expired_claims_are_listed_and_failed_once(store: Store) -> None:
    expired_doc, live_doc, ready_doc = document(), document(), document()
    expired, live, _ = await added(store, expired_doc, live_doc, ready_doc)
    await store.claim(expired, "gone-worker", lease_seconds=-60)
    await store.claim(live, "live-worker", lease_seconds=600)
    now = utc_now()

    listed = [item async for item in store.expired_claims(now)]
    assert [item.id for item in listed] == [expired.id]
    failed = await store.fail_expired(listed[0], ErrorInfo("LeaseExpired", "lease expired"), now)
    again = await store.fail_expired(listed[0], ErrorInfo("LeaseExpired", "lease expired"), now)

    assert (failed, again) == (True, False)
    final = await stored(store, expired.id)
    assert final["progress"] == "Failed"
    assert final[LAST_ERROR] == {"type": "LeaseExpired", "message": "lease expired"}
    assert (await stored(store, live.id))["progress"] == "InProgress"


async def test_recovery_never_overwrites_a_finish_that_landed_first(store: Store) -> None:
    [item] = await added(store, document())
    claimed = await store.claim(item, "slow-worker", lease_seconds=-1)
    assert claimed is not None
    now = utc_now()
    [expired] = [listed async for listed in store.expired_claims(now)]

    assert await store.finish(claimed, Progress.COMPLETED) is True
    assert await store.fail_expired(expired, ErrorInfo("LeaseExpired", "late"), now) is False
    assert (await stored(store, item.id))["progress"] == "Completed"


async def test_recovery_spares_a_claim_renewed_meanwhile(store: Store) -> None:
    [item] = await added(store, document())
    claimed = await store.claim(item, "worker-a", lease_seconds=-1)
    assert claimed is not None
    now = utc_now()
    [expired] = [listed async for listed in store.expired_claims(now)]

    assert await store.renew(claimed, 600) is not None
    assert await store.fail_expired(expired, ErrorInfo("LeaseExpired", "x"), now) is False
    assert (await stored(store, item.id))["progress"] == "InProgress"
    later = now + timedelta(seconds=1)
    assert [i async for i in store.expired_claims(later)] == []


# ---------------------------------------------------------------- bookkeeping


async def test_counts_by_stage_and_progress(store: Store) -> None:
    await store.add(
        [document("Upload") for _ in range(3)]
        + [document("Upload", Progress.FAILED)]
        + [document("Initialize", Progress.COMPLETED) for _ in range(2)]
    )

    counts = await store.counts()

    assert counts == {
        "Upload": {"Ready": 3, "InProgress": 0, "Completed": 0, "Failed": 1},
        "Initialize": {"Ready": 0, "InProgress": 0, "Completed": 2, "Failed": 0},
    }


async def test_counts_of_an_empty_store(store: Store) -> None:
    assert await store.counts() == {}


async def test_add_returns_how_many_and_refuses_bad_or_repeated_ids(store: Store) -> None:
    documents = [document() for _ in range(25)]

    assert await store.add(documents) == 25
    with pytest.raises(BadDocumentError):
        await store.add([{"state": "Upload", "progress": "Ready"}])
    with pytest.raises(BadDocumentError):
        await store.add([documents[0]])
    assert (await store.counts())["Upload"]["Ready"] == 25


async def test_delete_removes_items_and_counts_only_those_that_existed(store: Store) -> None:
    kept, *gone = [document() for _ in range(4)]
    await store.add([kept, *gone])

    deleted = await store.delete([d["id"] for d in gone] + ["never-existed"])

    assert deleted == 3
    assert [await store.get(d["id"]) for d in gone] == [None, None, None]
    assert await store.get(kept["id"]) is not None


async def test_documents_that_are_not_items_are_logged_and_passed_over(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    broken = document("Upload", Progress.IN_PROGRESS, leaseUntil="2000-01-01T00:00:00.000Z")
    del broken["state"]
    sound = document("Upload", Progress.IN_PROGRESS, leaseUntil="2000-01-01T00:00:00.000Z")
    await store.add([broken, sound])

    listed = [item.id async for item in store.expired_claims(utc_now())]

    assert listed == [sound["id"]]
    assert [r.item_id for r in caplog.records if getattr(r, "action", "") == "bad_document"] == [
        broken["id"]
    ]
