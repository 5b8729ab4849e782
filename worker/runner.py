"""The runner: the stage loop, with bounded concurrency, a deadline and a summary."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from worker.errors import StoreFailedError
from worker.item import ErrorInfo, Item, Progress, item_or_none, utc_now
from worker.processor import ItemProcessor, Outcome
from worker.stages import Stage
from worker.store.base import Store

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
DEFAULT_LEASE_SECONDS = 300.0
#: A run stops claiming once the store has failed this many items in a row:
#: it is down, and every further claim would only wait for its retries.
MAX_STORE_FAILURES_IN_A_ROW = 5


@dataclasses.dataclass
class StageSummary:
    """What one run did in one stage."""

    stage: str
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0  # claim races lost to another worker
    abandoned: int = 0  # ran, but the claim was taken away before the finish
    errors: int = 0  # the store failed on the item; it is left for recovery
    skipped: str | None = None  # why the stage did not run, if it did not

    def count(self, outcome: Outcome) -> None:
        if outcome is Outcome.LOST:
            self.lost += 1
            return
        self.claimed += 1
        if outcome is Outcome.COMPLETED:
            self.completed += 1
        elif outcome is Outcome.FAILED:
            self.failed += 1
        else:
            self.abandoned += 1


@dataclasses.dataclass
class RunSummary:
    """What one run did, stage by stage."""

    stages: list[StageSummary]
    recovered: int = 0
    #: why the run stopped claiming early (deadline, stop request), if it did
    stopped: str | None = None
    seconds: float = 0.0

    @property
    def completed(self) -> int:
        return sum(s.completed for s in self.stages)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.stages)

    @property
    def claimed(self) -> int:
        return sum(s.claimed for s in self.stages)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_owner() -> str:
    """Who claims: host, process and a random suffix, unique per worker."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Processes the Ready items of configured stages against one store."""

    def __init__(
        self,
        store: Store,
        stages: Iterable[Stage],
        *,
        skipped: Mapping[str, str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        owner: str | None = None,
        on_outcome: Callable[[str, Outcome], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.stages = list(stages)
        self.skipped = dict(skipped or {})
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.owner = owner or default_owner()
        self.on_outcome = on_outcome
        self._stop_reason: str | None = None
        self._store_failures = 0
        self._store_error: BaseException | None = None
        self._processors: set[ItemProcessor] = set()
        #: whether calls were given up on after a grace period; their threads,
        #: if any, may still be running
        self.aborted = False

    def stop(self, reason: str = "stop requested", grace: float | None = None) -> None:
        """Stop claiming; calls in flight finish and are recorded.

        With ``grace``, calls still running that many seconds later are given up
        on and their items recorded as Failed, so that the worker can exit.
        """
        if self._stop_reason is None:
            logger.info("stopping: %s", reason, extra={"action": "stop", "reason": reason})
            self._stop_reason = reason
        if grace is not None:
            asyncio.get_running_loop().call_later(grace, self._abort, reason, grace)

    def _abort(self, reason: str, grace: float) -> None:
        message = f"the worker stopped ({reason}) and its grace period of {grace:g} s ended"
        for processor in self._processors:
            self.aborted = True
            processor.abort_calls(message)

    @property
    def stages_by_name(self) -> dict[str, Stage]:
        return {stage.name: stage for stage in self.stages}

    async def run(self, deadline: float | None = None, recover: bool = True) -> RunSummary:
        """Process every configured stage in order.

        ``deadline`` is a ``time.monotonic()`` value by which the run must be
        over: no call is started that its stage's timeout could carry past it.
        """
        started = time.monotonic()
        recovered = await self.recover() if recover else 0
        summaries = {name: StageSummary(name, skipped=why) for name, why in self.skipped.items()}
        for name, why in self.skipped.items():
            logger.warning(
                "skipping stage %s: %s", name, why, extra={"action": "stage_skipped", "stage": name}
            )

        async with self._processor() as processor:
            pool = _Pool(self.concurrency)
            try:
                for stage in self.stages:
                    summary = summaries[stage.name] = StageSummary(stage.name)
                    await self._claim_stage(stage, summary, processor, pool, deadline)
                    if self._stop_reason is not None:
                        break
            finally:
                await pool.drain()

        self._raise_if_store_failed()
        ordered = [summaries[n] for n in self._order() if n in summaries]
        result = RunSummary(ordered, recovered, self._stop_reason, time.monotonic() - started)
        for summary in ordered:
            if summary.skipped is None:
                _log_stage(summary)
        logger.info(
            "run finished in %.1f s: %d claimed, %d completed, %d failed%s",
            result.seconds,
            result.claimed,
            result.completed,
            result.failed,
            f"; stopped early: {result.stopped}" if result.stopped else "",
            extra={"action": "run_finished", "summary": result.as_dict()},
        )
        return result

    @contextlib.asynccontextmanager
    async def _processor(self) -> AsyncIterator[ItemProcessor]:
        """An item processor with a thread pool for plain stage functions."""
        executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="stage")
        processor = ItemProcessor(self.store, self.owner, self.lease_seconds, executor)
        self._processors.add(processor)
        try:
            yield processor
        finally:
            self._processors.discard(processor)
            await processor.close()
            # After an abort, plain functions given up on may still be running on
            # their threads; waiting for them would defeat the grace period.
            executor.shutdown(wait=not self.aborted, cancel_futures=True)

    def _order(self) -> list[str]:
        names = [stage.name for stage in self.stages]
        return names + [name for name in self.skipped if name not in names]

    async def _claim_stage(
        self,
        stage: Stage,
        summary: StageSummary,
        processor: ItemProcessor,
        pool: _Pool,
        deadline: float | None,
    ) -> None:
        async for item in self.store.ready_items(stage.name):
            await pool.acquire()
            if processor.interrupted:
                self.stop("a stage function was interrupted")
            if deadline is not None and not _time_for(stage, deadline):
                self.stop("deadline reached")
            if self._stop_reason is not None:
                pool.release()
                return
            pool.start(self._process(processor, stage, item, summary))

    async def _process(
        self, processor: ItemProcessor, stage: Stage, item: Item, summary: StageSummary
    ) -> None:
        try:
            outcome = await processor.process(stage, item)
        except Exception as error:
            # The store failed on this item; the item stays as the store left it
            # (Ready, or InProgress until recovery) and the run goes on. One line
            # a failure; the traceback only when debugging.
            logger.error(
                "store error while processing item %s of stage %s: %s: %s",
                item.id,
                stage.name,
                type(error).__name__,
                _first_line(error),
                exc_info=logger.isEnabledFor(logging.DEBUG),
                extra={"action": "store_error", "stage": stage.name, "item_id": item.id},
            )
            summary.errors += 1
            self._store_failures += 1
            if self._store_failures >= MAX_STORE_FAILURES_IN_A_ROW and not self._store_error:
                self._store_error = sys.exc_info()[1]
                self.stop(f"the store failed {self._store_failures} items in a row")
            return
        self._store_failures = 0
        summary.count(outcome)
        if self.on_outcome is not None:
            self.on_outcome(stage.name, outcome)

    async def process_documents(
        self, documents: Iterable[Mapping[str, Any]], deadline: float | None = None
    ) -> RunSummary:
        """Process documents delivered by the change feed.

        A document is a hint: it is processed only if it is Ready and its stage is
        mapped, and then only through the same conditional claim as a run. Past
        ``deadline`` nothing more is claimed; the timer finds what is left.
        """
        started = time.monotonic()
        stages = self.stages_by_name
        summaries: dict[str, StageSummary] = {}
        async with self._processor() as processor:
            pool = _Pool(self.concurrency)
            for document in documents:
                item = _feed_item(document)
                if item is None or item.progress is not Progress.READY:
                    continue
                stage = stages.get(item.state)
                if stage is None:
                    continue
                summary = summaries.setdefault(stage.name, StageSummary(stage.name))
                await pool.acquire()
                if deadline is not None and not _time_for(stage, deadline):
                    pool.release()
                    self.stop("deadline reached")
                    break
                pool.start(self._process(processor, stage, item, summary))
            await pool.drain()
        self._raise_if_store_failed()
        return RunSummary(
            list(summaries.values()), stopped=self._stop_reason, seconds=time.monotonic() - started
        )

    def _raise_if_store_failed(self) -> None:
        error = self._store_error
        if error is not None:
            raise StoreFailedError(
                f"{self.store.description} failed {MAX_STORE_FAILURES_IN_A_ROW} items in a "
                f"row; the last error: {type(error).__name__}: {_first_line(error)}. "
                "Unclaimed items stay Ready; items whose result could not be recorded "
                "are recovered once their lease expires"
            ) from error

    async def recover(self) -> int:
        """Mark Failed every InProgress item whose lease has expired."""
        now = utc_now()
        recovered = 0
        async for item in self.store.expired_claims(now):
            error = ErrorInfo(
                "LeaseExpired",
                f"lease expired at {item.lease_until}; the claim was held by "
                f"{item.claimed_by or 'an unknown worker'}",
            )
            if await self.store.fail_expired(item, error, now):
                recovered += 1
                logger.warning(
                    "item %s of stage %s: lease held by %s expired; marked Failed",
                    item.id,
                    item.state,
                    item.claimed_by,
                    extra={"action": "recovered", "stage": item.state, "item_id": item.id},
                )
        return recovered


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def _time_for(stage: Stage, deadline: float) -> bool:
    left = deadline - time.monotonic()
    return left > (stage.timeout or 0.0)


def _feed_item(document: Mapping[str, Any]) -> Item | None:
    version = document.get("_etag")
    return item_or_none(document, str(version) if version is not None else "")


def _log_stage(summary: StageSummary) -> None:
    logger.info(
        "stage %s: %d claimed, %d completed, %d failed, %d lost to other workers",
        summary.stage,
        summary.claimed,
        summary.completed,
        summary.failed,
        summary.lost,
        extra={"action": "stage_finished", "stage": summary.stage, **dataclasses.asdict(summary)},
    )


class _Pool:
    """At most ``size`` tasks at once; finished tasks are forgotten at once.

    A caller takes a slot with ``acquire`` and hands it to ``start``, whose task
    gives it back when done, or gives it back itself with ``release``.
    """

    def __init__(self, size: int) -> None:
        self._slots = asyncio.Semaphore(size)
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()

    def start(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
