"""What only the Cosmos DB store does: settings, errors, request costs, resources, and
the worker end to end on the test server (and on a real account when configured)."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from azure.core.credentials import AccessToken
from azure.cosmos import exceptions

from tests.cosmos import TEST_KEY, TestServer, server_environment, unique_name
from tests.cosmos_fixtures import StoreFactory
from worker.errors import ConfigurationError, StoreUnavailableError
from worker.item import Item, Progress
from worker.runner import Worker
from worker.stages import Stage, build_stages, import_stage_package
from worker.store import create_store
from worker.store.cosmos import (
    INDEXING_POLICY,
    CosmosSettings,
    CosmosStore,
    explain_open_error,
    is_loopback,
)

ACCOUNT = "https://myaccount.documents.azure.com:443/"


def document(state: str = "Upload", **fields: Any) -> dict[str, Any]:
    return {
        "id": f"item-{uuid.uuid4().hex[:12]}",
        "state": state,
        "progress": "Ready",
        "retryCount": 0,
        **fields,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ---------------------------------------------------------------- settings


def test_settings_have_the_documented_defaults() -> None:
    settings = CosmosSettings.from_environment({"COSMOS__accountEndpoint": ACCOUNT})

    assert settings == CosmosSettings(endpoint=ACCOUNT)
    assert (settings.database, settings.container, settings.lease_container) == (
        "OrchestratorDb",
        "RoutingItems",
        "leases",
    )
    assert (settings.partition_key, settings.page_size, settings.verify_tls) == ("/id", 100, True)
    assert settings.key is None and settings.client_id is None


def test_settings_read_every_variable() -> None:
    settings = CosmosSettings.from_environment(
        {
            "COSMOS": f"AccountEndpoint={ACCOUNT};AccountKey=a2V5Cg==;",
            "COSMOS_DATABASE": "Db",
            "COSMOS_CONTAINER": "Items",
            "COSMOS_LEASE_CONTAINER": "Leases",
            "COSMOS_PARTITION_KEY": "/tenant/name",
            "COSMOS_PAGE_SIZE": "25",
            "COSMOS__clientId": "1111-2222",
            "AZURE_CLIENT_ID": "ignored-when-the-cosmos-one-is-set",
        }
    )

    assert settings.endpoint == ACCOUNT and settings.key == "a2V5Cg=="
    assert (settings.database, settings.container, settings.lease_container) == (
        "Db",
        "Items",
        "Leases",
    )
    assert settings.partition_key_parts == ["tenant", "name"] and settings.page_size == 25
    assert settings.client_id == "1111-2222"


def test_settings_fall_back_to_azure_client_id_for_the_identity() -> None:
    settings = CosmosSettings.from_environment(
        {"COSMOS__accountEndpoint": ACCOUNT, "AZURE_CLIENT_ID": "3333"}
    )

    assert settings.client_id == "3333" and settings.auth_description.endswith("3333")


def test_missing_endpoint_names_both_ways_to_set_it() -> None:
    with pytest.raises(ConfigurationError) as raised:
        CosmosSettings.from_environment({"COSMOS_DATABASE": "Db"})

    assert "COSMOS__accountEndpoint" in str(raised.value) and "COSMOS " in str(raised.value)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"COSMOS_PAGE_SIZE": "lots"}, "COSMOS_PAGE_SIZE"),
        ({"COSMOS_PAGE_SIZE": "0"}, "COSMOS_PAGE_SIZE"),
        ({"COSMOS_VERIFY_TLS": "maybe"}, "COSMOS_VERIFY_TLS"),
        ({"COSMOS_PARTITION_KEY": "id"}, "COSMOS_PARTITION_KEY"),
        ({"COSMOS_CONTAINER": "a/b"}, "COSMOS_CONTAINER"),
        ({"COSMOS__accountEndpoint": "myaccount.documents.azure.com"}, "endpoint"),
        ({"COSMOS__accountEndpoint": "http://myaccount.documents.azure.com/"}, "https"),
    ],
)
def test_invalid_settings_are_refused_with_the_setting_named(
    variables: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        CosmosSettings.from_environment({"COSMOS__accountEndpoint": ACCOUNT, **variables})

    assert named in str(raised.value)


@pytest.mark.parametrize(
    "endpoint",
    [ACCOUNT, "https://10.1.2.3:8081/", "https://127.0.0.1.example.com/", "https://[::2]:8081/"],
)
def test_turning_tls_checks_off_is_refused_off_loopback(endpoint: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        CosmosSettings.from_environment(
            {"COSMOS__accountEndpoint": endpoint, "COSMOS_VERIFY_TLS": "false"}
        )

    assert "COSMOS_VERIFY_TLS" in str(raised.value)


@pytest.mark.parametrize(
    "endpoint",
    ["https://127.0.0.1:8081/", "https://127.9.8.7/", "https://[::1]:8081/", "https://localhost/"],
)
def test_turning_tls_checks_off_is_allowed_on_loopback(endpoint: str) -> None:
    settings = CosmosSettings.from_environment(
        {"COSMOS__accountEndpoint": endpoint, "COSMOS_VERIFY_TLS": "false"}
    )

    assert settings.verify_tls is False
    assert is_loopback(endpoint.split("//")[1].rsplit(":", 1)[0].strip("/"))


def test_create_store_selects_cosmos_from_the_environment() -> None:
    store = create_store("cosmos", {"COSMOS__accountEndpoint": ACCOUNT})

    assert isinstance(store, CosmosStore) and ACCOUNT in store.description


# ---------------------------------------------------------------- secrets


def test_a_malformed_connection_string_is_not_quoted_back() -> None:
    with pytest.raises(ConfigurationError) as raised:
        CosmosSettings.from_environment({"COSMOS": "AccountKey=s3cr3t-value;oops"})

    assert "s3cr3t-value" not in str(raised.value) and "COSMOS" in str(raised.value)


def test_a_key_that_is_not_base64_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigurationError) as raised:
        CosmosSettings.from_environment(
            {"COSMOS": f"AccountEndpoint={ACCOUNT};AccountKey=s3cr3t!;"}
        )

    assert "AccountKey in COSMOS" in str(raised.value) and "s3cr3t" not in str(raised.value)


async def test_the_key_never_appears_in_logs_errors_or_descriptions(
    cosmos_server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "bmV2ZXItdG8tYmUtc2VlbjpzZWNyZXQta2V5OjAxMjM0NTY3ODkh"
    environment = server_environment(cosmos_server.endpoint, unique_name("db"))
    environment["COSMOS"] = f"AccountEndpoint={cosmos_server.endpoint};AccountKey={key};"
    store = CosmosStore.from_environment(environment)
    texts = [repr(store), store.description, repr(store.settings), str(store.settings)]

    with pytest.raises(StoreUnavailableError) as missing:
        await store.open()
    await store.create_resources()
    await store.open()
    await store.add([document("Upload")])
    async for item in store.ready_items("Upload"):
        claimed = await store.claim(item, "worker", 60)
        assert claimed is not None and await store.finish(claimed, Progress.COMPLETED)
    await store.delete_database()
    await store.close()
    unreachable = dict(
        environment, COSMOS=f"AccountEndpoint=https://127.0.0.1:{free_port()}/;AccountKey={key};"
    )
    with pytest.raises(StoreUnavailableError) as refused:
        await CosmosStore.from_environment(unreachable).open()

    texts += [str(missing.value), str(refused.value), caplog.text]
    assert caplog.records, "the check needs log records to look at"
    assert not [text for text in texts if key in text or key[:12] in text]


# ---------------------------------------------------------------- opening


async def test_an_unreachable_endpoint_fails_fast_naming_the_endpoint_setting() -> None:
    environment = server_environment(f"https://127.0.0.1:{free_port()}/", "Db")
    started = time.monotonic()

    with pytest.raises(StoreUnavailableError) as raised:
        await CosmosStore.from_environment(environment).open()

    assert time.monotonic() - started < 10
    assert "COSMOS__accountEndpoint" in str(raised.value)
    assert "cannot reach" in str(raised.value)


async def test_a_missing_database_is_named_with_its_setting(
    cosmos_environment: dict[str, str],
) -> None:
    with pytest.raises(StoreUnavailableError) as raised:
        await CosmosStore.from_environment(cosmos_environment).open()

    message = str(raised.value)
    assert "COSMOS_DATABASE" in message and cosmos_environment["COSMOS_DATABASE"] in message


async def test_a_missing_container_is_named_with_its_setting(
    cosmos_store_factory: StoreFactory,
) -> None:
    existing = await cosmos_store_factory()
    environment = server_environment(
        existing.settings.endpoint, existing.settings.database, COSMOS_CONTAINER="Elsewhere"
    )

    with pytest.raises(StoreUnavailableError) as raised:
        await CosmosStore.from_environment(environment).open()

    assert "COSMOS_CONTAINER" in str(raised.value) and "'Elsewhere'" in str(raised.value)


async def test_a_container_with_another_partition_key_is_refused(
    cosmos_store_factory: StoreFactory,
) -> None:
    existing = await cosmos_store_factory()
    environment = server_environment(
        existing.settings.endpoint, existing.settings.database, COSMOS_PARTITION_KEY="/tenant"
    )

    with pytest.raises(StoreUnavailableError) as raised:
        await CosmosStore.from_environment(environment).open()

    assert "COSMOS_PARTITION_KEY" in str(raised.value) and "/id" in str(raised.value)


@pytest.mark.parametrize(
    ("key", "status", "expected"),
    [
        ("a2V5", 401, ["AccountKey in COSMOS"]),
        (None, 401, ["COSMOS__clientId"]),
        (None, 403, ["Cosmos DB Built-in Data Contributor", "COSMOS__clientId"]),
        ("a2V5", 403, ["firewall", "COSMOS"]),
    ],
)
def test_refused_access_is_explained_with_the_setting_to_fix(
    key: str | None, status: int, expected: list[str]
) -> None:
    settings = CosmosSettings(endpoint=ACCOUNT, key=key)
    error = exceptions.CosmosHttpResponseError(
        status_code=status, message='{"code":"Forbidden","message":"Request blocked.\\r\\nMore"}'
    )

    message = explain_open_error(settings, error, "account")

    assert all(text in message for text in expected)
    assert f"({status}: Request blocked)" in message and "\n" not in message


class FakeCredential:
    """Stands in for DefaultAzureCredential; the test server takes any token."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.scopes: list[str] = []
        self.closed = False
        FakeCredential.made.append({"kwargs": kwargs, "credential": self})

    async def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("not-a-real-token", int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True


async def test_without_a_key_the_store_signs_in_with_the_configured_identity(
    cosmos_store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.identity.aio

    existing = await cosmos_store_factory()
    monkeypatch.setattr(FakeCredential, "made", [])
    monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential", FakeCredential)
    store = CosmosStore.from_environment(
        {
            "COSMOS__accountEndpoint": existing.settings.endpoint,
            "COSMOS__clientId": "client-1234",
            "COSMOS_VERIFY_TLS": "false",
            "COSMOS_DATABASE": existing.settings.database,
        }
    )

    await store.open()
    await store.add([document()])
    await store.close()

    [made] = FakeCredential.made
    assert made["kwargs"] == {"managed_identity_client_id": "client-1234"}
    assert made["credential"].scopes and made["credential"].closed


async def test_the_sdk_retries_are_bounded(cosmos_store: CosmosStore) -> None:
    assert cosmos_store._client is not None
    policy = cosmos_store._client.client_connection.connection_policy

    assert policy.RetryOptions.MaxRetryAttemptCount == 9
    assert policy.RetryOptions.MaxWaitTimeInSeconds == 30
    assert policy.ConnectionRetryConfiguration.total_retries == 3
    assert policy.RequestTimeout == 5


# ---------------------------------------------------------------- resources


async def test_create_resources_is_idempotent_and_sets_keys_and_indexing(
    cosmos_environment: dict[str, str],
) -> None:
    store = CosmosStore.from_environment(cosmos_environment)

    await store.create_resources()
    await store.create_resources()
    await store.open()

    assert store._client is not None
    database = store._client.get_database_client(store.settings.database)
    items = await database.get_container_client("RoutingItems").read()
    leases = await database.get_container_client("leases").read()
    assert items["partitionKey"]["paths"] == ["/id"]
    assert items["indexingPolicy"]["compositeIndexes"] == INDEXING_POLICY["compositeIndexes"]
    assert leases["partitionKey"]["paths"] == ["/id"]
    await store.delete_database()
    await store.close()


async def test_a_store_can_use_another_partition_key_path(
    cosmos_store_factory: StoreFactory,
) -> None:
    store = await cosmos_store_factory(COSMOS_PARTITION_KEY="/tenant")
    original = document(tenant="contoso")
    await store.add([original, document(tenant="fabrikam")])

    [item] = [i async for i in store.ready_items("Upload") if i.get("tenant") == "contoso"]
    claimed = await store.claim(item, "worker", 60)
    assert claimed is not None
    await store.container.replace_item(item.id, {**claimed.document, "note": "meanwhile"})
    finished = await store.finish(claimed, Progress.COMPLETED)

    got = await store.get(item.id)
    assert finished is True and got is not None
    assert got.progress is Progress.COMPLETED and got.get("note") == "meanwhile"
    assert await store.delete([item.id, "missing"]) == 1


# ---------------------------------------------------------------- costs


async def noop(item: Item) -> None:
    return None


async def test_one_processed_item_costs_two_writes_and_a_share_of_the_query(
    cosmos_store_factory: StoreFactory,
) -> None:
    store = await cosmos_store_factory(COSMOS_PAGE_SIZE="10")
    await store.add([document("Noop") for _ in range(30)])
    before = store.requests.copy()

    summary = await Worker(store, [Stage("Noop", noop, "noop")], concurrency=4).run()

    spent = store.requests - before
    assert summary.completed == 30
    assert spent.item_writes == 2 * 30
    assert spent.item_reads == 0
    # recovery's query and three pages of ten (measured: 4); real Cosmos DB may add
    # a query plan request and a partition map read
    assert spent.queries <= 5
    assert spent.other <= 2


async def test_a_finish_after_another_write_costs_one_read_and_one_more_write(
    cosmos_store: CosmosStore,
) -> None:
    await cosmos_store.add([document()])
    [item] = [i async for i in cosmos_store.ready_items("Upload")]
    claimed = await cosmos_store.claim(item, "worker", 60)
    assert claimed is not None
    await cosmos_store.container.replace_item(item.id, {**claimed.document, "note": "x"})
    before = cosmos_store.requests.copy()

    assert await cosmos_store.finish(claimed, Progress.COMPLETED) is True

    spent = cosmos_store.requests - before
    assert (spent.item_writes, spent.item_reads, spent.queries) == (2, 1, 0)


# ---------------------------------------------------------------- end to end


STAGES = ("Initialize", "SetReadOnly", "Upload")


@pytest.fixture(params=["test-server", "real-account"])
def integration_environment(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "real-account":
        real: dict[str, str] = request.getfixturevalue("real_cosmos_environment")
        return real
    server: TestServer = request.getfixturevalue("cosmos_server")
    return server_environment(server.endpoint, unique_name("db"))


@pytest.fixture
async def integration_store(
    integration_environment: dict[str, str],
) -> AsyncIterator[CosmosStore]:
    store = CosmosStore.from_environment(integration_environment)
    on_test_server = integration_environment.get("COSMOS", "").endswith(f"{TEST_KEY};")
    if integration_environment.get("COSMOS"):
        # With a key (the test server, the emulator) the store can create what it needs.
        await store.create_resources()
    await store.open()
    try:
        others = [item.id for stage in STAGES async for item in store.ready_items(stage)]
        if others:
            pytest.skip(
                f"{store.description} already has {len(others)} Ready items in the "
                f"stages {', '.join(STAGES)}; point WORKER_TEST_COSMOS_CONTAINER at a "
                "container used only for tests"
            )
        yield store
    finally:
        if on_test_server:
            await store.delete_database()
        await store.close()


async def test_the_worker_moves_every_item_to_the_outcome_its_function_decides(
    integration_store: CosmosStore,
) -> None:
    store = integration_store
    run = uuid.uuid4().hex[:8]
    succeed = {stage: document(stage, id=f"it-{run}-{stage}-ok") for stage in STAGES}
    fail = {
        stage: document(stage, id=f"it-{run}-{stage}-fail", simulateFailure=f"{stage} broke")
        for stage in STAGES
    }
    ids = [d["id"] for d in (*succeed.values(), *fail.values())]
    await store.add([*succeed.values(), *fail.values()])
    import_stage_package()
    stages, skipped = build_stages(list(STAGES), {})
    assert not skipped

    try:
        summary = await Worker(store, stages, concurrency=4, lease_seconds=120).run(recover=False)

        assert (summary.completed, summary.failed) == (3, 3)
        for stage in STAGES:
            ok = await store.get(succeed[stage]["id"])
            failed = await store.get(fail[stage]["id"])
            assert ok is not None and ok.progress is Progress.COMPLETED
            assert failed is not None and failed.progress is Progress.FAILED
            assert failed.last_error == {"type": "SimulatedFailure", "message": f"{stage} broke"}
            assert ok.state == stage and ok.retry_count == 0
    finally:
        deleted = await store.delete(ids)

    assert deleted == len(ids)
    assert [await store.get(item_id) for item_id in ids] == [None] * len(ids)
