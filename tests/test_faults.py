"""Faults on both stores: hangs, interrupts, signals, crashes, outages, throttling.

Each test runs on a SQLite file and on the Cosmos DB test server. Tests that stop
or throttle a server use one of their own, so that no other test sees the fault.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, add_items
from tests.cosmos import TestServer, server_environment, unique_name
from worker.item import LAST_ERROR, ErrorInfo, Item, Progress, utc_now
from worker.runner import Worker
from worker.stages import Stage
from worker.store.base import Store
from worker.store.cosmos import CosmosStore

ROOT = Path(__file__).resolve().parent.parent
RECORDER = str(ROOT / "tests" / "recorder_stage.py")


async def outcomes(store: Store) -> dict[str, tuple[str, Any]]:
    documents = await store.documents()  # type: ignore[attr-defined]
    return {doc["id"]: (doc["progress"], doc.get(LAST_ERROR)) for doc in documents}


# ---------------------------------------------------------------- stage functions


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "plain"])
async def test_function_past_its_timeout_is_failed_and_the_run_goes_on(
    store: Store, is_async: bool
) -> None:
    documents = await add_items(store, 4)
    hang = documents[0]["id"]

    async def hang_async(item: Any) -> None:
        await asyncio.sleep(30 if item.id == hang else 0)

    def hang_plain(item: Any) -> None:
        time.sleep(2 if item.id == hang else 0)

    stage = Stage("Upload", hang_async if is_async else hang_plain, "hang", timeout=0.3)
    started = time.monotonic()

    summary = await Worker(store, [stage]).run()

    found = await outcomes(store)
    assert time.monotonic() - started < 5
    assert found[hang][0] == "Failed"
    assert found[hang][1]["type"] == "StageTimeoutError"
    assert "timeout of 0.3 s" in found[hang][1]["message"]
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
    store: Store, behaviour: str, error_type: str, message: str, is_async: bool
) -> None:
    documents = await add_items(store, 3)
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

    await Worker(store, [stage]).run()

    found = await outcomes(store)
    assert found[bad][0] == "Failed"
    assert found[bad][1]["type"] == error_type
    assert message in found[bad][1]["message"]
    assert [p for key, (p, _) in found.items() if key != bad] == ["Completed", "Completed"]


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "plain"])
async def test_keyboard_interrupt_in_a_function_stops_the_run_cleanly(
    store: Store, is_async: bool
) -> None:
    await add_items(store, 30)
    calls = Counter[str]()

    def interrupt(item: Any) -> None:
        calls[item.id] += 1
        if sum(calls.values()) == 3:
            raise KeyboardInterrupt
        time.sleep(0.02)

    async def interrupt_async(item: Any) -> None:
        interrupt(item)

    stage = Stage("Upload", interrupt_async if is_async else interrupt, "interrupt")

    summary = await Worker(store, [stage], concurrency=2).run()

    counts = (await store.counts())["Upload"]
    assert summary.stopped == "a stage function was interrupted"
    assert counts["InProgress"] == 0
    assert counts["Failed"] == 1
    assert counts["Completed"] == sum(calls.values()) - 1
    assert counts["Ready"] == 30 - sum(calls.values()) > 0


# ---------------------------------------------------------------- leases


async def test_lease_is_renewed_while_a_long_call_runs(backend: Backend) -> None:
    [document] = await add_items(backend.store, 1)

    async def long_call(item: Any) -> None:
        await asyncio.sleep(1.5)

    recoveries = 0

    async def recover_repeatedly() -> None:
        nonlocal recoveries
        for _ in range(15):
            await asyncio.sleep(0.1)
            recoveries += await Worker(backend.store, []).recover()

    stage = Stage("Upload", long_call, "long_call")

    await asyncio.gather(
        Worker(backend.store, [stage], lease_seconds=0.4).run(), recover_repeatedly()
    )

    stored = await backend.store.get(document["id"])
    assert recoveries == 0
    assert stored is not None and stored.progress is Progress.COMPLETED


async def expired_claim(store: Store, owner: str) -> Item:
    """A new item claimed by ``owner`` with a lease that has already run out."""
    [document] = await add_items(store, 1)
    ready = await store.get(document["id"])
    assert ready is not None
    claimed = await store.claim(ready, owner, lease_seconds=0.01)
    assert claimed is not None
    await asyncio.sleep(0.05)
    return claimed


async def test_worker_whose_claim_was_recovered_cannot_overwrite_it(store: Store) -> None:
    claimed = await expired_claim(store, "slow-worker")
    assert await Worker(store, []).recover() == 1

    late = await store.finish(claimed, Progress.COMPLETED)

    stored = await store.get(claimed.id)
    assert late is False
    assert stored is not None and stored.progress is Progress.FAILED
    assert stored.document[LAST_ERROR]["type"] == "LeaseExpired"
    assert "slow-worker" in stored.document[LAST_ERROR]["message"]


async def test_recovery_and_a_late_finish_never_both_land(store: Store) -> None:
    claimed = await expired_claim(store, "w")
    [expired] = [item async for item in store.expired_claims(utc_now())]

    finished, recovered = await asyncio.gather(
        store.finish(claimed, Progress.COMPLETED),
        store.fail_expired(expired, ErrorInfo("LeaseExpired", "x"), utc_now()),
    )

    stored = await store.get(claimed.id)
    assert stored is not None
    assert [finished, recovered].count(True) == 1
    expected = Progress.COMPLETED if finished else Progress.FAILED
    assert stored.progress is expected


# ---------------------------------------------------------------- processes


def worker_command(backend: Backend, *args: str) -> list[str]:
    return [sys.executable, "-m", "worker", "--store", backend.store_option, *args]


def process_env(backend: Backend, log: Path, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "COSMOS"))}
    return {
        **inherited,
        **backend.environment,
        "PYTHONPATH": str(ROOT),
        "RECORDER_LOG": str(log),
        **extra,
    }


def run_command(backend: Backend, *args: str) -> list[str]:
    return worker_command(backend, "-q", "run", "--modules", RECORDER, "--stages", "Record", *args)


def start_run(backend: Backend, env: dict[str, str]) -> subprocess.Popen[str]:
    """A worker process running the Record stage, four items at a time."""
    command = run_command(backend, "--concurrency", "4")
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_lines(log: Path, count: int, timeout: float = 30) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if log.exists() and len(log.read_text().split()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the worker made fewer than {count} calls in {timeout} s")


def report(test: str, backend: Backend, items: int, invocations: int, final: Any) -> None:
    """One line of figures per fault test; `pytest -s -k ...` shows them."""
    kind = backend.spec["kind"]
    print(f"\nFAULT {test} [{kind}]: items={items} invocations={invocations} final={final}")


def by_id(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["id"]: doc for doc in documents}


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_claiming_and_records_calls_in_flight(
    backend: Backend, tmp_path: Path, signal_number: int
) -> None:
    log = tmp_path / "calls.log"
    env = process_env(backend, log, RECORDER_SLEEP="0.4")
    await add_items(backend.store, 40, "Record")
    worker = start_run(backend, env)
    wait_for_lines(log, 6)

    worker.send_signal(signal_number)
    stdout, stderr = worker.communicate(timeout=30)

    calls = log.read_text().split()
    counts = (await backend.store.counts())["Record"]
    report(f"signal {signal_number}", backend, 40, len(calls), counts)
    assert worker.returncode == 130, stderr
    assert "stopped early: received" in stdout
    assert counts["InProgress"] == 0
    assert counts["Completed"] == len(calls) == len(set(calls))
    assert counts["Ready"] == 40 - len(calls) > 0


@pytest.mark.parametrize("stage", ["Record", "RecordPlain"], ids=["async", "plain"])
async def test_calls_outlasting_the_grace_period_are_recorded_failed(
    backend: Backend, tmp_path: Path, stage: str
) -> None:
    log = tmp_path / "calls.log"
    env = process_env(backend, log, RECORDER_SLEEP="60", WORKER_GRACE_SECONDS="0.5")
    await add_items(backend.store, 6, stage)
    command = worker_command(
        backend, "-q", "run", "--modules", RECORDER, "--stages", stage, "--concurrency", "4"
    )
    worker = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    wait_for_lines(log, 4)
    started = time.monotonic()

    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=30)

    items = await backend.store.documents()  # type: ignore[attr-defined]
    failed = [doc for doc in items if doc["progress"] == "Failed"]
    final = Counter(doc["progress"] for doc in items)
    report(f"grace {stage}", backend, 6, len(log.read_text().split()), dict(final))
    assert worker.returncode == 130
    assert time.monotonic() - started < 10
    assert len(failed) == 4
    assert {doc[LAST_ERROR]["type"] for doc in failed} == {"WorkerStoppedError"}
    assert "grace period of 0.5 s" in failed[0][LAST_ERROR]["message"]
    assert sorted(doc["progress"] for doc in items) == ["Failed"] * 4 + ["Ready"] * 2


async def test_killed_worker_leaves_nothing_stuck_and_nothing_run_twice(
    backend: Backend, tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    env = process_env(backend, log, RECORDER_SLEEP="0.3", WORKER_LEASE_SECONDS="1")
    await add_items(backend.store, 30, "Record")
    victim = subprocess.Popen(run_command(backend, "--concurrency", "4"), env=env)
    wait_for_lines(log, 10)

    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    before = by_id(await backend.store.documents())  # type: ignore[attr-defined]
    await asyncio.sleep(1.2)  # let the dead worker's leases expire
    subprocess.run(run_command(backend, "--concurrency", "4"), env=env, check=True, timeout=90)

    after = by_id(await backend.store.documents())  # type: ignore[attr-defined]
    calls = Counter(log.read_text().split())
    stuck = [key for key, doc in before.items() if doc["progress"] == "InProgress"]
    final = dict(Counter(doc["progress"] for doc in after.values()))
    report("sigkill", backend, 30, sum(calls.values()), {**final, "stuck at kill": len(stuck)})
    assert stuck, "the kill should have caught calls in flight"
    # A claim the kill caught before its call began is recovered without a call.
    assert max(calls.values()) == 1
    assert {doc["progress"] for doc in after.values()} <= {"Completed", "Failed"}
    assert {key for key, doc in after.items() if doc["progress"] == "Completed"} <= set(calls)
    for key in stuck:
        assert after[key]["progress"] == "Failed"
        assert after[key][LAST_ERROR]["type"] == "LeaseExpired"
    for key, doc in before.items():
        if doc["progress"] == "Completed":
            assert after[key] == doc


async def test_processes_and_change_feed_batches_run_each_item_once(
    backend: Backend, tmp_path: Path
) -> None:
    from worker import functions

    log = tmp_path / "calls.log"
    env = process_env(backend, log, RECORDER_SLEEP="0.05", WORKER_STORE=backend.store_option)
    await add_items(backend.store, 120, "Record")
    # The feed's copies are taken before any claim, as a late feed delivers them.
    feed_copies = await raw_documents(backend)
    command = run_command(backend, "--concurrency", "4", "--json")
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    wait_for_lines(log, 12)  # the processes are claiming
    os.environ["RECORDER_LOG"] = str(log)  # the feed handler runs in this process
    feed_env = {**env, "WORKER_MODULES": RECORDER, "WORKER_STAGES": "Record"}
    try:
        summaries = await asyncio.gather(
            functions.run_feed(feed_env, feed_copies[:70]),
            functions.run_feed(feed_env, feed_copies[50:]),
        )
        outputs = [worker.communicate(timeout=90)[0] for worker in workers]
    finally:
        del os.environ["RECORDER_LOG"]

    calls = Counter(log.read_text().split())
    counts = (await backend.store.counts())["Record"]
    feed_claims = sum(s.claimed for s in summaries)
    process_claims = sum(json.loads(output)["stages"][0]["claimed"] for output in outputs)
    report(
        "3 processes + 2 feed batches",
        backend,
        120,
        calls.total(),
        {**counts, "process claims": process_claims, "feed claims": feed_claims},
    )
    assert [worker.returncode for worker in workers] == [0, 0, 0]
    assert len(calls) == 120 and set(calls.values()) == {1}
    assert counts["Completed"] == 120
    assert process_claims + feed_claims == 120
    assert process_claims >= 12 and feed_claims > 0, "both sides should have raced"


async def raw_documents(backend: Backend) -> list[dict[str, Any]]:
    """Documents as the change feed delivers them: Cosmos DB's with their ETag;
    SQLite's carry their version counter in ``_etag`` instead."""
    store = backend.store
    if isinstance(store, CosmosStore):
        query = store.container.query_items("SELECT * FROM c", max_item_count=1000)
        return [document async for document in query]
    items = [await store.get(doc["id"]) for doc in await store.documents()]  # type: ignore[attr-defined]
    return [{**item.document, "_etag": item.version} for item in items if item is not None]


# ---------------------------------------------------------------- the store itself


@pytest.fixture(scope="module")
def fault_server() -> Iterator[TestServer]:
    """A test server of the fault tests' own, which they stop and throttle."""
    with TestServer() as server:
        yield server


@pytest.fixture
async def fault_backend(fault_server: TestServer) -> AsyncIterator[Backend]:
    environment = server_environment(fault_server.endpoint, unique_name("faults"))
    store = CosmosStore.from_environment(environment)
    await store.create_resources()
    await store.open()
    yield Backend(store, {"kind": "cosmos", "env": environment})
    fault_server.send("start")
    fault_server.send("throttle 0")
    await store.delete_database()
    await store.close()


async def test_throttled_requests_are_retried_and_every_item_completes(
    fault_server: TestServer, fault_backend: Backend
) -> None:
    store = fault_backend.store
    assert isinstance(store, CosmosStore)
    await add_items(store, 60)
    calls = Counter[str]()

    async def record(item: Any) -> None:
        calls[item.id] += 1

    assert fault_server.send("throttle 0.3") == "throttle 0.3"
    before = store.requests.copy()

    summary = await Worker(store, [Stage("Upload", record, "record")], concurrency=8).run()

    fault_server.send("throttle 0")
    used = store.requests - before
    counts = (await store.counts())["Upload"]
    report(
        "429 on 30% of requests",
        fault_backend,
        60,
        calls.total(),
        {**counts, "writes": used.item_writes},
    )
    assert counts == {"Ready": 0, "InProgress": 0, "Completed": 60, "Failed": 0}
    assert set(calls.values()) == {1} and len(calls) == 60
    assert summary.completed == 60
    # 60 claims and 60 finishes, plus the retries the 429s caused.
    assert used.item_writes > 120 * 1.1


async def test_store_outage_mid_run_ends_with_a_clear_error_then_recovery_completes(
    fault_server: TestServer, fault_backend: Backend, tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    env = process_env(fault_backend, log, RECORDER_SLEEP="0.2", WORKER_LEASE_SECONDS="2")
    await add_items(fault_backend.store, 60, "Record")
    worker = start_run(fault_backend, env)
    wait_for_lines(log, 8)

    assert fault_server.send("stop") == "stopped"
    _, stderr = worker.communicate(timeout=90)
    assert fault_server.send("start") == "started"

    assert worker.returncode == 4
    assert "store" in stderr and "failed" in stderr
    assert "Traceback" not in stderr
    await asyncio.sleep(2.1)  # the leases of calls whose finish was lost expire
    rerun = subprocess.run(run_command(fault_backend), env=env, timeout=90, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr
    counts = (await fault_backend.store.counts())["Record"]
    calls = Counter(log.read_text().split())
    report("outage mid-run, then recovery", fault_backend, 60, calls.total(), counts)
    assert counts["Ready"] == counts["InProgress"] == 0
    assert counts["Completed"] + counts["Failed"] == 60
    assert max(calls.values()) == 1


async def test_unreachable_store_at_start_changes_nothing(
    fault_server: TestServer, fault_backend: Backend, tmp_path: Path
) -> None:
    env = process_env(fault_backend, tmp_path / "calls.log")
    await add_items(fault_backend.store, 3, "Record")
    fault_server.send("stop")

    result = subprocess.run(
        run_command(fault_backend), env=env, timeout=90, capture_output=True, text=True
    )

    fault_server.send("start")
    assert result.returncode == 3
    assert "COSMOS__accountEndpoint" in result.stderr
    assert (await fault_backend.store.counts())["Record"]["Ready"] == 3
    assert not (tmp_path / "calls.log").exists()
