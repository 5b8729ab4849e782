"""The stage loop on a real SQLite file: claims, calls, outcomes, deadline, summary."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest

from tests.conftest import Calls, make_document
from worker.build import process_test_task
from worker.item import CLAIM_ID, CLAIMED_BY, LAST_ERROR, LEASE_UNTIL, PROGRESS_AT, Progress
from worker.runner import Worker
from worker.stages import build_stages, import_stage_package, parse_stage_map
from worker.store.sqlite import SqliteStore


def progress_of(documents: list[dict[str, Any]]) -> dict[str, str]:
    return {doc["id"]: doc["progress"] for doc in documents}


async def test_ready_items_become_completed_and_are_called_once(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any, calls: Calls
) -> None:
    documents = await seed(25)

    summary = await Worker(sqlite_store, [recording_stage()], concurrency=4).run()

    stored = await sqlite_store.documents()
    assert set(progress_of(stored).values()) == {"Completed"}
    assert calls.by_item == {doc["id"]: 1 for doc in documents}
    assert (summary.stages[0].claimed, summary.stages[0].completed) == (25, 25)


async def test_completed_item_records_worker_fields(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any
) -> None:
    [document] = await seed(1)

    await Worker(sqlite_store, [recording_stage()], owner="host:1:abc").run()

    stored = await sqlite_store.get(document["id"])
    assert stored is not None
    assert stored.document[CLAIMED_BY] == "host:1:abc"
    assert stored.document[CLAIM_ID]
    assert stored.document[LEASE_UNTIL] is None
    assert stored.document[LAST_ERROR] is None
    assert stored.document[PROGRESS_AT].endswith("Z")


async def test_failing_function_fails_only_its_item(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any
) -> None:
    documents = await seed(6)
    bad = documents[2]["id"]

    summary = await Worker(sqlite_store, [recording_stage(fail_ids=frozenset({bad}))]).run()

    stored = {doc["id"]: doc for doc in await sqlite_store.documents()}
    assert stored[bad]["progress"] == "Failed"
    assert stored[bad][LAST_ERROR] == {"type": "RuntimeError", "message": f"cannot process {bad}"}
    assert all(doc["progress"] == "Completed" for key, doc in stored.items() if key != bad)
    assert (summary.failed, summary.completed) == (1, 5)


async def test_plain_and_async_functions_both_run(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any, calls: Calls
) -> None:
    await seed(3, "Plain")
    await seed(3, "Async")
    stages = [recording_stage("Plain", is_async=False), recording_stage("Async")]

    summary = await Worker(sqlite_store, stages).run()

    assert [s.completed for s in summary.stages] == [3, 3]
    assert calls.total == 6


async def test_only_ready_items_of_the_configured_stage_are_touched(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any, calls: Calls
) -> None:
    ready = await seed(3, "Upload")
    others = [
        *await seed(2, "Upload", Progress.IN_PROGRESS),
        *await seed(2, "Upload", Progress.COMPLETED),
        *await seed(2, "Upload", Progress.FAILED),
        *await seed(2, "Initialize", Progress.READY),
    ]
    before = {doc["id"]: doc for doc in await sqlite_store.documents()}

    await Worker(sqlite_store, [recording_stage("Upload")], lease_seconds=3600).run()

    after = {doc["id"]: doc for doc in await sqlite_store.documents()}
    assert set(calls.by_item) == {doc["id"] for doc in ready}
    for doc in others:
        assert after[doc["id"]] == before[doc["id"]]


async def test_unknown_fields_state_and_retry_count_survive_a_run(
    sqlite_store: SqliteStore, recording_stage: Any
) -> None:
    document = make_document(
        "Upload",
        retryCount=2,
        payload={"nested": [1, 2.5, None, "ünïcode"]},
        owner="team-a",
    )
    await sqlite_store.add([document])

    await Worker(sqlite_store, [recording_stage()]).run()

    [stored] = await sqlite_store.documents()
    for key, value in document.items():
        if key != "progress":
            assert stored[key] == value
    assert stored["progress"] == "Completed"


async def test_parameters_from_the_stage_map_reach_the_function(
    sqlite_store: SqliteStore, seed: Any, calls: Calls
) -> None:
    [document] = await seed(1, "Upload")
    entries = parse_stage_map(
        '{"Upload": {"function": "tests.stage_functions:record_upload",'
        ' "kwargs": {"timeout": 30, "retry_count": 5}}}'
    )
    stages, skipped = build_stages(["Upload"], entries)

    await Worker(sqlite_store, stages).run()

    from tests import stage_functions

    assert skipped == {}
    assert stage_functions.received[document["id"]] == {"timeout": 30, "retry_count": 5}


async def test_unmapped_stage_and_missing_function_are_skipped_with_a_warning(
    sqlite_store: SqliteStore, seed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import_stage_package()
    await seed(2, "Initialize")
    await seed(2, "Nowhere")
    await seed(2, "Broken")
    entries = parse_stage_map('{"Broken": "no_such_function"}')
    stages, skipped = build_stages(["Nowhere", "Broken", "Initialize"], entries)
    caplog.set_level(logging.WARNING)

    summary = await Worker(sqlite_store, stages, skipped=skipped).run()

    counts = await sqlite_store.counts()
    assert counts["Initialize"]["Completed"] == 2
    assert counts["Nowhere"]["Ready"] == 2
    assert counts["Broken"]["Ready"] == 2
    warned = {r.stage for r in caplog.records if getattr(r, "action", "") == "stage_skipped"}
    assert warned == {"Nowhere", "Broken"}
    assert "no_such_function" in str(skipped["Broken"])
    assert [s.stage for s in summary.stages] == ["Initialize", "Nowhere", "Broken"]


async def test_stage_map_kwargs_the_function_refuses_skip_the_stage(
    sqlite_store: SqliteStore, seed: Any
) -> None:
    import_stage_package()
    await seed(1, "Upload")
    entries = parse_stage_map('{"Upload": {"function": "upload", "kwargs": {"speed": 3}}}')

    stages, skipped = build_stages(["Upload"], entries)

    assert stages == []
    assert "speed" in skipped["Upload"]


async def test_several_stages_run_in_one_run(sqlite_store: SqliteStore, seed: Any) -> None:
    import_stage_package()
    for stage in ("Initialize", "SetReadOnly", "Upload"):
        await seed(3, stage)
    await seed(1, "Upload", simulateFailure="disk full")
    stages, _ = build_stages(["Initialize", "SetReadOnly", "Upload"], {})

    summary = await Worker(sqlite_store, stages).run()

    counts = await sqlite_store.counts()
    assert counts["Initialize"]["Completed"] == 3
    assert counts["SetReadOnly"]["Completed"] == 3
    assert (counts["Upload"]["Completed"], counts["Upload"]["Failed"]) == (3, 1)
    assert [(s.stage, s.claimed) for s in summary.stages] == [
        ("Initialize", 3),
        ("SetReadOnly", 3),
        ("Upload", 4),
    ]


async def test_slow_item_does_not_hold_up_the_others(
    sqlite_store: SqliteStore, seed: Any, calls: Calls
) -> None:
    documents = await seed(9)
    slow = documents[0]["id"]
    finished: dict[str, float] = {}
    started = time.monotonic()

    async def function(item: Any) -> None:
        import asyncio

        await asyncio.sleep(1.0 if item.id == slow else 0.05)
        finished[item.id] = time.monotonic() - started

    from worker.stages import Stage

    await Worker(sqlite_store, [Stage("Upload", function, "f")], concurrency=3).run()

    fast = [seconds for key, seconds in finished.items() if key != slow]
    assert max(fast) < 0.8 < finished[slow]


async def test_deadline_stops_claiming_and_leaves_the_rest_ready(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any, calls: Calls
) -> None:
    await seed(40)
    deadline = time.monotonic() + 0.5

    summary = await Worker(sqlite_store, [recording_stage(sleep=0.2)], concurrency=2).run(deadline)

    counts = (await sqlite_store.counts())["Upload"]
    assert summary.stopped == "deadline reached"
    assert counts["InProgress"] == 0
    assert 0 < counts["Completed"] == calls.total < 40
    assert counts["Ready"] == 40 - calls.total


async def test_deadline_reserves_the_stage_timeout(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any, calls: Calls
) -> None:
    await seed(5)
    stage = recording_stage()
    from dataclasses import replace

    summary = await Worker(sqlite_store, [replace(stage, timeout=60.0)]).run(time.monotonic() + 30)

    assert calls.total == 0
    assert summary.stopped == "deadline reached"


async def test_each_outcome_and_each_stage_is_logged_with_stable_fields(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    documents = await seed(2)
    caplog.set_level(logging.INFO)

    await Worker(sqlite_store, [recording_stage(fail_ids=frozenset({documents[0]["id"]}))]).run()

    actions = [(getattr(r, "action", None), getattr(r, "item_id", None)) for r in caplog.records]
    assert ("item_failed", documents[0]["id"]) in actions
    assert ("item_completed", documents[1]["id"]) in actions
    assert sum(1 for action, _ in actions if action == "stage_finished") == 1
    assert sum(1 for action, _ in actions if action == "run_finished") == 1
    # The README's Application Insights queries parse these messages.
    messages = [r.getMessage() for r in caplog.records]
    item_pattern = r"item (\S+) of stage Upload (completed|failed) in \d+ ms(: .+)?$"
    assert sum(1 for m in messages if re.match(item_pattern, m)) == 2
    assert any(m.startswith("stage Upload: 2 claimed") for m in messages)
    assert any(m.startswith("run finished in ") for m in messages)


async def test_process_test_task_processes_every_ready_test_task_item(
    sqlite_store: SqliteStore, seed: Any
) -> None:
    await seed(20, "TestTask")
    await seed(3, "Upload")

    summary = await process_test_task(sqlite_store, concurrency=20, sleep=0.01, failure_rate=0.5)

    counts = await sqlite_store.counts()
    assert summary.claimed == 20
    assert counts["TestTask"]["Ready"] == 0
    assert counts["TestTask"]["Completed"] + counts["TestTask"]["Failed"] == 20
    assert counts["Upload"]["Ready"] == 3


async def test_expired_claim_is_recovered_as_failed_with_its_holder(
    sqlite_store: SqliteStore, seed: Any
) -> None:
    [document] = await seed(1)
    item = await sqlite_store.get(document["id"])
    assert item is not None
    await sqlite_store.claim(item, "dead-host:7:x", lease_seconds=0.01)
    time.sleep(0.05)

    summary = await Worker(sqlite_store, []).run()

    stored = await sqlite_store.get(document["id"])
    assert stored is not None and stored.progress is Progress.FAILED
    assert summary.recovered == 1
    assert stored.document[LAST_ERROR]["type"] == "LeaseExpired"
    assert "dead-host:7:x" in stored.document[LAST_ERROR]["message"]


async def test_a_function_that_changes_the_item_fails_and_changes_nothing(
    sqlite_store: SqliteStore, seed: Any
) -> None:
    await seed(1)

    def meddle(item: Any) -> None:
        item.document["state"] = "Elsewhere"

    from worker.stages import Stage

    await Worker(sqlite_store, [Stage("Upload", meddle, "meddle")]).run()

    [stored] = await sqlite_store.documents()
    assert stored["state"] == "Upload"
    assert stored["progress"] == "Failed"
    assert stored[LAST_ERROR]["type"] == "TypeError"
