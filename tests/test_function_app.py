"""The Functions app without the host: its bindings as JSON, its handlers called
with real trigger objects against SQLite and the Cosmos DB test server."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from tests.conftest import make_document
from tests.cosmos import server_environment, unique_name
from worker import functions
from worker.errors import ConfigurationError
from worker.item import Item, Progress
from worker.stages import stage_function
from worker.store import Store
from worker.store.cosmos import CosmosStore
from worker.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent

#: item id -> calls of the stage functions below, counted outside any store
stage_calls: Counter[str] = Counter()


@stage_function("function_app_count")
async def count(item: Item) -> None:
    stage_calls[item.id] += 1
    await asyncio.sleep(0)


@stage_function("function_app_break")
async def break_item(item: Item) -> None:
    stage_calls[item.id] += 1
    raise RuntimeError(f"item {item.id} broke on purpose")


APP_ENV = {
    "WORKER_SCHEDULE": "0 */5 * * * *",
    "WORKER_STAGES": "Count,Broken",
    "WORKER_STAGE_MAP": json.dumps({"Count": "function_app_count", "Broken": "function_app_break"}),
}
FEED_ENV = {
    "WORKER_CHANGE_FEED": "true",
    "COSMOS_DATABASE": "OrchestratorDb",
    "COSMOS_CONTAINER": "RoutingItems",
    "COSMOS_LEASE_CONTAINER": "leases",
    "COSMOS__accountEndpoint": "https://example.documents.azure.com:443/",
}

Handler = Callable[[Any], Awaitable[None]]


@pytest.fixture(autouse=True)
def clear_calls() -> None:
    stage_calls.clear()


def load_module(
    monkeypatch: pytest.MonkeyPatch,
    environ: Mapping[str, str],
    path: Path = ROOT / "function_app.py",
) -> ModuleType:
    """Import function_app afresh, as the host does, with exactly these settings."""
    for name in list(os.environ):
        if name.startswith(("WORKER_", "COSMOS")):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("function_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LoadedApp:
    """An imported function_app and the functions the host would index in it."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        # Indexing happens once per app: a second get_functions() call fails on
        # duplicate function names.
        self.functions = {f.get_function_name(): f for f in module.app.get_functions()}

    def bindings(self) -> dict[str, list[dict[str, Any]]]:
        """What the host receives: each function's bindings, parsed from JSON."""
        return {
            name: [json.loads(raw) for raw in function.get_raw_bindings()]
            for name, function in self.functions.items()
        }

    def handler(self, name: str) -> Handler:
        user_function: Handler = self.functions[name].get_user_function()
        return user_function


def load_app(monkeypatch: pytest.MonkeyPatch, environ: Mapping[str, str]) -> LoadedApp:
    return LoadedApp(load_module(monkeypatch, environ))


def feed_batch(documents: Iterable[Mapping[str, Any]]) -> func.DocumentList:
    return func.DocumentList([func.Document.from_dict(dict(d)) for d in documents])


async def feed_copy(store: Store, item_id: str) -> dict[str, Any]:
    """The document as the change feed would deliver it now, with its version as ``_etag``.

    From Cosmos DB, the stored document with its system properties, as the feed
    carries them. SQLite has no ETag: its version counter stands in for one, so
    that the same conditional claim applies.
    """
    if isinstance(store, CosmosStore):
        raw: dict[str, Any] = await store.container.read_item(item_id, partition_key=item_id)
        return {**raw, "_lsn": 1}
    item = await store.get(item_id)
    assert item is not None
    return {**item.document, "_etag": item.version}


async def feed_copies(store: Store, item_ids: Iterable[str]) -> list[dict[str, Any]]:
    return [await feed_copy(store, item_id) for item_id in item_ids]


def actions(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


# ---------------------------------------------------------------- stores


@pytest.fixture(params=["sqlite", "cosmos"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The settings that point the app at a store: a SQLite file, or the test server."""
    if request.param == "sqlite":
        return {"WORKER_STORE": str(tmp_path / "items.db")}
    server = request.getfixturevalue("cosmos_server")
    return {"WORKER_STORE": "cosmos", **server_environment(server.endpoint, unique_name("app"))}


@pytest.fixture
async def item_store(store_settings: dict[str, str]) -> AsyncIterator[Store]:
    """The store the app will use, opened by the test to seed and inspect items."""
    if store_settings["WORKER_STORE"] != "cosmos":
        sqlite = SqliteStore(store_settings["WORKER_STORE"])
        await sqlite.open()
        yield sqlite
        await sqlite.close()
        return
    cosmos = CosmosStore.from_environment(store_settings)
    await cosmos.create_resources()
    await cosmos.open()
    yield cosmos
    await cosmos.delete_database()
    await cosmos.close()


async def seed(
    store: Store, state: str, progress: Progress = Progress.READY, n: int = 1
) -> list[str]:
    documents = [make_document(state, progress) for _ in range(n)]
    await store.add(documents)
    return [d["id"] for d in documents]


async def progress_of(store: Store, ids: Iterable[str]) -> dict[str, str]:
    found = {}
    for item_id in ids:
        item = await store.get(item_id)
        assert item is not None, item_id
        found[item_id] = item.progress.value
    return found


# ---------------------------------------------------------------- bindings


def test_timer_binding_with_the_change_feed_off(monkeypatch: pytest.MonkeyPatch) -> None:
    app = load_app(monkeypatch, APP_ENV)

    assert app.bindings() == {
        "stage_loop": [
            {
                "direction": "IN",
                "type": "timerTrigger",
                "name": "timer",
                "schedule": "%WORKER_SCHEDULE%",
                "runOnStartup": False,
                "useMonitor": True,
            }
        ]
    }


def test_change_feed_binding_when_switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    app = load_app(monkeypatch, APP_ENV | FEED_ENV | {"WORKER_STORE": "cosmos"})

    found = app.bindings()

    assert set(found) == {"stage_loop", "change_feed"}
    assert found["change_feed"] == [
        {
            "direction": "IN",
            "type": "cosmosDBTrigger",
            "name": "documents",
            "connection": "COSMOS",
            "databaseName": "%COSMOS_DATABASE%",
            "containerName": "%COSMOS_CONTAINER%",
            "leaseContainerName": "%COSMOS_LEASE_CONTAINER%",
            "createLeaseContainerIfNotExists": False,
        }
    ]


@pytest.mark.parametrize("switch", ["true", "false"])
def test_every_binding_names_a_parameter_of_its_handler(
    monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    # Indexing accepts a trigger whose name is not a parameter; the real worker
    # then refuses to load the function.
    app = load_app(monkeypatch, APP_ENV | FEED_ENV | {"WORKER_CHANGE_FEED": switch})
    expected_types = {"timerTrigger": func.TimerRequest, "cosmosDBTrigger": func.DocumentList}

    for name, function_bindings in app.bindings().items():
        parameters = inspect.signature(app.handler(name)).parameters
        assert sorted(b["name"] for b in function_bindings) == sorted(parameters), name
        [trigger] = [b for b in function_bindings if b["type"].endswith("Trigger")]
        assert parameters[trigger["name"]].annotation is expected_types[trigger["type"]]


@pytest.mark.parametrize("switch", ["", "false", "0", "off"])
def test_no_change_feed_trigger_when_switched_off(
    monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    app = load_app(monkeypatch, APP_ENV | FEED_ENV | {"WORKER_CHANGE_FEED": switch})

    assert list(app.bindings()) == ["stage_loop"]


def test_indexing_fails_without_a_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {k: v for k, v in APP_ENV.items() if k != "WORKER_SCHEDULE"}

    with pytest.raises(ConfigurationError, match="WORKER_SCHEDULE is not set"):
        load_app(monkeypatch, environ)


def test_indexing_fails_on_an_unknown_switch_value(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="WORKER_CHANGE_FEED must be true or false"):
        load_app(monkeypatch, APP_ENV | {"WORKER_CHANGE_FEED": "sometimes"})


def test_indexing_fails_when_the_feed_lacks_its_names(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = APP_ENV | {k: v for k, v in FEED_ENV.items() if k != "COSMOS_LEASE_CONTAINER"}

    with pytest.raises(ConfigurationError, match="COSMOS_LEASE_CONTAINER is not set"):
        load_app(monkeypatch, environ)


def test_indexing_fails_on_a_malformed_function_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shutil.copy(ROOT / "function_app.py", tmp_path / "function_app.py")
    (tmp_path / "host.json").write_text('{"version": "2.0", "functionTimeout": "10m"}')

    with pytest.raises(
        ConfigurationError, match=re.escape("functionTimeout in host.json is '10m'")
    ):
        load_module(monkeypatch, APP_ENV, tmp_path / "function_app.py")


def test_timer_runs_get_the_host_timeout_less_a_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_module(monkeypatch, APP_ENV)

    # host.json sets functionTimeout to 00:10:00; a tenth is kept as the margin.
    assert module.SETTINGS.run_budget == pytest.approx(540)


# ---------------------------------------------------------------- the timer


async def test_timer_runs_the_stage_loop(
    monkeypatch: pytest.MonkeyPatch,
    store_settings: dict[str, str],
    item_store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ready = await seed(item_store, "Count", n=3)
    broken = await seed(item_store, "Broken", n=2)
    done = await seed(item_store, "Count", Progress.COMPLETED)
    unmapped = await seed(item_store, "Elsewhere")
    app = load_app(monkeypatch, APP_ENV | store_settings)
    caplog.set_level(logging.INFO)

    await app.handler("stage_loop")(TimerRequest(past_due=False))

    assert await progress_of(item_store, ready) == dict.fromkeys(ready, "Completed")
    assert await progress_of(item_store, broken) == dict.fromkeys(broken, "Failed")
    assert await progress_of(item_store, done + unmapped) == {
        done[0]: "Completed",
        unmapped[0]: "Ready",
    }
    assert stage_calls == Counter(ready + broken)
    failed = await item_store.get(broken[0])
    assert failed is not None and failed.last_error == {
        "type": "RuntimeError",
        "message": f"item {broken[0]} broke on purpose",
    }
    [finished] = actions(caplog, "run_finished")
    counts = {s["stage"]: (s["completed"], s["failed"]) for s in finished.summary["stages"]}  # type: ignore[attr-defined]
    assert counts == {"Count": (3, 0), "Broken": (0, 2)}
    assert actions(caplog, "timer_past_due") == []


async def test_a_past_due_timer_is_logged_and_still_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = load_app(monkeypatch, APP_ENV | {"WORKER_STORE": str(tmp_path / "items.db")})
    caplog.set_level(logging.INFO)

    await app.handler("stage_loop")(TimerRequest(past_due=True))

    [record] = actions(caplog, "timer_past_due")
    assert record.levelno == logging.WARNING
    assert len(actions(caplog, "run_finished")) == 1


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "WORKER_CONCURRENCY",
            "abc",
            "WORKER_CONCURRENCY must be a whole number from 1 to 1000, got 'abc'",
        ),
        ("WORKER_STAGE_MAP", "{not json", "WORKER_STAGE_MAP: the stage map is not valid JSON"),
        (
            "WORKER_LEASE_SECONDS",
            "soon",
            "WORKER_LEASE_SECONDS must be a number of seconds, got 'soon'",
        ),
    ],
)
async def test_a_configuration_error_fails_the_timer_invocation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setting: str, value: str, message: str
) -> None:
    app = load_app(monkeypatch, APP_ENV | {"WORKER_STORE": str(tmp_path / "items.db")})
    monkeypatch.setenv(setting, value)

    with pytest.raises(ConfigurationError, match=message):
        await app.handler("stage_loop")(TimerRequest())


async def test_a_run_past_its_budget_claims_nothing(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    ready = await seed(sqlite_store, "Count", n=2)

    summary = await functions.run_timer(APP_ENV | {"WORKER_STORE": str(db_path)}, budget=0.0)

    assert summary.stopped == "deadline reached"
    assert await progress_of(sqlite_store, ready) == dict.fromkeys(ready, "Ready")
    assert stage_calls == Counter()


# ---------------------------------------------------------------- the change feed


async def test_change_feed_processes_ready_items_of_mapped_stages_only(
    monkeypatch: pytest.MonkeyPatch,
    store_settings: dict[str, str],
    item_store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ready = await seed(item_store, "Count", n=2)
    broken = await seed(item_store, "Broken")
    unmapped = await seed(item_store, "Elsewhere")
    done = await seed(item_store, "Count", Progress.COMPLETED)
    claimed = await seed(item_store, "Count", Progress.IN_PROGRESS)
    batch = await feed_copies(item_store, ready + broken + unmapped + done + claimed)
    malformed: list[dict[str, Any]] = [
        {"state": "Count", "progress": "Ready"},
        {"id": "progress-42", "state": "Count", "progress": 42},
    ]
    app = load_app(monkeypatch, APP_ENV | FEED_ENV | store_settings)
    caplog.set_level(logging.INFO)

    await app.handler("change_feed")(feed_batch(batch[:2] + malformed + batch[2:]))

    assert stage_calls == Counter(ready + broken)
    assert await progress_of(item_store, ready + broken + unmapped + done + claimed) == {
        ready[0]: "Completed",
        ready[1]: "Completed",
        broken[0]: "Failed",
        unmapped[0]: "Ready",
        done[0]: "Completed",
        claimed[0]: "InProgress",
    }
    skipped = actions(caplog, "bad_document")
    assert [(r.levelno, r.item_id) for r in skipped] == [  # type: ignore[attr-defined]
        (logging.WARNING, None),
        (logging.WARNING, "progress-42"),
    ]
    [finished] = actions(caplog, "feed_finished")
    assert finished.summary["stages"] == [  # type: ignore[attr-defined]
        {"stage": "Count", "claimed": 2, "completed": 2, "failed": 0, "lost": 0,
         "abandoned": 0, "errors": 0, "skipped": None},
        {"stage": "Broken", "claimed": 1, "completed": 0, "failed": 1, "lost": 0,
         "abandoned": 0, "errors": 0, "skipped": None},
    ]  # fmt: skip


async def test_change_feed_ignores_the_workers_own_writes(
    monkeypatch: pytest.MonkeyPatch, store_settings: dict[str, str], item_store: Store
) -> None:
    ready = await seed(item_store, "Count", n=2)
    app = load_app(monkeypatch, APP_ENV | FEED_ENV | store_settings)
    change_feed = app.handler("change_feed")
    await change_feed(feed_batch(await feed_copies(item_store, ready)))
    before = [await item_store.get(item_id) for item_id in ready]

    # The finishes come back through the feed, as Completed documents.
    await change_feed(feed_batch(await feed_copies(item_store, ready)))

    assert stage_calls == Counter(ready)
    assert [await item_store.get(item_id) for item_id in ready] == before


async def test_change_feed_does_not_rerun_an_item_the_timer_claimed(
    monkeypatch: pytest.MonkeyPatch,
    store_settings: dict[str, str],
    item_store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    [item_id] = await seed(item_store, "Count")
    stale = await feed_copy(item_store, item_id)  # the feed read it while it was Ready
    app = load_app(monkeypatch, APP_ENV | FEED_ENV | store_settings)
    await app.handler("stage_loop")(TimerRequest())
    caplog.set_level(logging.DEBUG, logger="worker.processor")

    await app.handler("change_feed")(feed_batch([stale]))

    assert stage_calls == Counter([item_id])
    assert await progress_of(item_store, [item_id]) == {item_id: "Completed"}
    [lost] = actions(caplog, "claim_lost")
    assert lost.item_id == item_id  # type: ignore[attr-defined]


async def test_timer_and_change_feed_at_once_run_each_item_once(
    monkeypatch: pytest.MonkeyPatch, store_settings: dict[str, str], item_store: Store
) -> None:
    ready = await seed(item_store, "Count", n=20)
    copies = await feed_copies(item_store, ready)
    app = load_app(monkeypatch, APP_ENV | FEED_ENV | store_settings | {"WORKER_CONCURRENCY": "4"})

    await asyncio.gather(
        app.handler("stage_loop")(TimerRequest()),
        app.handler("change_feed")(feed_batch(copies)),
        app.handler("change_feed")(feed_batch(reversed(copies))),
    )

    assert stage_calls == Counter(ready)
    assert await progress_of(item_store, ready) == dict.fromkeys(ready, "Completed")


async def test_invocations_share_one_opened_store(
    monkeypatch: pytest.MonkeyPatch, cosmos_server: Any
) -> None:
    settings = {
        "WORKER_STORE": "cosmos",
        **server_environment(cosmos_server.endpoint, unique_name("shared")),
    }
    creator = CosmosStore.from_environment(settings)
    await creator.create_resources()
    await creator.close()
    app = load_app(monkeypatch, APP_ENV | settings)
    timer = app.handler("stage_loop")

    await timer(TimerRequest(past_due=False))
    store = await functions.shared_store("cosmos", os.environ)
    assert isinstance(store, CosmosStore)
    opened_with = store.requests.copy()
    await timer(TimerRequest(past_due=False))

    again = store.requests - opened_with
    # The second run queries for work but reads no account, database or container.
    assert again.other == 0
    assert again.queries > 0
    assert await functions.shared_store("cosmos", os.environ) is store
