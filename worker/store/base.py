"""The contract every item store implements.

All operations are coroutines. A lost race is an ordinary result (``None`` or
``False``), never an exception; exceptions mean the store itself failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from worker.item import ErrorInfo, Item, Progress

#: counts[stage][progress] -> number of items
Counts = dict[str, dict[str, int]]


class Store(Protocol):
    """Where routing items live."""

    #: A short description for logs and messages; never contains a secret.
    description: str

    async def open(self) -> None:
        """Connect and check the store is usable; raise StoreUnavailableError if not."""

    async def close(self) -> None:
        """Release connections."""

    def ready_items(self, stage: str) -> AsyncIterator[Item]:
        """Yield the Ready items of ``stage``, fetched a page at a time.

        Documents that cannot be read as items are logged and passed over.
        """
        ...

    async def claim(self, item: Item, owner: str, lease_seconds: float) -> Item | None:
        """Move ``item`` from Ready to InProgress if it is unchanged since it was read.

        Returns the claimed item (with its new version), or None when another
        claimant won or the item changed.
        """
        ...

    async def renew(self, item: Item, lease_seconds: float) -> Item | None:
        """Extend the lease of a claim we hold; None when the claim was taken away."""
        ...

    async def finish(self, item: Item, progress: Progress, error: ErrorInfo | None = None) -> bool:
        """Record Completed or Failed for a claimed item.

        Conditional on the claim (``item.claim_id``) still being held and the
        item still InProgress; other fields changed meanwhile by someone else
        are kept. Returns False when the claim is no longer ours.
        """
        ...

    def expired_claims(self, now: datetime) -> AsyncIterator[Item]:
        """Yield InProgress items whose lease ended before ``now``."""
        ...

    async def fail_expired(self, item: Item, error: ErrorInfo, now: datetime) -> bool:
        """Mark an expired claim Failed, only if it is still that same expired claim."""
        ...

    async def add(self, documents: Iterable[Mapping[str, Any]]) -> int:
        """Insert new documents (each with id, state, progress); return how many."""
        ...

    async def get(self, item_id: str) -> Item | None:
        """Read one item by id; None if there is none."""
        ...

    async def counts(self) -> Counts:
        """Number of items by stage and progress."""
        ...

    async def delete(self, item_ids: Iterable[str]) -> int:
        """Delete items by id; return how many existed."""
        ...
