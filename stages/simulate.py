"""Lets demo and test items decide the outcome of the example stages."""

from __future__ import annotations

from worker.item import Item

#: An item with this field fails in the example stages, with its value as message.
SIMULATE_FAILURE = "simulateFailure"


class SimulatedFailure(Exception):
    """A failure the item itself asked for."""


def raise_if_asked(item: Item) -> None:
    message = item.get(SIMULATE_FAILURE)
    if message:
        raise SimulatedFailure(str(message))
