"""Example stage: Initialize. Checks that an item is ready to enter the pipeline."""

from __future__ import annotations

import logging

from stages.simulate import raise_if_asked
from worker.item import Item
from worker.stages import stage_function

logger = logging.getLogger(__name__)

MODES = ("Default", "Strict")


@stage_function("initialize", stage="Initialize")
def initialize(item: Item, mode: str = "Default") -> None:
    """In ``Strict`` mode, require a non-empty ``name`` field."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    raise_if_asked(item)
    if mode == "Strict" and not item.get("name"):
        raise ValueError(f"item {item.id!r} has no 'name', which Strict mode requires")
    logger.debug("initialized item %s in %s mode", item.id, mode)
