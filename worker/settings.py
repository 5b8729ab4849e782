"""Settings: one set of names for app settings, the command line's environment and tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from worker.errors import ConfigurationError
from worker.runner import DEFAULT_CONCURRENCY, DEFAULT_LEASE_SECONDS

STORE = "WORKER_STORE"
STAGES = "WORKER_STAGES"
STAGE_MAP = "WORKER_STAGE_MAP"
MODULES = "WORKER_MODULES"
CONCURRENCY = "WORKER_CONCURRENCY"
LEASE_SECONDS = "WORKER_LEASE_SECONDS"
STAGE_TIMEOUT = "WORKER_STAGE_TIMEOUT"
GRACE_SECONDS = "WORKER_GRACE_SECONDS"

DEFAULT_STORE = "routing-items.db"
DEFAULT_GRACE_SECONDS = 30.0
MAX_CONCURRENCY = 1000


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a worker is built from."""

    store: str = DEFAULT_STORE
    #: stages in order; None means every mapped stage
    stages: tuple[str, ...] | None = None
    #: the stage map as given: JSON text or the path of a JSON file
    stage_map: str | None = None
    modules: tuple[str, ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: seconds a stage call may take, for stages whose map entry sets none
    stage_timeout: float | None = None
    #: after a stop signal, seconds calls in flight may take before they are given up
    grace_seconds: float = DEFAULT_GRACE_SECONDS

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Settings:
        def value(name: str) -> str | None:
            raw = environ.get(name, "").strip()
            return raw or None

        concurrency = value(CONCURRENCY)
        lease = value(LEASE_SECONDS)
        timeout = value(STAGE_TIMEOUT)
        grace = value(GRACE_SECONDS)
        return cls(
            store=value(STORE) or DEFAULT_STORE,
            stages=split_list(value(STAGES), STAGES),
            stage_map=value(STAGE_MAP),
            modules=split_list(value(MODULES), MODULES) or (),
            concurrency=(
                parse_concurrency(concurrency, CONCURRENCY) if concurrency else DEFAULT_CONCURRENCY
            ),
            lease_seconds=(parse_seconds(lease, LEASE_SECONDS) if lease else DEFAULT_LEASE_SECONDS),
            stage_timeout=parse_seconds(timeout, STAGE_TIMEOUT) if timeout else None,
            grace_seconds=(parse_seconds(grace, GRACE_SECONDS) if grace else DEFAULT_GRACE_SECONDS),
        )

    def replace(self, **changes: object) -> Settings:
        """A copy with the given fields changed; None values leave a field as it is."""
        return dataclasses.replace(
            self,
            **{k: v for k, v in changes.items() if v is not None},  # type: ignore[arg-type]
        )


def split_list(raw: str | None, name: str) -> tuple[str, ...] | None:
    """A comma-separated list; None when nothing is given."""
    if raw is None:
        return None
    parts = tuple(part.strip() for part in raw.split(","))
    if not all(parts):
        raise ConfigurationError(
            f"{name} has an empty entry in {raw!r}; give names separated by single commas"
        )
    return parts


def parse_concurrency(raw: str, name: str) -> int:
    value = int(raw) if raw.strip().lstrip("+-").isdigit() else 0
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigurationError(
            f"{name} must be a whole number from 1 to {MAX_CONCURRENCY}, got {raw!r}"
        )
    return value


def parse_seconds(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value
