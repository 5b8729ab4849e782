"""The command line: ``python -m worker run | seed | status | recover | setup``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TextIO

from worker.build import build_worker, check_stage_names
from worker.errors import ConfigurationError, StoreUnavailableError, WorkerError
from worker.item import Progress, format_time, utc_now
from worker.processor import Outcome
from worker.runner import RunSummary, StageSummary, Worker
from worker.settings import (
    CONCURRENCY,
    Settings,
    parse_concurrency,
    parse_seconds,
    split_list,
)
from worker.store import Counts, Store, create_store

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2  # bad options or settings; nothing was changed
EXIT_STORE_UNAVAILABLE = 3  # the store could not be opened; nothing was changed
EXIT_STORE_FAILED = 4  # the store failed during the run; see the error
EXIT_INTERRUPTED = 130  # stopped by a signal after recording calls in flight

DEMO_STAGES = ("Initialize", "SetReadOnly", "Upload", "TestTask")
DEMO_ITEMS_PER_STAGE = 5


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        settings = Settings.from_environment(os.environ)
        settings = settings.replace(store=args.store)
        result: int = asyncio.run(args.command(args, settings))
        return result
    except ConfigurationError as error:
        print(f"worker: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreUnavailableError as error:
        print(f"worker: store unavailable: {error}", file=sys.stderr)
        return EXIT_STORE_UNAVAILABLE
    except WorkerError as error:
        print(f"worker: {error}", file=sys.stderr)
        return EXIT_STORE_FAILED


# ---------------------------------------------------------------- commands


async def run_command(args: argparse.Namespace, settings: Settings) -> int:
    stages = split_list(args.stages, "--stages") if args.stages is not None else None
    settings = settings.replace(
        stages=stages,
        stage_map=args.stage_map,
        modules=split_list(args.modules, "--modules") if args.modules else None,
        concurrency=(
            parse_concurrency(args.concurrency, "--concurrency") if args.concurrency else None
        ),
    )
    deadline_seconds = parse_seconds(args.deadline, "--deadline") if args.deadline else None
    if args.grace:
        settings = settings.replace(grace_seconds=parse_seconds(args.grace, "--grace"))
    display = _Display(sys.stderr) if sys.stderr.isatty() and not args.verbose else None
    worker = build_worker(settings, on_outcome=display.count if display else None)
    if stages is not None:
        check_stage_names(stages, settings, "--stages")
    await worker.store.open()
    signals = _StopOnSignal(worker, settings.grace_seconds)
    try:
        if args.seed_demo:
            await _seed_demo(worker.store)
        deadline = time.monotonic() + deadline_seconds if deadline_seconds else None
        try:
            summary = await worker.run(deadline)
        except WorkerError:
            raise
        except Exception as error:
            raise WorkerError(
                f"the run stopped because {worker.store.description} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
    finally:
        signals.restore()
        if display:
            display.close()
        await worker.store.close()

    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(format_summary(summary))
    if worker.aborted:
        # Threads of plain functions given up on may still run; the interpreter
        # would wait for them at exit. Everything is recorded: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED if signals.received else EXIT_OK


async def seed_command(args: argparse.Namespace, settings: Settings) -> int:
    stages = split_list(args.stage, "--stage") or ()
    if args.count < 0:
        raise ConfigurationError(f"--count must not be negative, got {args.count}")
    progress = Progress(args.progress)
    async with _opened(settings) as store:
        added = await store.add(
            [doc for stage in stages for doc in seed_documents(stage, args.count, progress)]
        )
    print(f"added {added} {args.progress} items to {', '.join(stages)} in {store.description}")
    return EXIT_OK


async def status_command(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened(settings) as store:
        counts = await store.counts()
    if args.json:
        print(json.dumps(counts, indent=2, sort_keys=True))
    else:
        print(format_counts(counts))
    return EXIT_OK


async def recover_command(args: argparse.Namespace, settings: Settings) -> int:
    async with _opened(settings) as store:
        recovered = await Worker(store, []).recover()
    print(f"marked {recovered} items with an expired lease as Failed")
    return EXIT_OK


async def setup_command(args: argparse.Namespace, settings: Settings) -> int:
    store = create_store(settings.store)
    create: Callable[[], Any] | None = getattr(store, "create_resources", None)
    if create is not None:
        await create()
    await store.open()
    await store.close()
    print(f"{store.description} is ready")
    return EXIT_OK


# ---------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[Store]:
    store = create_store(settings.store)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def seed_documents(stage: str, count: int, progress: Progress) -> list[dict[str, Any]]:
    now = format_time(utc_now())
    prefix = "".join(ch for ch in stage.lower() if ch.isalnum()) or "item"
    return [
        {
            "id": f"{prefix}-{uuid.uuid4().hex[:12]}",
            "state": stage,
            "progress": progress.value,
            "retryCount": 0,
            "createdAt": now,
        }
        for _ in range(count)
    ]


async def _seed_demo(store: Store) -> None:
    if await store.counts():
        return
    documents = [
        doc
        for stage in DEMO_STAGES
        for doc in seed_documents(stage, DEMO_ITEMS_PER_STAGE, Progress.READY)
    ]
    # One Upload item asks to fail, so that the demo shows a recorded failure.
    for doc in documents:
        if doc["state"] == "Upload":
            doc["simulateFailure"] = "demo: the upload target refused the file"
            break
    await store.add(documents)
    print(f"seeded {len(documents)} demo items in {store.description}", file=sys.stderr)


def format_summary(summary: RunSummary) -> str:
    header = ("stage", "claimed", "completed", "failed", "lost", "note")
    rows = [
        (s.stage, str(s.claimed), str(s.completed), str(s.failed), str(s.lost), _note(s))
        for s in summary.stages
    ]
    lines = _table(header, rows, note=True)
    tail = f"{summary.claimed} items in {summary.seconds:.1f} s"
    if summary.recovered:
        tail += f"; {summary.recovered} expired claims marked Failed"
    if summary.stopped:
        tail += f"; stopped early: {summary.stopped}"
    return "\n".join([*lines, tail])


def format_counts(counts: Counts) -> str:
    known = [p.value for p in Progress]
    # Progress values the worker does not know are shown too, so nothing hides.
    odd = sorted({value for stage in counts.values() for value in stage} - set(known))
    header = ("stage", *known, *odd)
    rows = [
        (stage, *(str(counts[stage].get(value, 0)) for value in header[1:]))
        for stage in sorted(counts)
    ]
    if not rows:
        return "no items"
    return "\n".join(_table(header, rows))


def _note(summary: StageSummary) -> str:
    if summary.skipped:
        return f"skipped: {summary.skipped}"
    notes = []
    if summary.abandoned:
        notes.append(f"{summary.abandoned} claims taken away")
    if summary.errors:
        notes.append(f"{summary.errors} store errors")
    return ", ".join(notes)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], note: bool = False) -> list[str]:
    """Columns: a left-aligned name, right-aligned numbers, and an optional note."""
    numbers = len(header) - 1 - int(note)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [row[i].rjust(widths[i]) for i in range(1, numbers + 1)]
        if note:
            cells.append(row[-1])
        return "  ".join(cells).rstrip()

    return [line(header), *(line(r) for r in rows)]


class _Display:
    """A single status line, rewritten in place, for runs on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.counts: dict[str, dict[Outcome, int]] = {}
        self.last = 0.0

    def count(self, stage: str, outcome: Outcome) -> None:
        stage_counts = self.counts.setdefault(stage, dict.fromkeys(Outcome, 0))
        stage_counts[outcome] += 1
        now = time.monotonic()
        if now - self.last >= 0.1:
            self.last = now
            self.draw()

    def draw(self) -> None:
        parts = [
            f"{stage}: {c[Outcome.COMPLETED]} done, {c[Outcome.FAILED]} failed"
            for stage, c in self.counts.items()
        ]
        self.stream.write("\r\033[K" + " | ".join(parts))
        self.stream.flush()

    def close(self) -> None:
        if self.counts:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()


class _StopOnSignal:
    """First SIGINT or SIGTERM: stop claiming and give calls in flight a grace period
    to finish; calls still running after it are recorded as Failed. Second: quit."""

    def __init__(self, worker: Worker, grace: float) -> None:
        self.worker = worker
        self.grace = grace
        self.received: int | None = None
        self.loop = asyncio.get_running_loop()
        self.installed: list[signal.Signals] = []
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(number, self._handle, number)
                self.installed.append(number)
            except (NotImplementedError, RuntimeError):
                pass

    def _handle(self, number: signal.Signals) -> None:
        if self.received is not None:
            print("worker: second signal, quitting without waiting", file=sys.stderr)
            os._exit(EXIT_INTERRUPTED)
        self.received = number
        self.worker.stop(f"received {number.name}", grace=self.grace)

    def restore(self) -> None:
        for number in self.installed:
            self.loop.remove_signal_handler(number)


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    if sys.stderr.isatty() and not getattr(args, "verbose", False):
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker", description="Move routing items through workflow stages."
    )
    parser.add_argument(
        "--store",
        help="'cosmos', or the path of a SQLite file (default: WORKER_STORE, "
        "else routing-items.db)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every item")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(dest="name", required=True, metavar="command")

    run = commands.add_parser("run", help="process the Ready items of the configured stages")
    run.add_argument("--stages", help="stages to process, in order, comma-separated")
    run.add_argument("--stage-map", help="JSON object, or path of a JSON file, mapping stages")
    run.add_argument("--modules", help="extra stage modules: file paths or module names")
    run.add_argument("--concurrency", help=f"items processed at once (default: {CONCURRENCY})")
    run.add_argument("--deadline", help="seconds the run may take; no claims after that")
    run.add_argument(
        "--grace",
        help="after SIGINT or SIGTERM, seconds calls in flight may take before their "
        "items are recorded as Failed (default: WORKER_GRACE_SECONDS, else 30)",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument(
        "--seed-demo", action="store_true", help="add demo items first if the store is empty"
    )
    run.set_defaults(command=run_command)

    seed = commands.add_parser("seed", help="add items, for demos and tests")
    seed.add_argument("--stage", required=True, help="stage (or comma-separated stages)")
    seed.add_argument("--count", type=int, default=10, help="items per stage (default 10)")
    seed.add_argument(
        "--progress",
        default=Progress.READY.value,
        choices=[p.value for p in Progress],
        help="progress of the new items (default Ready)",
    )
    seed.set_defaults(command=seed_command)

    status = commands.add_parser("status", help="count items by stage and progress")
    status.add_argument("--json", action="store_true", help="print counts as JSON")
    status.set_defaults(command=status_command)

    recover = commands.add_parser("recover", help="mark items whose lease expired as Failed")
    recover.set_defaults(command=recover_command)

    setup = commands.add_parser("setup", help="create the store's database and containers")
    setup.set_defaults(command=setup_command)
    return parser
