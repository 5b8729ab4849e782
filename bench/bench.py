"""Benchmark of the worker on the SQLite store. Prints figures; asserts nothing.

    python bench/bench.py            # the full set (about a minute)
    python bench/bench.py --quick    # smaller counts, for a smoke run

Each scenario runs in a fresh process so that its peak memory (max RSS) is its own:
seeding happens in another process first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.item import Item, Progress  # noqa: E402
from worker.runner import Worker  # noqa: E402
from worker.stages import Stage  # noqa: E402
from worker.store.sqlite import SqliteStore  # noqa: E402

SLEEP = 0.05


async def noop(item: Item) -> None:
    return None


async def sleeper(item: Item) -> None:
    await asyncio.sleep(SLEEP)


def seed(db: Path, count: int) -> None:
    async def add() -> None:
        async with SqliteStore(db) as store:
            batch = 10_000
            for start in range(0, count, batch):
                await store.add(
                    {
                        "id": f"bench-{n:08d}",
                        "state": "Bench",
                        "progress": Progress.READY.value,
                        "retryCount": 0,
                        "payload": "x" * 200,
                    }
                    for n in range(start, min(count, start + batch))
                )

    asyncio.run(add())


def scenario(db: Path, kind: str, concurrency: int, limit: int | None) -> dict[str, Any]:
    """Run one scenario in this process and return its figures."""
    logging.basicConfig(level=logging.WARNING)

    async def worker_run() -> int:
        async with SqliteStore(db) as store:
            function = noop if kind == "noop" else sleeper
            worker = Worker(store, [Stage("Bench", function, kind)], concurrency=concurrency)
            summary = await worker.run()
            return summary.claimed

    async def floor_run() -> int:
        # Only what each item needs: a conditional claim and a conditional finish,
        # one item after another, through the same store.
        done = 0
        async with SqliteStore(db) as store:
            async for item in store.ready_items("Bench"):
                claimed = await store.claim(item, "floor", 300)
                assert claimed is not None
                await store.finish(claimed, Progress.COMPLETED)
                done += 1
                if limit is not None and done >= limit:
                    break
        return done

    def raw_floor_run() -> int:
        # The same two statements on a plain connection, without the event loop
        # or the store's thread: what SQLite alone costs per item.
        import sqlite3

        connection = sqlite3.connect(db, isolation_level=None)
        connection.execute("PRAGMA synchronous=NORMAL")
        rows = connection.execute(
            "SELECT id, version, doc FROM items WHERE state = 'Bench' AND progress = 'Ready'"
        ).fetchall()
        for item_id, version, doc in rows:
            document = json.loads(doc)
            document.update(progress="InProgress", claimId="c", leaseUntil="9999")
            connection.execute(
                "UPDATE items SET doc = ?, version = version + 1 WHERE id = ? AND version = ?",
                (json.dumps(document), item_id, version),
            )
            connection.execute(
                "UPDATE items SET doc = json_set(doc, '$.progress', 'Completed'),"
                " version = version + 1 WHERE id = ? AND claim_id = 'c'",
                (item_id,),
            )
        connection.close()
        return len(rows)

    started = time.perf_counter()
    if kind == "raw":
        processed = raw_floor_run()
    else:
        processed = asyncio.run(floor_run() if kind == "floor" else worker_run())
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"items": processed, "seconds": seconds, "peak_mb": peak_mb}


def measure(kind: str, count: int, concurrency: int, ready: int | None = None) -> dict[str, Any]:
    """Seed ``ready`` items (default ``count``) and run a scenario in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "bench.db"
        seed(db, ready or count)
        command = [
            sys.executable,
            __file__,
            "--scenario",
            json.dumps({"db": str(db), "kind": kind, "concurrency": concurrency}),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        figures: dict[str, Any] = json.loads(output)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        spec = json.loads(args.scenario)
        print(json.dumps(scenario(Path(spec["db"]), spec["kind"], spec["concurrency"], None)))
        return

    count = 2_000 if args.quick else 10_000
    print(f"SQLite store, {count} items, no-op stage")
    floor = measure("floor", count, 1)
    floor_rate = floor["items"] / floor["seconds"]
    print(f"  floor (bare claim + finish, one at a time): {floor_rate:8.0f} items/s")
    raw = measure("raw", count, 1)
    raw_rate = raw["items"] / raw["seconds"]
    print(f"  the same two UPDATEs on a bare connection:  {raw_rate:8.0f} items/s")
    for concurrency in (1, 8, 32):
        figures = measure("noop", count, concurrency)
        rate = figures["items"] / figures["seconds"]
        print(
            f"  worker, concurrency {concurrency:>2}: {rate:8.0f} items/s"
            f" = {rate / floor_rate:5.0%} of the floor ({rate / raw_rate:4.0%} of bare SQL),"
            f" peak {figures['peak_mb']:.0f} MB"
        )

    print(f"\nSQLite store, sleeping stage ({SLEEP * 1000:.0f} ms a call)")
    for concurrency in (1, 8, 32):
        n = (10 if args.quick else 20) * concurrency
        figures = measure("sleep", n, concurrency)
        ideal = n * SLEEP / concurrency
        print(
            f"  concurrency {concurrency:>2}, {n:4d} items: {figures['seconds']:5.2f} s,"
            f" {figures['seconds'] / ideal:5.3f} x ideal ({ideal:.2f} s),"
            f" {figures['items'] / figures['seconds']:6.0f} items/s"
        )

    print("\nPeak memory of a run against many Ready items (no-op stage, concurrency 32)")
    for ready in (1_000, 10_000 if args.quick else 100_000):
        figures = measure("noop", ready, 32)
        peak, seconds = figures["peak_mb"], figures["seconds"]
        print(f"  {ready:>7} Ready items: peak {peak:.1f} MB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
