"""The test task: sleeps, then fails in a share of the cases, to exercise a pipeline.

Its settings, read when the module loads:

- ``WORKER_TEST_TASK_SLEEP``: seconds to sleep (default 1)
- ``WORKER_TEST_TASK_FAILURE_RATE``: share of calls that fail, 0 to 1 (default 0.5)
- ``WORKER_TEST_TASK_SEED``: seed of the random choice, for repeatable runs (default none)

A stage map may pass ``sleep`` and ``failure_rate`` as keyword arguments instead.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from worker.errors import ConfigurationError
from worker.stages import stage_function


class TestTaskFailure(Exception):
    """The test task's simulated failure."""

    __test__ = False  # not a pytest test class


def _number(name: str, default: float, low: float, high: float | None = None) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ConfigurationError(f"{name} must be {bound}, got {raw!r}")
    return value


SLEEP = _number("WORKER_TEST_TASK_SLEEP", 1.0, 0.0)
FAILURE_RATE = _number("WORKER_TEST_TASK_FAILURE_RATE", 0.5, 0.0, 1.0)
_seed = os.environ.get("WORKER_TEST_TASK_SEED", "").strip()
chance = random.Random(_seed if _seed else None)


def reseed(seed: int | str | None) -> None:
    """Restart the random sequence, for repeatable runs."""
    chance.seed(seed)


@stage_function("test_task", stage="TestTask")
async def test_task(
    item: Any, sleep: float | None = None, failure_rate: float | None = None
) -> None:
    """Sleep, then raise TestTaskFailure with probability ``failure_rate``."""
    await asyncio.sleep(SLEEP if sleep is None else sleep)
    rate = FAILURE_RATE if failure_rate is None else failure_rate
    if chance.random() < rate:
        raise TestTaskFailure(f"test task failed at random (failure rate {rate:g})")


test_task.__test__ = False  # type: ignore[attr-defined]
