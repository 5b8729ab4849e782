"""Faults on the SQLite store: hangs, interrupts, signals, crashes and lost leases."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Calls
from worker.item import LAST_ERROR, ErrorInfo, Progress, utc_now
from worker.runner import Worker
from worker.stages import Stage
from worker.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
RECORDER = str(ROOT / "tests" / "recorder_stage.py")


async def errors_by_id(store: SqliteStore) -> dict[str, Any]:
    return {doc["id"]: (doc["progress"], doc.get(LAST_ERROR)) for doc in await store.documents()}


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "plain"])
async def test_function_past_its_timeout_is_failed_and_the_run_goes_on(
    sqlite_store: SqliteStore, seed: Any, recording_stage: Any, is_async: bool
) -> None:
    documents = await seed(4)
    hang = documents[0]["id"]

    async def hang_async(item: Any) -> None:
        await asyncio.sleep(30 if item.id == hang else 0)

    def hang_plain(item: Any) -> None:
        time.sleep(2 if item.id == hang else 0)

    function = hang_async if is_async else hang_plain
    stage = Stage("Upload", function, "hang", timeout=0.3)
    started = time.monotonic()

    summary = await Worker(sqlite_store, [stage]).run()

    outcome = await errors_by_id(sqlite_store)
    assert time.monotonic() - started < 5
    assert outcome[hang][0] == "Failed"
    assert outcome[hang][1]["type"] == "StageTimeoutError"
    assert "timeout of 0.3 s" in outcome[hang][1]["message"]
    assert (summary.completed, summary.failed) == (3, 1)


@pytest.mark.parametrize(
    ("behaviour", "error_type", "message"),
    [
        ("system_exit", "SystemExit", "3"),
        ("returns_dict", "UnexpectedResultError", "returned a dict"),
        ("returns_false", "UnexpectedResultError", "returned False"),
    ],
)
@pytest.mark.parametrize("is_async", [True, False], ids=["async", "plain"])
async def test_misbehaving_function_fails_its_item_only(
    sqlite_store: SqliteStore,
    seed: Any,
    behaviour: str,
    error_type: str,
    message: str,
    is_async: bool,
) -> None:
    documents = await seed(3)
    bad = documents[1]["id"]

    def misbehave(item: Any) -> Any:
        if item.id != bad:
            return None
        if behaviour == "system_exit":
            sys.exit(3)
        return {"oops": 1} if behaviour == "returns_dict" else False

    async def misbehave_async(item: Any) -> Any:
        return misbehave(item)

    stage = Stage("Upload", misbehave_async if is_async else misbehave, "misbehave")

    await Worker(sqlite_store, [stage]).run()

    outcome = await errors_by_id(sqlite_store)
    assert outcome[bad][0] == "Failed"
    assert outcome[bad][1]["type"] == error_type
    assert message in outcome[bad][1]["message"]
    assert [p for key, (p, _) in outcome.items() if key != bad] == ["Completed", "Completed"]


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "plain"])
async def test_keyboard_interrupt_in_a_function_stops_the_run_cleanly(
    sqlite_store: SqliteStore, seed: Any, is_async: bool
) -> None:
    await seed(30)
    calls = Counter[str]()

    def interrupt(item: Any) -> None:
        calls[item.id] += 1
        if sum(calls.values()) == 3:
            raise KeyboardInterrupt
        time.sleep(0.02)

    async def interrupt_async(item: Any) -> None:
        interrupt(item)

    stage = Stage("Upload", interrupt_async if is_async else interrupt, "interrupt")

    summary = await Worker(sqlite_store, [stage], concurrency=2).run()

    counts = (await sqlite_store.counts())["Upload"]
    assert summary.stopped == "a stage function was interrupted"
    assert counts["InProgress"] == 0
    assert counts["Failed"] == 1
    assert counts["Completed"] == sum(calls.values()) - 1
    assert counts["Ready"] == 30 - sum(calls.values()) > 0


async def test_lease_is_renewed_while_a_long_call_runs(
    sqlite_store: SqliteStore, db_path: Path, seed: Any, recording_stage: Any
) -> None:
    [document] = await seed(1)
    stage = recording_stage(sleep=1.2)
    recoveries = 0

    async def recover_repeatedly(store: SqliteStore) -> None:
        nonlocal recoveries
        for _ in range(12):
            await asyncio.sleep(0.1)
            recoveries += await Worker(store, []).recover()

    async with SqliteStore(db_path) as other:
        await asyncio.gather(
            Worker(sqlite_store, [stage], lease_seconds=0.3).run(), recover_repeatedly(other)
        )

    stored = await sqlite_store.get(document["id"])
    assert recoveries == 0
    assert stored is not None and stored.progress is Progress.COMPLETED


async def test_worker_whose_claim_was_recovered_cannot_overwrite_it(
    sqlite_store: SqliteStore, seed: Any
) -> None:
    [document] = await seed(1)
    ready = await sqlite_store.get(document["id"])
    assert ready is not None
    claimed = await sqlite_store.claim(ready, "slow-worker", lease_seconds=0.01)
    assert claimed is not None
    await asyncio.sleep(0.05)
    assert await Worker(sqlite_store, []).recover() == 1

    late = await sqlite_store.finish(claimed, Progress.COMPLETED)

    stored = await sqlite_store.get(document["id"])
    assert late is False
    assert stored is not None and stored.progress is Progress.FAILED
    assert stored.document[LAST_ERROR]["type"] == "LeaseExpired"


async def test_recovery_never_overwrites_a_finish_that_landed_first(
    sqlite_store: SqliteStore, seed: Any
) -> None:
    [document] = await seed(1)
    ready = await sqlite_store.get(document["id"])
    assert ready is not None
    claimed = await sqlite_store.claim(ready, "w", lease_seconds=0.01)
    assert claimed is not None
    await asyncio.sleep(0.05)
    expired = [item async for item in sqlite_store.expired_claims(utc_now())]
    assert await sqlite_store.finish(claimed, Progress.COMPLETED)

    recovered = await sqlite_store.fail_expired(
        expired[0], ErrorInfo("LeaseExpired", "x"), utc_now()
    )

    stored = await sqlite_store.get(document["id"])
    assert recovered is False
    assert stored is not None and stored.progress is Progress.COMPLETED


def cli(*args: str, db: Path, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "worker", "--store", str(db), *args]


def run_env(log: Path, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    return {**inherited, "PYTHONPATH": str(ROOT), "RECORDER_LOG": str(log), **extra}


def counts(db: Path, env: dict[str, str]) -> dict[str, int]:
    output = subprocess.run(
        cli("status", "--json", db=db), env=env, check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, int] = json.loads(output)["Record"]
    return result


def wait_for_lines(log: Path, count: int, timeout: float = 20) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if log.exists() and len(log.read_text().split()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the worker made fewer than {count} calls in {timeout} s")


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_claiming_and_records_calls_in_flight(
    tmp_path: Path, signal_number: int
) -> None:
    db, log = tmp_path / "items.db", tmp_path / "calls.log"
    env = run_env(log, RECORDER_SLEEP="0.4")
    subprocess.run(
        cli("-q", "seed", "--stage", "Record", "--count", "40", db=db), env=env, check=True
    )
    worker = subprocess.Popen(
        cli("run", "--modules", RECORDER, "--stages", "Record", "--concurrency", "4", db=db),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lines(log, 6)

    worker.send_signal(signal_number)
    stdout, _ = worker.communicate(timeout=20)

    calls = log.read_text().split()
    final = counts(db, env)
    assert worker.returncode == 130
    assert "stopped early: received" in stdout
    assert final["InProgress"] == 0
    assert final["Completed"] == len(calls) == len(set(calls))
    assert final["Ready"] == 40 - len(calls) > 0


def test_killed_worker_leaves_nothing_stuck_and_nothing_run_twice(tmp_path: Path) -> None:
    db, log = tmp_path / "items.db", tmp_path / "calls.log"
    env = run_env(log, RECORDER_SLEEP="0.3", WORKER_LEASE_SECONDS="1")
    subprocess.run(
        cli("-q", "seed", "--stage", "Record", "--count", "30", db=db), env=env, check=True
    )
    run = cli("-q", "run", "--modules", RECORDER, "--stages", "Record", "--concurrency", "4", db=db)
    victim = subprocess.Popen(run, env=env)
    wait_for_lines(log, 10)

    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    before = {doc["id"]: doc for doc in asyncio.run(_documents(db))}
    time.sleep(1.2)  # let the dead worker's leases expire
    subprocess.run(run, env=env, check=True, timeout=60)

    after = {doc["id"]: doc for doc in asyncio.run(_documents(db))}
    calls = Counter(log.read_text().split())
    stuck = [key for key, doc in before.items() if doc["progress"] == "InProgress"]
    assert stuck, "the kill should have caught calls in flight"
    assert max(calls.values()) == 1
    assert {doc["progress"] for doc in after.values()} <= {"Completed", "Failed"}
    for key in stuck:
        assert after[key]["progress"] == "Failed"
        assert after[key][LAST_ERROR]["type"] == "LeaseExpired"
    for key, doc in before.items():
        if doc["progress"] == "Completed":
            assert after[key] == doc


async def _documents(db: Path) -> list[dict[str, Any]]:
    async with SqliteStore(db) as store:
        return await store.documents()


async def test_stage_timeout_setting_applies_to_stages_without_their_own(
    sqlite_store: SqliteStore, seed: Any, calls: Calls, recording_stage: Any
) -> None:
    from worker.build import plan_stages
    from worker.settings import Settings

    settings = Settings.from_environment(
        {
            "WORKER_STAGE_TIMEOUT": "45",
            "WORKER_STAGE_MAP": '{"Upload": {"function": "upload", "timeout": 5}}',
        }
    )

    plan = plan_stages(replace(settings, stages=("Upload", "Initialize")))

    assert [(s.name, s.timeout) for s in plan.stages] == [("Upload", 5.0), ("Initialize", 45.0)]
