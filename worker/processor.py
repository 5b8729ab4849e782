"""The item processor: claim one item, call its stage function, record the outcome."""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import time
from concurrent.futures import Executor
from typing import Any

from worker.item import ErrorInfo, Item, Progress
from worker.leases import LeaseKeeper
from worker.stages import Stage
from worker.store.base import Store

logger = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """What became of one Ready item that a worker tried to process."""

    COMPLETED = "completed"  # the function returned; the item is Completed
    FAILED = "failed"  # the function failed; the item is Failed with the error
    LOST = "lost"  # another claimant took the item first; nothing was run
    ABANDONED = "abandoned"  # the function ran but the claim was taken away meanwhile


class StageTimeoutError(Exception):
    """The stage function ran longer than the stage's timeout."""


class UnexpectedResultError(Exception):
    """The stage function returned something other than None or a boolean."""


class WorkerStoppedError(Exception):
    """The worker was stopped and its grace period ended before the call did."""


class ItemProcessor:
    """Claims, calls and finishes items for one worker."""

    def __init__(
        self,
        store: Store,
        owner: str,
        lease_seconds: float,
        executor: Executor | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.executor = executor
        #: set when a stage function raised KeyboardInterrupt
        self.interrupted = False
        #: why calls in flight were given up on, once they were
        self.abort_reason: str | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        self.leases = LeaseKeeper(store)

    async def close(self) -> None:
        await self.leases.close()

    async def process(self, stage: Stage, item: Item) -> Outcome:
        lease = stage.lease_seconds or self.lease_seconds
        claimed = await self.store.claim(item, self.owner, lease)
        if claimed is None:
            logger.debug(
                "item %s of stage %s was claimed by another worker",
                item.id,
                stage.name,
                extra={"action": "claim_lost", "stage": stage.name, "item_id": item.id},
            )
            return Outcome.LOST

        started = time.monotonic()
        held = self.leases.hold(claimed, lease)
        try:
            error = await self._call(stage, claimed)
        finally:
            latest = await self.leases.release(held)

        duration_ms = round((time.monotonic() - started) * 1000)
        progress = Progress.COMPLETED if error is None else Progress.FAILED
        recorded = await self.store.finish(latest, progress, error)
        return self._log(stage, claimed, progress, error, recorded, duration_ms)

    def abort_calls(self, reason: str) -> None:
        """Give up on every call still running; each item is recorded as Failed."""
        self.abort_reason = reason
        for task in list(self._calls):
            task.cancel()

    async def _call(self, stage: Stage, item: Item) -> ErrorInfo | None:
        """Run the stage function; return None on success or the failure's error."""
        # The call runs in this task (no task of its own: that costs time on every
        # item), so giving up on it after a stop means cancelling this task.
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            async with asyncio.timeout(stage.timeout):
                result = await self._invoke(stage, item)
            _check_result(stage, result)
        except asyncio.CancelledError:
            if self.abort_reason is None:
                raise
            task.uncancel()
            return ErrorInfo(WorkerStoppedError.__name__, self.abort_reason)
        except TimeoutError:
            return ErrorInfo(
                StageTimeoutError.__name__,
                f"stage function {stage.function_name!r} ran longer than "
                f"its timeout of {stage.timeout:g} s",
            )
        except KeyboardInterrupt as error:
            self.interrupted = True
            return ErrorInfo(type(error).__name__, "the stage function was interrupted")
        except (Exception, SystemExit) as error:  # isolate every failure to its item
            return ErrorInfo.from_exception(error)
        finally:
            self._calls.discard(task)
        return None

    async def _invoke(self, stage: Stage, item: Item) -> Any:
        if stage.is_async:
            result = await _guarded(stage.function(item, **stage.kwargs))
        else:
            # Plain functions run on worker threads so they never block the loop.
            loop = asyncio.get_running_loop()
            call = functools.partial(_call_plain, stage.function, item, stage.kwargs)
            result = await loop.run_in_executor(self.executor, call)
        if inspect.isawaitable(result):
            result = await _guarded(result)
        return result

    def _log(
        self,
        stage: Stage,
        item: Item,
        progress: Progress,
        error: ErrorInfo | None,
        recorded: bool,
        duration_ms: int,
    ) -> Outcome:
        extra = {"stage": stage.name, "item_id": item.id, "duration_ms": duration_ms}
        if not recorded:
            logger.warning(
                "item %s of stage %s: the claim was taken away before the result "
                "could be recorded (its function ran for %d ms)",
                item.id,
                stage.name,
                duration_ms,
                extra={**extra, "action": "finish_lost"},
            )
            return Outcome.ABANDONED
        if error is None:
            logger.info(
                "item %s of stage %s completed in %d ms",
                item.id,
                stage.name,
                duration_ms,
                extra={**extra, "action": "item_completed"},
            )
            return Outcome.COMPLETED
        logger.info(
            "item %s of stage %s failed in %d ms: %s: %s",
            item.id,
            stage.name,
            duration_ms,
            error.type,
            error.message,
            extra={**extra, "action": "item_failed", "error_type": error.type},
        )
        return Outcome.FAILED


def _call_plain(function: Any, item: Item, kwargs: Any) -> Any:
    # SystemExit and KeyboardInterrupt raised on a worker thread would otherwise
    # be handled as thread-level events; carry them back as ordinary results.
    try:
        return function(item, **kwargs)
    except (SystemExit, KeyboardInterrupt) as error:
        return _Raised(error)


async def _guarded(awaitable: Any) -> Any:
    # Inside a task, SystemExit and KeyboardInterrupt escape the event loop
    # itself; catch them here so that they fail only their item.
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as error:
        return _Raised(error)


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _check_result(stage: Stage, result: Any) -> None:
    if isinstance(result, _Raised):
        raise result.error
    if result is None or result is True:
        return
    if result is False:
        raise UnexpectedResultError(f"stage function {stage.function_name!r} returned False")
    raise UnexpectedResultError(
        f"stage function {stage.function_name!r} returned a {type(result).__name__}; "
        "stage functions return None on success and raise an exception to fail"
    )
