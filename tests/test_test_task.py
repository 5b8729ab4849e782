"""The test task: sleeps, then fails in a configured share of calls."""

from __future__ import annotations

import pytest

from stages import test_task as module
from worker.item import Item


def an_item() -> Item:
    return Item.from_document({"id": "t1", "state": "TestTask", "progress": "Ready"}, "1")


async def outcomes(runs: int, failure_rate: float) -> list[bool]:
    results = []
    for _ in range(runs):
        try:
            await module.test_task(an_item(), sleep=0, failure_rate=failure_rate)
            results.append(True)
        except module.TestTaskFailure:
            results.append(False)
    return results


async def test_both_outcomes_occur() -> None:
    module.reseed(7)

    results = await outcomes(40, 0.5)

    assert True in results and False in results


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
async def test_failure_share_is_near_the_setting(rate: float) -> None:
    module.reseed(2024)

    results = await outcomes(2000, rate)

    share = results.count(False) / len(results)
    assert abs(share - rate) < 0.04


async def test_the_same_seed_repeats_the_same_outcomes() -> None:
    module.reseed("abc")
    first = await outcomes(50, 0.5)
    module.reseed("abc")

    second = await outcomes(50, 0.5)

    assert first == second


async def test_rate_zero_never_fails_and_rate_one_always_fails() -> None:
    assert all(await outcomes(50, 0.0))
    assert not any(await outcomes(50, 1.0))


async def test_default_sleep_is_one_second_unless_set() -> None:
    import time

    started = time.monotonic()

    await module.test_task(an_item(), failure_rate=0.0)

    assert 0.95 < time.monotonic() - started < 1.5


def test_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="WORKER_TEST_TASK_FAILURE_RATE"):
        monkeypatch.setenv("WORKER_TEST_TASK_FAILURE_RATE", "1.5")
        module._number("WORKER_TEST_TASK_FAILURE_RATE", 0.5, 0.0, 1.0)
    with pytest.raises(ConfigurationError, match="must be a number"):
        monkeypatch.setenv("WORKER_TEST_TASK_SLEEP", "soon")
        module._number("WORKER_TEST_TASK_SLEEP", 1.0, 0.0)
