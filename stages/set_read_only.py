"""Example stage: SetReadOnly. An async stage function."""

from __future__ import annotations

import asyncio
import logging

from stages.simulate import raise_if_asked
from worker.item import Item
from worker.stages import stage_function

logger = logging.getLogger(__name__)


@stage_function("set_read_only", stage="SetReadOnly")
async def set_read_only(item: Item, delay: float = 0.0) -> None:
    """Stand-in for locking a resource; waits ``delay`` seconds without blocking."""
    await asyncio.sleep(delay)
    raise_if_asked(item)
    logger.debug("set item %s read-only", item.id)
