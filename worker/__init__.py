"""A worker that moves routing items through workflow stages."""

from worker.item import Item, Progress
from worker.runner import RunSummary, StageSummary, Worker
from worker.stages import Stage, stage_function

__all__ = ["Item", "Progress", "RunSummary", "Stage", "StageSummary", "Worker", "stage_function"]
