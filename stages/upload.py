"""Example stage: Upload, with parameters a stage map can set.

{"Upload": {"function": "upload", "kwargs": {"timeout": 300, "retry_count": 3}}}
"""

from __future__ import annotations

import logging

from stages.simulate import raise_if_asked
from worker.item import Item
from worker.stages import stage_function

logger = logging.getLogger(__name__)


@stage_function("upload", stage="Upload")
def upload(item: Item, timeout: float = 300, retry_count: int = 3) -> None:
    """Stand-in for an upload with a timeout and a number of attempts."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if retry_count < 0:
        raise ValueError(f"retry_count must not be negative, got {retry_count!r}")
    raise_if_asked(item)
    logger.debug("uploaded item %s (timeout %s s, up to %d retries)", item.id, timeout, retry_count)
