"""What the Azure Functions app needs from the core, without importing azure.functions.

``function_app.py`` stays a thin layer over this module: the settings the host
reads when it indexes the app (the timer's schedule, the change-feed switch, the
run budget from ``host.json``) and one coroutine per trigger.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from worker.build import build_worker
from worker.errors import ConfigurationError
from worker.item import Progress
from worker.runner import RunSummary, Worker
from worker.settings import STAGE_MAP, STORE, Settings
from worker.stages import parse_stage_map
from worker.store import Store, create_store

logger = logging.getLogger(__name__)

SCHEDULE = "WORKER_SCHEDULE"
CHANGE_FEED = "WORKER_CHANGE_FEED"
#: every five minutes, on the minute (NCRONTAB: second minute hour day month weekday)
DEFAULT_SCHEDULE = "0 */5 * * * *"

#: The app settings the change-feed trigger's binding names; the host resolves them.
COSMOS_CONNECTION = "COSMOS"
COSMOS_DATABASE = "COSMOS_DATABASE"
COSMOS_CONTAINER = "COSMOS_CONTAINER"
COSMOS_LEASE_CONTAINER = "COSMOS_LEASE_CONTAINER"

#: The host's own default on the plan with the shortest one (Consumption), used
#: when host.json does not set functionTimeout.
DEFAULT_FUNCTION_TIMEOUT = 300.0
#: A timer run stops claiming this long before the host's timeout, so calls in
#: flight can finish and be recorded: a tenth of the timeout, at least this much.
MIN_MARGIN_SECONDS = 30.0
MARGIN_SHARE = 0.1

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})

_NOT_READY = frozenset(p.value for p in Progress if p is not Progress.READY)

# hh:mm:ss, optionally with days (d.hh:mm:ss) and fractions of a second.
_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)")


@dataclasses.dataclass(frozen=True)
class AppSettings:
    """What the app reads once, when the host indexes it."""

    #: whether the change-feed trigger is registered
    change_feed: bool
    #: seconds a timer run may take; None when the host sets no timeout
    run_budget: float | None


def indexing_settings(environ: Mapping[str, str], host_json: Path) -> AppSettings:
    """Check the settings the bindings refer to and read the run budget.

    Raises ConfigurationError naming the setting, so that a misconfigured app
    fails when it is indexed rather than never running.
    """
    require_schedule(environ)
    change_feed = parse_switch(environ.get(CHANGE_FEED), CHANGE_FEED, default=False)
    if change_feed:
        require_change_feed_settings(environ)
    timeout = read_function_timeout(host_json)
    return AppSettings(change_feed, None if timeout is None else run_budget(timeout))


def require_schedule(environ: Mapping[str, str]) -> str:
    """The timer's schedule: an NCRONTAB expression or an hh:mm:ss interval."""
    raw = environ.get(SCHEDULE, "").strip()
    if not raw:
        raise ConfigurationError(
            f"{SCHEDULE} is not set; the timer trigger's schedule comes from it. "
            f"Set it to an NCRONTAB expression such as {DEFAULT_SCHEDULE!r} (every five minutes)"
        )
    fields = raw.split()
    if len(fields) not in (5, 6) and not _TIMESPAN.fullmatch(raw):
        raise ConfigurationError(
            f"{SCHEDULE} is {raw!r}, which is neither an NCRONTAB expression (six fields, "
            f"second minute hour day month weekday, such as {DEFAULT_SCHEDULE!r}) "
            "nor an interval such as '00:05:00'"
        )
    return raw


def parse_switch(raw: str | None, name: str, *, default: bool) -> bool:
    """An on/off setting; unset or empty means ``default``."""
    if raw is None or not raw.strip():
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def require_change_feed_settings(environ: Mapping[str, str]) -> None:
    """Refuse to register the change-feed trigger without the settings it names."""
    names = (COSMOS_DATABASE, COSMOS_CONTAINER, COSMOS_LEASE_CONTAINER)
    missing = [name for name in names if not environ.get(name, "").strip()]
    if missing:
        raise ConfigurationError(
            f"{CHANGE_FEED} is on, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; the change-feed trigger "
            "reads the database, container and lease container names from them. "
            f"Set them, or set {CHANGE_FEED} to false"
        )
    endpoint = f"{COSMOS_CONNECTION}__accountEndpoint"
    if not (environ.get(COSMOS_CONNECTION, "").strip() or environ.get(endpoint, "").strip()):
        raise ConfigurationError(
            f"{CHANGE_FEED} is on, but neither {endpoint} (identity-based access) nor "
            f"{COSMOS_CONNECTION} (a connection string with a key) is set; the change-feed "
            f"trigger connects through them. Set one, or set {CHANGE_FEED} to false"
        )
    store = environ.get(STORE, "").strip().lower()
    if store != "cosmos":
        # Feed documents carry Cosmos DB ETags, which no other store's versions
        # match: every claim would be refused. Legal, but surely not meant.
        logger.warning(
            "%s is on but %s is not cosmos: items from the change feed will not be claimed",
            CHANGE_FEED,
            STORE,
            extra={"action": "change_feed_without_cosmos"},
        )


def read_function_timeout(host_json: Path) -> float | None:
    """The host's functionTimeout in seconds; None when it is unbounded (-1)."""
    try:
        config = json.loads(host_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"cannot read {str(host_json)!r}: {error}") from error
    raw = config.get("functionTimeout") if isinstance(config, dict) else None
    if raw is None:
        return DEFAULT_FUNCTION_TIMEOUT
    return parse_timespan(str(raw), f"functionTimeout in {host_json.name}")


def parse_timespan(raw: str, name: str) -> float | None:
    """Seconds in a .NET TimeSpan such as ``00:10:00``; None for ``-1`` (unbounded)."""
    text = raw.strip()
    if text == "-1":
        return None
    match = _TIMESPAN.fullmatch(text)
    if match is None:
        raise ConfigurationError(
            f"{name} is {raw!r}; expected hh:mm:ss such as '00:10:00', or -1 for no limit"
        )
    days, hours, minutes, seconds = match.groups()
    if int(hours) > 23 or int(minutes) > 59 or float(seconds) >= 60:
        raise ConfigurationError(
            f"{name} is {raw!r}; hours go up to 23 and minutes and seconds up to 59"
        )
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if total <= 0:
        raise ConfigurationError(f"{name} is {raw!r}; it must be longer than zero")
    return total


def run_budget(timeout: float) -> float:
    """How long a timer run may take within the host's timeout, leaving a margin."""
    margin = max(timeout * MARGIN_SHARE, MIN_MARGIN_SECONDS)
    budget = timeout - margin
    if budget <= 0:
        raise ConfigurationError(
            f"functionTimeout of {timeout:g} s leaves no time for a run after the "
            f"{margin:g} s margin the worker keeps; give at least "
            f"{2 * MIN_MARGIN_SECONDS:g} s ('00:01:00')"
        )
    return budget


async def build_from_environment(environ: Mapping[str, str]) -> Worker:
    """A worker built from the app settings, on the shared store for them."""
    settings = Settings.from_environment(environ)
    if settings.stage_map is not None:
        # Parsed here first only so that the message names the setting.
        try:
            parse_stage_map(settings.stage_map)
        except ConfigurationError as error:
            raise ConfigurationError(f"{STAGE_MAP}: {error}") from error
    store = await shared_store(settings.store, environ)
    return build_worker(settings, environ, store=store)


# Invocations share one opened store per event loop and configuration: a Cosmos
# DB client reads the account's metadata and gets its token once, not once per
# invocation. Stores are bound to the loop they were opened on, hence the key.
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], Store]] = (
    weakref.WeakKeyDictionary()
)


async def shared_store(spec: str, environ: Mapping[str, str]) -> Store:
    """The opened store for ``spec`` and the Cosmos DB settings in ``environ``."""
    stores = _shared.setdefault(asyncio.get_running_loop(), {})
    connection = sorted(f"{k}={v}" for k, v in environ.items() if k.startswith("COSMOS"))
    key = (spec, environ.get("AZURE_CLIENT_ID", ""), *connection)
    store = stores.get(key)
    if store is None:
        store = create_store(spec, environ)
        await store.open()
        # Another invocation may have opened one meanwhile; keep the first.
        if key in stores:
            await store.close()
        store = stores.setdefault(key, store)
    return store


async def close_shared_stores() -> None:
    """Close the stores shared on this event loop (for tests and shutdown)."""
    stores = _shared.pop(asyncio.get_running_loop(), {})
    for store in stores.values():
        await store.close()


async def run_timer(
    environ: Mapping[str, str], budget: float | None, past_due: bool = False
) -> RunSummary:
    """One timer invocation: the stage loop over every configured stage."""
    started = time.monotonic()
    if past_due:
        logger.warning(
            "the timer is past due: a scheduled run was missed or delayed",
            extra={"action": "timer_past_due"},
        )
    worker = await build_from_environment(environ)
    return await worker.run(deadline=None if budget is None else started + budget)


async def run_feed(
    environ: Mapping[str, str], documents: Iterable[Any], budget: float | None = None
) -> RunSummary:
    """One change-feed invocation: claim and process the Ready items among ``documents``."""
    started = time.monotonic()
    batch = feed_documents(documents)
    if not any(_may_need_work(document) for document in batch):
        # Most of the feed is the worker's own writes (InProgress, Completed,
        # Failed) coming back; they need neither settings nor a store.
        logger.debug(
            "change feed: %d documents, none Ready", len(batch), extra={"action": "feed_idle"}
        )
        return RunSummary([])
    worker = await build_from_environment(environ)
    deadline = None if budget is None else started + budget
    summary = await worker.process_documents(batch, deadline)
    logger.info(
        "change feed: %d documents, %d claimed, %d completed, %d failed",
        len(batch),
        summary.claimed,
        summary.completed,
        summary.failed,
        extra={"action": "feed_finished", "summary": summary.as_dict()},
    )
    return summary


def feed_documents(documents: Iterable[Any]) -> list[dict[str, Any]]:
    """Plain dicts from the trigger's documents; anything else is skipped with a warning."""
    batch = []
    for document in documents:
        if isinstance(document, Mapping):
            batch.append(dict(document))
        else:
            logger.warning(
                "change feed: skipping a %s that is not a JSON object",
                type(document).__name__,
                extra={"action": "bad_document", "item_id": None},
            )
    return batch


def _may_need_work(document: Mapping[str, Any]) -> bool:
    # Only a well-formed item that is not Ready surely needs nothing; anything
    # else goes to the worker, which processes it or says why not.
    progress = document.get("progress")
    well_formed = isinstance(document.get("id"), str) and isinstance(document.get("state"), str)
    return not (well_formed and progress in _NOT_READY)
