"""Lease renewal: while a stage function runs, its claim's lease is kept alive.

One task per worker renews every claim that is due, rather than one task per
item: a task per item costs more than the claim itself when calls are short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from worker.item import Item
from worker.store.base import Store

logger = logging.getLogger(__name__)

#: After a renewal failed (the store erred), how soon it is tried again.
RETRY_SECONDS = 1.0


@dataclasses.dataclass(eq=False)
class HeldClaim:
    """A claim whose call is running; ``item`` is its latest version."""

    item: Item
    lease: float
    due: float  # time.monotonic() at which the lease is next renewed
    renewal: asyncio.Task[None] | None = None


class LeaseKeeper:
    """Renews the leases of held claims at a third of their length."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: set[HeldClaim] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._wake_at = float("inf")

    def hold(self, item: Item, lease: float) -> HeldClaim:
        """Keep renewing ``item``'s lease until it is released."""
        claim = HeldClaim(item, lease, time.monotonic() + lease / 3)
        self._held.add(claim)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._wake_at = claim.due
            self._task = asyncio.create_task(self._keep())
        elif claim.due < self._wake_at and self._wake is not None:
            self._wake.set()  # a shorter lease than any other: wake up earlier
        return claim

    async def release(self, claim: HeldClaim) -> Item:
        """Stop renewing; wait for a renewal in flight; return the latest version."""
        self._held.discard(claim)
        if claim.renewal is not None:
            await asyncio.gather(claim.renewal, return_exceptions=True)
        return claim.item

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _keep(self) -> None:
        assert self._wake is not None
        while self._held:
            now = time.monotonic()
            for claim in list(self._held):
                if claim.renewal is None and claim.due <= now:
                    claim.renewal = asyncio.create_task(self._renew(claim))
            waiting = [claim.due for claim in self._held if claim.renewal is None]
            self._wake_at = min(waiting, default=now + RETRY_SECONDS)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(self._wake_at - now, 0.001))

    async def _renew(self, claim: HeldClaim) -> None:
        try:
            renewed = await self.store.renew(claim.item, claim.lease)
        except Exception as error:
            claim.due = time.monotonic() + min(RETRY_SECONDS, claim.lease / 3)
            logger.warning(
                "could not renew the lease on item %s: %s: %s",
                claim.item.id,
                type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "",
                extra={"action": "renew_failed", "item_id": claim.item.id},
            )
        else:
            if renewed is None:
                self._held.discard(claim)
                logger.warning(
                    "lost the claim on item %s while its function was running",
                    claim.item.id,
                    extra={"action": "claim_taken", "item_id": claim.item.id},
                )
            else:
                claim.item = renewed
                claim.due = time.monotonic() + claim.lease / 3
        finally:
            claim.renewal = None
            if self._wake is not None:
                self._wake.set()
