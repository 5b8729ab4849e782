"""The settings the Functions app reads, and what it makes of feed documents."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import azure.functions as func
import pytest

from worker import functions
from worker.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent

FEED_ENV = {
    "WORKER_SCHEDULE": "0 */5 * * * *",
    "WORKER_CHANGE_FEED": "true",
    "WORKER_STORE": "cosmos",
    "COSMOS__accountEndpoint": "https://example.documents.azure.com:443/",
    "COSMOS_DATABASE": "OrchestratorDb",
    "COSMOS_CONTAINER": "RoutingItems",
    "COSMOS_LEASE_CONTAINER": "leases",
}


def write_host_json(tmp_path: Path, **config: object) -> Path:
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", **config}), encoding="utf-8")
    return path


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize("schedule", ["0 */5 * * * *", "*/5 * * * *", "00:05:00", " 0 0 * * * * "])
def test_schedule_accepts_ncrontab_and_intervals(schedule: str) -> None:
    assert functions.require_schedule({"WORKER_SCHEDULE": schedule}) == schedule.strip()


@pytest.mark.parametrize("environ", [{}, {"WORKER_SCHEDULE": "  "}])
def test_missing_schedule_names_the_setting_and_a_default(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="WORKER_SCHEDULE is not set") as raised:
        functions.require_schedule(environ)

    assert "0 */5 * * * *" in str(raised.value)


@pytest.mark.parametrize("schedule", ["every 5 minutes", "0 */5 * *", "5m"])
def test_malformed_schedule_quotes_the_value(schedule: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"WORKER_SCHEDULE is {schedule!r}")):
        functions.require_schedule({"WORKER_SCHEDULE": schedule})


# ---------------------------------------------------------------- change-feed switch


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, False), ("", False), ("true", True), ("True", True), ("1", True), ("on", True),
     ("false", False), ("NO", False), ("0", False), (" off ", False)],
)  # fmt: skip
def test_switch_words(raw: str | None, expected: bool) -> None:
    assert functions.parse_switch(raw, "WORKER_CHANGE_FEED", default=False) is expected


def test_switch_refuses_other_words() -> None:
    with pytest.raises(
        ConfigurationError, match="WORKER_CHANGE_FEED must be true or false, got 'maybe'"
    ):
        functions.parse_switch("maybe", "WORKER_CHANGE_FEED", default=False)


def test_change_feed_is_off_by_default(tmp_path: Path) -> None:
    settings = functions.indexing_settings(
        {"WORKER_SCHEDULE": "0 */5 * * * *"}, write_host_json(tmp_path)
    )

    assert settings.change_feed is False


def test_change_feed_on_needs_the_names_its_binding_refers_to(tmp_path: Path) -> None:
    environ = {
        k: v for k, v in FEED_ENV.items() if k not in ("COSMOS_CONTAINER", "COSMOS_LEASE_CONTAINER")
    }

    with pytest.raises(
        ConfigurationError, match="COSMOS_CONTAINER, COSMOS_LEASE_CONTAINER are not set"
    ):
        functions.indexing_settings(environ, write_host_json(tmp_path))


def test_change_feed_on_needs_a_connection(tmp_path: Path) -> None:
    environ = {k: v for k, v in FEED_ENV.items() if k != "COSMOS__accountEndpoint"}

    with pytest.raises(ConfigurationError, match=r"neither COSMOS__accountEndpoint .* nor COSMOS "):
        functions.indexing_settings(environ, write_host_json(tmp_path))


@pytest.mark.parametrize(
    "connection",
    [
        {"COSMOS__accountEndpoint": "https://example.documents.azure.com:443/"},
        {"COSMOS": "AccountEndpoint=https://localhost:8081/;AccountKey=a2V5;"},
    ],
)
def test_change_feed_on_accepts_identity_or_key(tmp_path: Path, connection: dict[str, str]) -> None:
    environ = {k: v for k, v in FEED_ENV.items() if k != "COSMOS__accountEndpoint"} | connection

    settings = functions.indexing_settings(environ, write_host_json(tmp_path))

    assert settings.change_feed is True


def test_change_feed_with_a_sqlite_store_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = FEED_ENV | {"WORKER_STORE": str(tmp_path / "items.db")}

    functions.indexing_settings(environ, write_host_json(tmp_path))

    assert [r.action for r in caplog.records] == ["change_feed_without_cosmos"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- functionTimeout, run budget


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("00:10:00", 600.0), ("00:00:30", 30.0), ("01:30:00", 5400.0), ("1.00:00:00", 86400.0),
     ("00:00:01.5", 1.5), ("-1", None)],
)  # fmt: skip
def test_timespans(raw: str, seconds: float | None) -> None:
    assert functions.parse_timespan(raw, "functionTimeout") == seconds


@pytest.mark.parametrize("raw", ["10 minutes", "600", "00:61:00", "25:00:00", "00:00:00", ""])
def test_malformed_timespan_names_the_setting(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"functionTimeout is {raw!r}")):
        functions.parse_timespan(raw, "functionTimeout")


def test_function_timeout_from_host_json(tmp_path: Path) -> None:
    assert (
        functions.read_function_timeout(write_host_json(tmp_path, functionTimeout="00:07:00"))
        == 420
    )


def test_function_timeout_unset_is_the_shortest_platform_default(tmp_path: Path) -> None:
    assert functions.read_function_timeout(write_host_json(tmp_path)) == 300


def test_function_timeout_unbounded_means_no_budget(tmp_path: Path) -> None:
    host_json = write_host_json(tmp_path, functionTimeout="-1")

    settings = functions.indexing_settings({"WORKER_SCHEDULE": "0 */5 * * * *"}, host_json)

    assert settings.run_budget is None


def test_malformed_function_timeout_names_host_json(tmp_path: Path) -> None:
    host_json = write_host_json(tmp_path, functionTimeout="ten minutes")

    with pytest.raises(
        ConfigurationError, match=re.escape("functionTimeout in host.json is 'ten minutes'")
    ):
        functions.indexing_settings({"WORKER_SCHEDULE": "0 */5 * * * *"}, host_json)


def test_unreadable_host_json_is_a_configuration_error(tmp_path: Path) -> None:
    host_json = tmp_path / "host.json"
    host_json.write_text("{not json", encoding="utf-8")

    with pytest.raises(ConfigurationError, match=r"cannot read .*host\.json"):
        functions.read_function_timeout(host_json)


@pytest.mark.parametrize(("timeout", "budget"), [(600, 540), (300, 270), (60, 30), (3600, 3240)])
def test_budget_keeps_a_tenth_or_thirty_seconds(timeout: float, budget: float) -> None:
    assert functions.run_budget(timeout) == pytest.approx(budget)


def test_budget_refuses_a_timeout_shorter_than_the_margin() -> None:
    with pytest.raises(ConfigurationError, match="functionTimeout of 20 s leaves no time"):
        functions.run_budget(20)


def test_the_shipped_host_json() -> None:
    config = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))

    settings = functions.indexing_settings({"WORKER_SCHEDULE": "0 */5 * * * *"}, ROOT / "host.json")

    assert config["version"] == "2.0"
    assert config["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    assert (
        "Request" in config["logging"]["applicationInsights"]["samplingSettings"]["excludedTypes"]
    )
    assert settings.run_budget == pytest.approx(540)


def test_the_sample_local_settings_hold_no_secret_and_every_setting() -> None:
    values = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]

    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert functions.require_schedule(values) == functions.DEFAULT_SCHEDULE
    assert not any("AccountKey" in value for value in values.values())
    assert {"WORKER_STORE", "WORKER_CHANGE_FEED", "COSMOS_DATABASE"} <= set(values)


# ---------------------------------------------------------------- worker settings at invocation


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("WORKER_CONCURRENCY", "abc", "WORKER_CONCURRENCY must be a whole number"),
        ("WORKER_CONCURRENCY", "0", "WORKER_CONCURRENCY must be a whole number"),
        ("WORKER_LEASE_SECONDS", "-5", "WORKER_LEASE_SECONDS must be a positive number"),
        ("WORKER_STAGE_MAP", '{"Upload": ', "WORKER_STAGE_MAP: the stage map is not valid JSON"),
        ("WORKER_STAGE_MAP", '["Upload"]', "WORKER_STAGE_MAP: the stage map must be a JSON object"),
        ("WORKER_STAGES", "Upload,,Initialize", "WORKER_STAGES has an empty entry"),
    ],
)
async def test_malformed_worker_settings_name_the_setting(
    tmp_path: Path, setting: str, value: str, message: str
) -> None:
    environ = {"WORKER_STORE": str(tmp_path / "items.db"), setting: value}

    with pytest.raises(ConfigurationError, match=message):
        await functions.build_from_environment(environ)


async def test_settings_build_a_worker(tmp_path: Path) -> None:
    environ = {
        "WORKER_STORE": str(tmp_path / "items.db"),
        "WORKER_STAGES": "Initialize",
        "WORKER_CONCURRENCY": "3",
    }

    worker = await functions.build_from_environment(environ)

    assert [stage.name for stage in worker.stages] == ["Initialize"]
    assert worker.concurrency == 3


# ---------------------------------------------------------------- feed documents


def test_feed_documents_become_plain_dicts() -> None:
    documents = func.DocumentList(
        [
            func.Document.from_dict(
                {"id": "a", "state": "Upload", "progress": "Ready", "_etag": '"1"'}
            )
        ]
    )

    batch = functions.feed_documents(documents)

    assert batch == [{"id": "a", "state": "Upload", "progress": "Ready", "_etag": '"1"'}]
    assert type(batch[0]) is dict


def test_feed_entries_that_are_not_objects_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = functions.feed_documents([{"id": "a"}, "a string", 42])

    assert batch == [{"id": "a"}]
    assert [r.action for r in caplog.records] == ["bad_document", "bad_document"]  # type: ignore[attr-defined]


async def test_a_batch_of_the_workers_own_writes_opens_no_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The settings are broken on purpose: building a worker would raise.
    environ = {"WORKER_STORE": str(tmp_path / "items.db"), "WORKER_CONCURRENCY": "abc"}
    documents = [
        {"id": f"i{n}", "state": "Upload", "progress": progress}
        for n, progress in enumerate(["InProgress", "Completed", "Failed"])
    ]
    caplog.set_level(logging.DEBUG, logger="worker.functions")

    summary = await functions.run_feed(environ, documents)

    assert summary.stages == []
    assert not (tmp_path / "items.db").exists()
    assert [r.action for r in caplog.records] == ["feed_idle"]  # type: ignore[attr-defined]
