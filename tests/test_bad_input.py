"""Hostile and malformed input on both stores: the run goes on and nothing is lost."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, make_document
from tests.cosmos import TEST_KEY
from worker.runner import Worker
from worker.stages import Stage
from worker.store.base import Store

ROOT = Path(__file__).resolve().parent.parent


def recording(name: str) -> tuple[Stage, list[str]]:
    called: list[str] = []

    async def record(item: Any) -> None:
        called.append(item.id)

    return Stage(name, record, "record"), called


async def stored(store: Store) -> dict[str, dict[str, Any]]:
    return {doc["id"]: doc for doc in await store.documents()}  # type: ignore[attr-defined]


async def test_malformed_documents_are_left_alone_and_the_rest_is_processed(store: Store) -> None:
    sound = make_document("Upload")
    malformed = [
        {"id": "no-state", "progress": "Ready"},
        {"id": "no-progress", "state": "Upload"},
        {"id": "lower-case-progress", "state": "Upload", "progress": "ready"},
        {"id": "unknown-progress", "state": "Upload", "progress": "Done"},
        {"id": "numeric-progress", "state": "Upload", "progress": 42},
        {"id": "null-progress", "state": "Upload", "progress": None},
        {"id": "numeric-state", "state": 7, "progress": "Ready"},
        {"id": "list-state", "state": ["Upload"], "progress": "Ready"},
    ]
    await store.add([sound, *malformed])
    before = await stored(store)
    stage, called = recording("Upload")

    summary = await Worker(store, [stage]).run()

    after = await stored(store)
    assert called == [sound["id"]]
    assert summary.completed == 1
    for document in malformed:
        assert after[document["id"]] == before[document["id"]]


async def test_a_ready_item_whose_state_is_not_a_string_is_named_in_a_warning(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # Only SQLite compares a number with the text of a stage name as equal; on
    # Cosmos DB the query never returns the item. Either way it is left alone.
    document = {"id": "odd-state", "state": 2024, "progress": "Ready"}
    await backend.store.add([document])
    stage, called = recording("2024")
    caplog.set_level(logging.WARNING)

    await Worker(backend.store, [stage]).run()

    assert called == []
    assert (await stored(backend.store))["odd-state"] == document
    if backend.spec["kind"] == "sqlite":
        warned = [r for r in caplog.records if getattr(r, "action", "") == "bad_document"]
        assert [r.item_id for r in warned] == ["odd-state"]
        assert "no string 'state'" in warned[0].getMessage()


@pytest.mark.parametrize(
    "item_id",
    [
        'it\'s "quoted"',
        "x' OR '1'='1",
        "a; DROP TABLE items; --",
        "ünïcödé-✓-日本",
        "SELECT * FROM c WHERE 1=1",
    ],
)
async def test_ids_with_quotes_unicode_and_sql_are_plain_data(store: Store, item_id: str) -> None:
    bystander = make_document("Upload")
    await store.add([make_document("Upload", id=item_id), bystander])
    stage, called = recording("Upload")

    await Worker(store, [stage]).run()

    after = await stored(store)
    assert sorted(called) == sorted([item_id, bystander["id"]])
    assert after[item_id]["progress"] == "Completed"
    assert after[bystander["id"]]["progress"] == "Completed"


@pytest.mark.parametrize(
    "stage_name", ["Up'load", 'Up"load', "x' OR c.progress = 'Ready' --", "Étape-上传"]
)
async def test_stage_names_with_quotes_and_sql_match_only_themselves(
    store: Store, stage_name: str
) -> None:
    target = make_document(stage_name)
    other = make_document("Upload")
    await store.add([target, other])
    stage, called = recording(stage_name)

    await Worker(store, [stage]).run()

    after = await stored(store)
    assert called == [target["id"]]
    assert after[other["id"]]["progress"] == "Ready"
    assert (await store.counts())[stage_name]["Completed"] == 1


async def test_a_very_large_document_is_processed_and_kept_whole(store: Store) -> None:
    # 600 KB of payload: well inside Cosmos DB's 2 MB document limit.
    payload = {"blob": "x" * 600_000, "rows": [{"n": n, "text": "é" * 20} for n in range(2000)]}
    document = make_document("Upload", payload=payload)
    await store.add([document])
    stage, called = recording("Upload")

    await Worker(store, [stage]).run()

    after = (await stored(store))[document["id"]]
    assert called == [document["id"]]
    assert after["payload"] == payload
    assert after["progress"] == "Completed"


def test_a_run_with_a_key_never_shows_the_key(cosmos_backend: Backend) -> None:
    backend = cosmos_backend
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "COSMOS"))},
        **backend.environment,
        "PYTHONPATH": str(ROOT),
    }
    worker = [sys.executable, "-m", "worker", "--store", "cosmos", "-v"]
    missing_database = {**env, "COSMOS_DATABASE": "no-such-database"}
    wrong_endpoint = {**env, "COSMOS": env["COSMOS"].replace("https://", "http://")}

    results = [
        subprocess.run([*worker, *args], env=environment, capture_output=True, text=True)
        for args, environment in [
            (["seed", "--stage", "Upload", "--count", "3"], env),
            (["run"], env),
            (["status"], env),
            (["run"], missing_database),
            (["status"], wrong_endpoint),
        ]
    ]

    assert [r.returncode for r in results] == [0, 0, 0, 3, 3]
    for result in results:
        assert TEST_KEY not in result.stdout + result.stderr
        assert TEST_KEY[:12] not in result.stdout + result.stderr
