"""Several claimants on one SQLite file: every item is claimed and run exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import Calls, make_document
from worker.runner import RunSummary, Worker
from worker.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


async def test_concurrent_claims_of_one_item_have_exactly_one_winner(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    document = make_document()
    await sqlite_store.add([document])
    item = await sqlite_store.get(document["id"])
    assert item is not None
    stores = [SqliteStore(db_path) for _ in range(10)]
    await asyncio.gather(*(store.open() for store in stores))

    results = await asyncio.gather(*(s.claim(item, f"w{i}", 60) for i, s in enumerate(stores)))

    await asyncio.gather(*(store.close() for store in stores))
    assert sum(result is not None for result in results) == 1


async def test_workers_on_threads_claim_each_item_once(
    sqlite_store: SqliteStore, db_path: Path, recording_stage: Any, calls: Calls
) -> None:
    documents = [make_document() for _ in range(300)]
    await sqlite_store.add(documents)
    stage = recording_stage(sleep=0.001)
    summaries: list[RunSummary] = []

    def run_worker() -> None:
        async def main() -> None:
            async with SqliteStore(db_path, page_size=25) as store:
                summaries.append(await Worker(store, [stage], concurrency=4).run())

        asyncio.run(main())

    threads = [threading.Thread(target=run_worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert calls.by_item == {doc["id"]: 1 for doc in documents}
    assert sum(s.claimed for s in summaries) == 300
    assert (await sqlite_store.counts())["Upload"]["Completed"] == 300


def test_worker_processes_claim_each_item_once(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    log = tmp_path / "calls.log"
    env = {**os.environ, "RECORDER_LOG": str(log), "RECORDER_SLEEP": "0.03"}
    worker = [sys.executable, "-m", "worker", "-q", "--store", str(db)]
    subprocess.run(
        [*worker, "seed", "--stage", "Record", "--count", "400"], check=True, env=env, cwd=ROOT
    )
    run = [*worker, "run", "--modules", str(ROOT / "tests" / "recorder_stage.py"), "--json"]

    processes = [
        subprocess.Popen(
            [*run, "--stages", "Record", "--concurrency", "4"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    claimed = [json.loads(p.communicate(timeout=60)[0])["stages"][0]["claimed"] for p in processes]

    assert [process.returncode for process in processes] == [0, 0, 0]
    assert sum(claimed) == 400
    assert min(claimed) > 0, f"every process should have won some items: {claimed}"
    counted = Counter(log.read_text().split())
    assert len(counted) == 400
    assert set(counted.values()) == {1}
    status = subprocess.run(
        [*worker, "status", "--json"], check=True, env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert '"Completed": 400' in status.stdout
