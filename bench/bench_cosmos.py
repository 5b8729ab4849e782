"""Benchmark of the worker on the Cosmos DB store. Prints figures; asserts nothing.

    python bench/bench_cosmos.py                 # 600 items at concurrency 1, 8 and 32
    python bench/bench_cosmos.py --items 200     # fewer items, for a smoke run

It starts the local test server (tests/cosmos_server, installed with npm ci if
needed), and for each concurrency seeds a fresh database with Ready items of one
stage, runs the worker over them with a no-op stage function, and reports items
per second and HTTP requests per item, split into queries, reads and writes.
The server is a single Node.js process on the same two cores as the worker, so
the figures measure the client's cost per item more than any real account's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cosmos import TestServer, server_environment, unique_name  # noqa: E402
from worker.item import Item, Progress  # noqa: E402
from worker.runner import Worker  # noqa: E402
from worker.stages import Stage  # noqa: E402
from worker.store.cosmos import CosmosStore  # noqa: E402


async def noop(item: Item) -> None:
    return None


async def measure(endpoint: str, items: int, concurrency: int, page_size: int) -> dict[str, Any]:
    environment = server_environment(
        endpoint, unique_name("bench"), COSMOS_PAGE_SIZE=str(page_size)
    )
    store = CosmosStore.from_environment(environment)
    await store.create_resources()
    await store.open()
    try:
        await store.add(
            {
                "id": f"bench-{n:07d}",
                "state": "Bench",
                "progress": Progress.READY.value,
                "retryCount": 0,
                "payload": "x" * 200,
            }
            for n in range(items)
        )
        before = store.requests.copy()
        worker = Worker(store, [Stage("Bench", noop, "noop")], concurrency=concurrency)

        started = time.perf_counter()
        summary = await worker.run(recover=False)
        seconds = time.perf_counter() - started

        spent = store.requests - before
        return {
            "concurrency": concurrency,
            "items": summary.completed,
            "seconds": seconds,
            "per_second": summary.completed / seconds,
            "requests": spent.total / items,
            "writes": spent.item_writes / items,
            "reads": spent.item_reads / items,
            "queries": spent.queries / items,
        }
    finally:
        await store.delete_database()
        await store.close()


async def main(arguments: argparse.Namespace) -> None:
    with TestServer() as server:
        print(
            f"{arguments.items} items, page size {arguments.page_size}, no-op stage, "
            f"test server at {server.endpoint}"
        )
        print("concurrency  items/s  requests/item  writes  reads  queries")
        for concurrency in arguments.concurrency:
            row = await measure(server.endpoint, arguments.items, concurrency, arguments.page_size)
            print(
                f"{row['concurrency']:>11}  {row['per_second']:>7.0f}  "
                f"{row['requests']:>13.3f}  {row['writes']:>6.2f}  {row['reads']:>5.2f}  "
                f"{row['queries']:>7.3f}"
            )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=600, help="items per run (600)")
    parser.add_argument("--page-size", type=int, default=100, help="COSMOS_PAGE_SIZE (100)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="concurrency of each run (1 8 32)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parse()))
