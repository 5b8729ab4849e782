"""Item stores: the contract and its implementations."""

from __future__ import annotations

from collections.abc import Mapping

from worker.store.base import Counts, Store
from worker.store.sqlite import SqliteStore

__all__ = ["Counts", "SqliteStore", "Store", "create_store"]


def create_store(spec: str, environ: Mapping[str, str] | None = None) -> Store:
    """The store named by ``spec``: ``cosmos`` (settings from ``environ``) or a SQLite path."""
    if spec.strip().lower() == "cosmos":
        import os

        from worker.store.cosmos import CosmosStore

        return CosmosStore.from_environment(os.environ if environ is None else environ)
    return SqliteStore(spec)
