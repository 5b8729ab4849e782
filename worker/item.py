"""The routing item: an immutable view of one document, and its progress values."""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from worker.errors import BadDocumentError

logger = logging.getLogger(__name__)

#: Worker-owned fields. The worker writes these and ``progress``, nothing else.
CLAIM_ID = "claimId"  # token of the claim that moved the item to InProgress
CLAIMED_BY = "claimedBy"  # which worker holds (or last held) the claim
LEASE_UNTIL = "leaseUntil"  # when the claim may be taken away by recovery
PROGRESS_AT = "progressChangedAt"  # when progress last changed
LAST_ERROR = "lastError"  # {"type", "message"} of the failure, null otherwise
WORKER_FIELDS = (CLAIM_ID, CLAIMED_BY, LEASE_UNTIL, PROGRESS_AT, LAST_ERROR)

#: Longest error message stored in ``lastError``; longer ones are cut.
MAX_ERROR_MESSAGE = 2000


class Progress(enum.StrEnum):
    """Where an item stands in its stage; the values are the stored strings."""

    READY = "Ready"  # waiting for a worker
    IN_PROGRESS = "InProgress"  # claimed; the stage function is running
    COMPLETED = "Completed"  # the stage function returned
    FAILED = "Failed"  # the stage function raised, or its lease expired


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, so stored times sort as strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """The type and message of an exception, bounded in size for storage."""

    type: str
    message: str

    @classmethod
    def from_exception(cls, error: BaseException) -> ErrorInfo:
        return cls(type(error).__name__, str(error))

    def as_field(self) -> dict[str, str]:
        message = self.message
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[: MAX_ERROR_MESSAGE - 1] + "…"
        return {"type": self.type[:200], "message": message}


@dataclasses.dataclass(frozen=True)
class Item:
    """One routing item as read from a store.

    ``document`` is the whole stored document, unknown fields included, as a
    read-only mapping: a stage function cannot change what goes back to the
    store, which writes only worker-owned fields. ``version`` is the store's
    concurrency token (an ETag in Cosmos DB, a counter in SQLite).
    """

    id: str
    state: str
    progress: Progress
    document: Mapping[str, Any]
    version: str

    @classmethod
    def from_document(cls, document: Mapping[str, Any], version: str) -> Item:
        """Build an item, refusing documents that lack a usable id, state or progress."""
        item_id = document.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise BadDocumentError(f"document has no string 'id' (got {item_id!r})")
        state = document.get("state")
        if not isinstance(state, str) or not state:
            raise BadDocumentError(f"item {item_id!r} has no string 'state' (got {state!r})")
        raw_progress = document.get("progress")
        try:
            if not isinstance(raw_progress, str):
                raise ValueError(raw_progress)
            progress = Progress(raw_progress)
        except ValueError:
            accepted = ", ".join(p.value for p in Progress)
            raise BadDocumentError(
                f"item {item_id!r} has progress {raw_progress!r}; expected one of {accepted}"
            ) from None
        return cls(item_id, state, progress, MappingProxyType(dict(document)), version)

    @property
    def retry_count(self) -> int | None:
        value = self.document.get("retryCount")
        return value if isinstance(value, int) else None

    @property
    def claim_id(self) -> str | None:
        value = self.document.get(CLAIM_ID)
        return value if isinstance(value, str) else None

    @property
    def claimed_by(self) -> str | None:
        value = self.document.get(CLAIMED_BY)
        return value if isinstance(value, str) else None

    @property
    def lease_until(self) -> str | None:
        value = self.document.get(LEASE_UNTIL)
        return value if isinstance(value, str) else None

    @property
    def last_error(self) -> Mapping[str, Any] | None:
        value = self.document.get(LAST_ERROR)
        return value if isinstance(value, Mapping) else None

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the document, as ``dict.get``; convenient in stage functions."""
        return self.document.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.document[key]


def item_or_none(document: Mapping[str, Any], version: str) -> Item | None:
    """The item, or None with a warning naming it when the document is not one.

    Stores and the change feed pass over such documents and leave them as they are.
    """
    try:
        return Item.from_document(document, version)
    except BadDocumentError as error:
        item_id = document.get("id")
        logger.warning(
            "skipping item %r: %s",
            item_id,
            error,
            extra={"action": "bad_document", "item_id": item_id},
        )
        return None


def claim_fields(claim_id: str, owner: str, lease_until: datetime, now: datetime) -> dict[str, Any]:
    """The fields a claim writes."""
    return {
        "progress": Progress.IN_PROGRESS.value,
        CLAIM_ID: claim_id,
        CLAIMED_BY: owner,
        LEASE_UNTIL: format_time(lease_until),
        PROGRESS_AT: format_time(now),
        LAST_ERROR: None,
    }


def finish_fields(progress: Progress, error: ErrorInfo | None, now: datetime) -> dict[str, Any]:
    """The fields a finish (or a recovery) writes; the claim id stays for the record."""
    return {
        "progress": progress.value,
        LEASE_UNTIL: None,
        PROGRESS_AT: format_time(now),
        LAST_ERROR: error.as_field() if error is not None else None,
    }
