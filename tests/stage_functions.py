"""Stage functions that tests name in stage maps as ``tests.stage_functions:NAME``."""

from __future__ import annotations

from typing import Any

#: item id -> keyword arguments received by record_upload
received: dict[str, dict[str, Any]] = {}


def record_upload(item: Any, timeout: float = 300, retry_count: int = 3) -> None:
    received[item.id] = {"timeout": timeout, "retry_count": retry_count}
