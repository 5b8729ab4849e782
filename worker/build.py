"""Build a worker from settings: load stage modules, resolve the map, open the store."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping

from worker.errors import ConfigurationError
from worker.processor import Outcome
from worker.runner import StageSummary, Worker
from worker.settings import Settings
from worker.stages import (
    Stage,
    build_stages,
    check_kwargs,
    default_stages,
    import_stage_package,
    load_modules,
    parse_stage_map,
    resolve_function,
)
from worker.store import Store, create_store

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """The stages a worker will run, and those it must skip with the reason."""

    stages: list[Stage]
    skipped: dict[str, str]


def plan_stages(settings: Settings) -> StagePlan:
    """Import stage modules and resolve the stage map; raise on malformed configuration."""
    import_stage_package()
    load_modules(settings.modules)
    entries = parse_stage_map(settings.stage_map) if settings.stage_map else {}
    stages, skipped = build_stages(settings.stages, entries, settings.stage_timeout)
    return StagePlan(stages, skipped)


def mapped_stage_names(settings: Settings) -> set[str]:
    """Every stage that the registered defaults or the stage map name."""
    entries = parse_stage_map(settings.stage_map) if settings.stage_map else {}
    return set(default_stages()) | set(entries)


def check_stage_names(names: tuple[str, ...], settings: Settings, option: str) -> None:
    """Refuse stage names typed on the command line that nothing maps."""
    known = mapped_stage_names(settings)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigurationError(
            f"{option} names stages that no function is mapped to: {', '.join(unknown)}; "
            f"mapped stages are: {', '.join(sorted(known)) or 'none'}"
        )


def build_worker(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    on_outcome: Callable[[str, Outcome], None] | None = None,
    store: Store | None = None,
) -> Worker:
    """A worker over the configured stages, on ``store`` or on a new store that
    still has to be opened."""
    plan = plan_stages(settings)
    if store is None:
        store = create_store(settings.store, os.environ if environ is None else environ)
    return Worker(
        store,
        plan.stages,
        skipped=plan.skipped,
        concurrency=settings.concurrency,
        lease_seconds=settings.lease_seconds,
        on_outcome=on_outcome,
    )


async def process_test_task(store: Store, concurrency: int = 8, **kwargs: float) -> StageSummary:
    """Process every Ready item of the TestTask stage with the test task.

    ``kwargs`` (``sleep``, ``failure_rate``) go to the test task. The store must
    be open.
    """
    import_stage_package()
    function = resolve_function("test_task")
    check_kwargs(function, kwargs)
    stage = Stage("TestTask", function, "test_task", kwargs)
    summary = await Worker(store, [stage], concurrency=concurrency).run()
    return summary.stages[0]
