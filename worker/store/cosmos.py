"""The production store: routing items in an Azure Cosmos DB (NoSQL) container.

Every change is one conditional replace of the whole document, guarded by its
ETag. A claim is exactly that write; a finish first tries the same write on the
version it holds, and only when someone else wrote in between does it read the
current document, check the claim is still ours and merge its fields into it.
So on the common path an item costs two writes, and never a read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.cosmos import PartitionKey, exceptions
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.partition_key import NonePartitionKeyValue

from worker.errors import BadDocumentError, ConfigurationError, StoreUnavailableError, WorkerError
from worker.item import (
    CLAIM_ID,
    LAST_ERROR,
    LEASE_UNTIL,
    ErrorInfo,
    Item,
    Progress,
    claim_fields,
    finish_fields,
    format_time,
    item_or_none,
    utc_now,
)
from worker.store.base import Counts

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DATABASE = "OrchestratorDb"
DEFAULT_CONTAINER = "RoutingItems"
DEFAULT_LEASE_CONTAINER = "leases"
DEFAULT_PARTITION_KEY = "/id"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

#: Properties Cosmos DB adds to every document. They are never written back;
#: ``_etag`` lives on as the item's version.
SYSTEM_FIELDS = frozenset({"_rid", "_self", "_etag", "_ts", "_attachments", "_lsn"})

#: How often a finish, renewal or recovery re-reads and retries after other
#: writers changed the item; past that the store reports a WriteConflictError.
MAX_WRITE_ATTEMPTS = 5
#: Writes in flight at once for ``add`` and ``delete``.
BULK_CONCURRENCY = 16
#: Longest ``open`` may take before the account is reported unreachable.
OPEN_TIMEOUT_SECONDS = 30.0

# Retry settings handed to the SDK. Connection failures are retried a few
# times with short waits, so an unreachable endpoint fails within seconds;
# throttling (429) is retried as the service asks, at most 9 times and 30 s
# in all per operation.
CLIENT_OPTIONS: dict[str, Any] = {
    "connection_timeout": 5,
    "read_timeout": 30,
    "retry_total": 3,
    "retry_connect": 2,
    "retry_read": 2,
    "retry_backoff_max": 2,
    "retry_throttle_total": 9,
    "retry_throttle_backoff_max": 30,
}

READY_QUERY = "SELECT * FROM c WHERE c.state = @stage AND c.progress = 'Ready'"
EXPIRED_QUERY = "SELECT * FROM c WHERE c.progress = 'InProgress' AND c.leaseUntil < @now"
# GROUP BY is not available everywhere (the test server lacks it), so counts
# are summed client-side from a small projection; memory holds only the sums.
COUNTS_QUERY = "SELECT c.state, c.progress FROM c"
BY_ID_QUERY = "SELECT * FROM c WHERE c.id = @id"

#: Indexing for a container this store creates: everything stays indexed (the
#: routing component queries other fields), error texts are not, and composite
#: indexes serve the stage query and the expired-lease query.
INDEXING_POLICY: dict[str, Any] = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": '/"_etag"/?'}, {"path": f"/{LAST_ERROR}/*"}],
    "compositeIndexes": [
        [{"path": "/state", "order": "ascending"}, {"path": "/progress", "order": "ascending"}],
        [
            {"path": "/progress", "order": "ascending"},
            {"path": f"/{LEASE_UNTIL}", "order": "ascending"},
        ],
    ],
}

_PARTITION_KEY_PATH = re.compile(r"^(/[^/\s]+)+$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class WriteConflictError(WorkerError):
    """Other writers kept changing an item while the store tried to update it."""


@dataclasses.dataclass(frozen=True)
class CosmosSettings:
    """Where the items live and how to reach them. ``key`` never shows in a repr."""

    endpoint: str
    key: str | None = dataclasses.field(default=None, repr=False)
    client_id: str | None = None
    database: str = DEFAULT_DATABASE
    container: str = DEFAULT_CONTAINER
    lease_container: str = DEFAULT_LEASE_CONTAINER
    partition_key: str = DEFAULT_PARTITION_KEY
    page_size: int = DEFAULT_PAGE_SIZE
    verify_tls: bool = True

    def __post_init__(self) -> None:
        _check_endpoint(self.endpoint, self.verify_tls)
        if self.key is not None:
            try:
                base64.b64decode(self.key, validate=True)
            except ValueError:
                raise ConfigurationError(
                    "the AccountKey in COSMOS is not an account key (those are base64 "
                    "text); copy the key or connection string again from the account."
                ) from None
        if not _PARTITION_KEY_PATH.match(self.partition_key):
            raise ConfigurationError(
                f"COSMOS_PARTITION_KEY is {self.partition_key!r}; expected a path such as "
                "'/id' or '/tenant/name'."
            )
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ConfigurationError(
                f"COSMOS_PAGE_SIZE is {self.page_size}; expected a whole number "
                f"from 1 to {MAX_PAGE_SIZE}."
            )
        for setting, name in (
            ("COSMOS_DATABASE", self.database),
            ("COSMOS_CONTAINER", self.container),
            ("COSMOS_LEASE_CONTAINER", self.lease_container),
        ):
            if not name.strip() or any(c in name for c in "/\\?#"):
                raise ConfigurationError(
                    f"{setting} is {name!r}; expected a name without '/', '\\', '?' or '#'."
                )

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> CosmosSettings:
        """Read the settings named in the README from ``env``."""
        endpoint, key = _parse_connection(env.get("COSMOS", "").strip())
        if endpoint is None:
            endpoint = env.get("COSMOS__accountEndpoint", "").strip() or None
        if endpoint is None:
            raise ConfigurationError(
                "no Cosmos DB account is configured: set COSMOS__accountEndpoint to the "
                "account endpoint (https://<account>.documents.azure.com:443/) to sign in "
                "with an identity, or COSMOS to a connection string "
                "'AccountEndpoint=...;AccountKey=...;'."
            )
        client_id = (
            env.get("COSMOS__clientId", "").strip()
            or env.get("AZURE_CLIENT_ID", "").strip()
            or None
        )
        return cls(
            endpoint=endpoint,
            key=key,
            client_id=client_id,
            database=env.get("COSMOS_DATABASE", "").strip() or DEFAULT_DATABASE,
            container=env.get("COSMOS_CONTAINER", "").strip() or DEFAULT_CONTAINER,
            lease_container=(
                env.get("COSMOS_LEASE_CONTAINER", "").strip() or DEFAULT_LEASE_CONTAINER
            ),
            partition_key=(env.get("COSMOS_PARTITION_KEY", "").strip() or DEFAULT_PARTITION_KEY),
            page_size=_positive_int(env, "COSMOS_PAGE_SIZE", DEFAULT_PAGE_SIZE),
            verify_tls=_flag(env, "COSMOS_VERIFY_TLS", True),
        )

    @property
    def partition_key_parts(self) -> list[str]:
        return self.partition_key.strip("/").split("/")

    @property
    def auth_description(self) -> str:
        if self.key is not None:
            return "an account key"
        if self.client_id:
            return f"the managed identity {self.client_id}"
        return "DefaultAzureCredential"


@dataclasses.dataclass
class RequestCounts:
    """HTTP requests sent to the account, retries included, by kind."""

    queries: int = 0  # query pages, query plans and read feeds of items
    item_reads: int = 0  # point reads of one item
    item_writes: int = 0  # creates, replaces, upserts, patches, deletes of items
    other: int = 0  # account, database, container and partition map requests

    @property
    def total(self) -> int:
        return self.queries + self.item_reads + self.item_writes + self.other

    def reset(self) -> None:
        self.queries = self.item_reads = self.item_writes = self.other = 0

    def copy(self) -> RequestCounts:
        return dataclasses.replace(self)

    def __sub__(self, other: RequestCounts) -> RequestCounts:
        return RequestCounts(
            self.queries - other.queries,
            self.item_reads - other.item_reads,
            self.item_writes - other.item_writes,
            self.other - other.other,
        )

    def record(self, method: str, path: str, headers: Mapping[str, str]) -> None:
        segments = [s for s in path.split("/") if s]
        in_docs = len(segments) >= 5 and segments[4] == "docs"
        lowered = {k.lower(): str(v).lower() for k, v in headers.items()}
        if not in_docs:
            self.other += 1
        elif lowered.get("x-ms-documentdb-isquery") == "true" or (
            "x-ms-cosmos-is-query-plan-request" in lowered
        ):
            self.queries += 1
        elif method == "GET":
            if len(segments) == 5:
                self.queries += 1
            else:
                self.item_reads += 1
        else:
            self.item_writes += 1


class CosmosStore:
    """Routing items in one Cosmos DB container."""

    def __init__(self, settings: CosmosSettings, credential: Any = None) -> None:
        """``credential`` overrides the key or DefaultAzureCredential (tests, tools)."""
        self.settings = settings
        self.page_size = settings.page_size
        self.description = (
            f"Cosmos DB container {settings.container!r} in database {settings.database!r} "
            f"at {settings.endpoint}"
        )
        #: requests sent so far; tests and the benchmark read it
        self.requests = RequestCounts()
        self._given_credential = credential
        self._credential: Any = None
        self._client: CosmosClient | None = None
        self._container: ContainerProxy | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> CosmosStore:
        return cls(CosmosSettings.from_environment(env))

    def __repr__(self) -> str:
        return f"CosmosStore({self.description})"

    async def __aenter__(self) -> CosmosStore:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- connection ----------------------------------------------------------

    async def _connect(self) -> CosmosClient:
        """A client with its account metadata read; closed again if that fails."""
        settings = self.settings
        credential: Any = self._given_credential
        if credential is None:
            if settings.key is not None:
                credential = settings.key
            else:
                credential = self._credential = _default_credential(settings.client_id)
        options = dict(CLIENT_OPTIONS)
        if not settings.verify_tls:
            options["connection_verify"] = False
        if urlsplit(settings.endpoint).scheme == "http":
            options["enable_endpoint_discovery"] = False
        client = CosmosClient(
            settings.endpoint,
            credential=credential,
            raw_request_hook=self._count_request,
            **options,
        )
        try:
            await asyncio.wait_for(client.__aenter__(), OPEN_TIMEOUT_SECONDS)
        except BaseException:
            await client.close()
            await self._close_credential()
            raise
        return client

    async def open(self) -> None:
        """Connect, and check the database and container exist and can be read."""
        if self._container is not None:
            return
        try:
            client = await self._connect()
        except Exception as error:
            raise self._unavailable(error, "account") from error
        try:
            container = await asyncio.wait_for(self._check(client), OPEN_TIMEOUT_SECONDS)
        except BaseException as error:
            await client.close()
            await self._close_credential()
            if isinstance(error, Exception) and not isinstance(error, WorkerError):
                raise self._unavailable(error, "container") from error
            raise
        self._client, self._container = client, container
        logger.debug(
            "opened %s with %s",
            self.description,
            self.settings.auth_description,
            extra={"action": "store_opened"},
        )

    async def _check(self, client: CosmosClient) -> ContainerProxy:
        settings = self.settings
        database = client.get_database_client(settings.database)
        try:
            await database.read()
        except exceptions.CosmosResourceNotFoundError as error:
            raise StoreUnavailableError(
                f"the database {settings.database!r} does not exist at {settings.endpoint}. "
                "Set COSMOS_DATABASE to an existing database, or create the database "
                "and its containers first."
            ) from error
        container = database.get_container_client(settings.container)
        try:
            properties = await container.read()
        except exceptions.CosmosResourceNotFoundError as error:
            raise StoreUnavailableError(
                f"the container {settings.container!r} does not exist in the database "
                f"{settings.database!r} at {settings.endpoint}. Set COSMOS_CONTAINER to "
                "an existing container, or create it first."
            ) from error
        _check_partition_key(settings, properties)
        # One small query proves the items themselves can be read with this access.
        pages = container.query_items("SELECT TOP 1 c.id FROM c", max_item_count=1).by_page()
        async for page in pages:
            async for _ in page:
                break
            break
        return container

    def _unavailable(self, error: BaseException, step: str) -> StoreUnavailableError:
        return StoreUnavailableError(explain_open_error(self.settings, error, step))

    async def close(self) -> None:
        client, self._client, self._container = self._client, None, None
        if client is not None:
            await client.close()
        await self._close_credential()

    async def _close_credential(self) -> None:
        credential, self._credential = self._credential, None
        if credential is not None:
            await credential.close()

    def _count_request(self, request: Any) -> None:
        http = request.http_request
        self.requests.record(http.method, urlsplit(http.url).path, http.headers)

    @property
    def is_open(self) -> bool:
        return self._container is not None

    @property
    def container(self) -> ContainerProxy:
        if self._container is None:
            raise StoreUnavailableError(f"{self.description} is not open")
        return self._container

    # -- resources -----------------------------------------------------------

    async def create_resources(self) -> None:
        """Create the database, the items container and the lease container if absent.

        For accounts that allow it (a key, or a control-plane role); in Azure the
        infrastructure creates them, since a data-plane role cannot.
        """
        settings = self.settings
        client = self._client
        owned = client is None
        if client is None:
            try:
                client = await self._connect()
            except Exception as error:
                raise self._unavailable(error, "account") from error
        try:
            database = await client.create_database_if_not_exists(settings.database)
            items = await database.create_container_if_not_exists(
                settings.container,
                PartitionKey(settings.partition_key),
                indexing_policy=INDEXING_POLICY,
            )
            _check_partition_key(settings, await items.read())
            await database.create_container_if_not_exists(
                settings.lease_container, PartitionKey("/id")
            )
        except exceptions.CosmosHttpResponseError as error:
            raise self._unavailable(error, "create") from error
        finally:
            if owned:
                await client.close()
                await self._close_credential()
        logger.info(
            "Cosmos DB resources ready: database %s, containers %s and %s",
            settings.database,
            settings.container,
            settings.lease_container,
            extra={"action": "resources_created"},
        )

    async def delete_database(self) -> None:
        """Delete the whole database; for tests that made their own."""
        if self._client is None:
            raise StoreUnavailableError(f"{self.description} is not open")
        await self._client.delete_database(self.settings.database)

    # -- documents -----------------------------------------------------------

    def _partition_value(self, document: Mapping[str, Any]) -> Any:
        value: Any = document
        for part in self.settings.partition_key_parts:
            if not isinstance(value, Mapping) or part not in value:
                return NonePartitionKeyValue
            value = value[part]
        return value

    def _item(self, document: Mapping[str, Any]) -> Item | None:
        etag = document.get("_etag")
        return item_or_none(_strip(document), str(etag) if etag is not None else "")

    async def _query(
        self, query: str, parameters: list[dict[str, Any]], page_size: int | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of a cross-partition query; one page in memory at a time."""
        pages = self.container.query_items(
            query, parameters=parameters, max_item_count=page_size or self.page_size
        ).by_page()
        async for page in pages:
            yield [document async for document in page]

    async def _items(self, query: str, parameters: list[dict[str, Any]]) -> AsyncIterator[Item]:
        async for page in self._query(query, parameters):
            for document in page:
                item = self._item(document)
                if item is not None:
                    yield item

    def ready_items(self, stage: str) -> AsyncIterator[Item]:
        return self._items(READY_QUERY, [{"name": "@stage", "value": stage}])

    def expired_claims(self, now: datetime) -> AsyncIterator[Item]:
        return self._items(EXPIRED_QUERY, [{"name": "@now", "value": format_time(now)}])

    async def _replace(
        self, item_id: str, document: Mapping[str, Any], etag: str
    ) -> tuple[dict[str, Any], str]:
        """Write ``document`` if the stored one still has ``etag``; the stored result."""
        body = _strip(document)
        response = await self.container.replace_item(
            item_id, body, etag=etag, match_condition=MatchConditions.IfNotModified
        )
        stored = _strip(response) if response else body
        version = response.get("_etag") or response.get_response_headers().get("etag")
        return stored, str(version)

    async def _read(self, item_id: str, partition_value: Any) -> tuple[dict[str, Any], str] | None:
        """The stored document and its ETag, or None if there is no such item."""
        if self.settings.partition_key == "/id":
            try:
                read = await self.container.read_item(item_id, partition_key=partition_value)
            except exceptions.CosmosHttpResponseError as error:
                if _is_missing(error):
                    return None
                raise
            return _strip(read), str(read.get("_etag"))
        async for page in self._query(
            BY_ID_QUERY, [{"name": "@id", "value": item_id}], page_size=MAX_PAGE_SIZE
        ):
            for document in page:
                if self._partition_value(document) == partition_value:
                    return _strip(document), str(document.get("_etag"))
        return None

    async def claim(self, item: Item, owner: str, lease_seconds: float) -> Item | None:
        if item.progress is not Progress.READY or not item.version:
            return None
        now = utc_now()
        fields = claim_fields(uuid.uuid4().hex, owner, now + timedelta(seconds=lease_seconds), now)
        try:
            stored, version = await self._replace(
                item.id, {**item.document, **fields}, item.version
            )
        except exceptions.CosmosAccessConditionFailedError:
            return None
        except exceptions.CosmosHttpResponseError as error:
            if _is_missing(error):
                return None
            raise
        return Item.from_document(stored, version)

    async def _update_claimed(
        self,
        item: Item,
        fields: Mapping[str, Any],
        still_ours: Callable[[Mapping[str, Any]], bool],
    ) -> tuple[dict[str, Any], str] | None:
        """Merge ``fields`` into the item while ``still_ours`` holds for its document.

        Tries the version the caller holds first, so the common path costs one
        write. After a 412 it reads the current document, checks it again and
        writes onto that version, keeping whatever other writers changed.
        """
        document: Mapping[str, Any] = item.document
        version = item.version
        partition_value = self._partition_value(document)
        for _ in range(MAX_WRITE_ATTEMPTS):
            if not still_ours(document):
                return None
            try:
                return await self._replace(item.id, {**document, **fields}, version)
            except exceptions.CosmosAccessConditionFailedError:
                pass
            except exceptions.CosmosHttpResponseError as error:
                if _is_missing(error):
                    return None
                raise
            current = await self._read(item.id, partition_value)
            if current is None:
                return None
            document, version = current
        raise WriteConflictError(
            f"item {item.id!r} kept changing; gave up after {MAX_WRITE_ATTEMPTS} attempts "
            "to update it"
        )

    async def renew(self, item: Item, lease_seconds: float) -> Item | None:
        lease_until = format_time(utc_now() + timedelta(seconds=lease_seconds))
        written = await self._update_claimed(
            item, {LEASE_UNTIL: lease_until}, _held_by(item.claim_id)
        )
        if written is None:
            return None
        return _to_item(written[0], written[1])

    async def finish(self, item: Item, progress: Progress, error: ErrorInfo | None = None) -> bool:
        fields = finish_fields(progress, error, utc_now())
        written = await self._update_claimed(item, fields, _held_by(item.claim_id))
        return written is not None

    async def fail_expired(self, item: Item, error: ErrorInfo, now: datetime) -> bool:
        fields = finish_fields(Progress.FAILED, error, now)
        cutoff = format_time(now)
        held = _held_by(item.claim_id)

        def expired(document: Mapping[str, Any]) -> bool:
            lease = document.get(LEASE_UNTIL)
            return held(document) and isinstance(lease, str) and lease < cutoff

        return await self._update_claimed(item, fields, expired) is not None

    async def add(self, documents: Iterable[Mapping[str, Any]]) -> int:
        bodies = []
        for document in documents:
            item_id = document.get("id")
            if not isinstance(item_id, str) or not item_id:
                raise BadDocumentError(f"document has no string 'id' (got {item_id!r})")
            bodies.append(_strip(document))

        async def create(body: dict[str, Any]) -> None:
            try:
                await self.container.create_item(body)
            except exceptions.CosmosResourceExistsError as error:
                raise BadDocumentError(
                    f"cannot add item {body['id']!r}: an item with that id already exists "
                    "(ids must be new)"
                ) from error

        await _bounded(create, bodies)
        return len(bodies)

    async def get(self, item_id: str) -> Item | None:
        if self.settings.partition_key == "/id":
            found = await self._read(item_id, item_id)
            return None if found is None else self._item({**found[0], "_etag": found[1]})
        async for page in self._query(BY_ID_QUERY, [{"name": "@id", "value": item_id}]):
            for document in page:
                return self._item(document)
        return None

    async def documents(self) -> list[dict[str, Any]]:
        """Every stored document without system fields, for tests and small inspections."""
        found: list[dict[str, Any]] = []
        async for page in self._query("SELECT * FROM c", [], page_size=MAX_PAGE_SIZE):
            found.extend(_strip(document) for document in page)
        return sorted(found, key=lambda document: str(document.get("id")))

    async def counts(self) -> Counts:
        counts: Counts = {}
        async for page in self._query(COUNTS_QUERY, [], page_size=MAX_PAGE_SIZE):
            for row in page:
                stage = counts.setdefault(str(row.get("state")), {p.value: 0 for p in Progress})
                progress = str(row.get("progress"))
                stage[progress] = stage.get(progress, 0) + 1
        return counts

    async def delete(self, item_ids: Iterable[str]) -> int:
        targets: list[tuple[str, Any]] = []
        if self.settings.partition_key == "/id":
            targets = [(item_id, item_id) for item_id in item_ids]
        else:
            for item_id in item_ids:
                async for page in self._query(
                    BY_ID_QUERY, [{"name": "@id", "value": item_id}], page_size=MAX_PAGE_SIZE
                ):
                    targets.extend((item_id, self._partition_value(d)) for d in page)

        async def remove(target: tuple[str, Any]) -> bool:
            try:
                await self.container.delete_item(target[0], partition_key=target[1])
            except exceptions.CosmosResourceNotFoundError:
                return False
            return True

        return sum(await _bounded(remove, targets))


# -- helpers ------------------------------------------------------------------


def _strip(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in SYSTEM_FIELDS}


def _to_item(document: Mapping[str, Any], version: str | None = None) -> Item:
    etag = version if version is not None else document.get("_etag")
    return Item.from_document(_strip(document), str(etag) if etag is not None else "")


def _held_by(claim_id: str | None) -> Callable[[Mapping[str, Any]], bool]:
    def held(document: Mapping[str, Any]) -> bool:
        return (
            claim_id is not None
            and document.get("progress") == Progress.IN_PROGRESS.value
            and document.get(CLAIM_ID) == claim_id
        )

    return held


def _is_missing(error: exceptions.CosmosHttpResponseError) -> bool:
    if error.status_code == 404:
        return True
    # The test server answers a point read of a missing item with a 500 that
    # carries a JavaScript TypeError; Cosmos DB answers 404. Only that exact
    # answer is taken as "missing": any other 500 stays an error.
    return error.status_code == 500 and "Cannot read properties of undefined" in str(error.message)


async def _bounded(function: Callable[[T], Awaitable[Any]], values: list[T]) -> list[Any]:
    slots = asyncio.Semaphore(BULK_CONCURRENCY)

    async def one(value: T) -> Any:
        async with slots:
            return await function(value)

    return list(await asyncio.gather(*(one(value) for value in values)))


def _default_credential(client_id: str | None) -> Any:
    from azure.identity.aio import DefaultAzureCredential

    if client_id:
        return DefaultAzureCredential(managed_identity_client_id=client_id)
    return DefaultAzureCredential()


def _parse_connection(text: str) -> tuple[str | None, str | None]:
    """Endpoint and key from ``COSMOS``; the text itself is never quoted back."""
    if not text:
        return None, None
    if "=" not in text and text.lower().startswith(("https://", "http://")):
        return text, None
    parts: dict[str, str] = {}
    for piece in text.split(";"):
        name, equals, value = piece.strip().partition("=")
        if not piece.strip():
            continue
        if not equals or not name.strip():
            raise ConfigurationError(
                "COSMOS is not a connection string: expected "
                "'AccountEndpoint=https://<account>.documents.azure.com:443/;AccountKey=<key>;'."
            )
        parts[name.strip().lower()] = value.strip()
    endpoint = parts.get("accountendpoint") or None
    if endpoint is None:
        raise ConfigurationError(
            "COSMOS has no AccountEndpoint: expected "
            "'AccountEndpoint=https://<account>.documents.azure.com:443/;AccountKey=<key>;'."
        )
    return endpoint, parts.get("accountkey") or None


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: localhost, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_endpoint(endpoint: str, verify_tls: bool) -> None:
    source = "the Cosmos DB endpoint (COSMOS__accountEndpoint or AccountEndpoint in COSMOS)"
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        host = ""
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigurationError(
            f"{source} is {endpoint!r}; expected a URL such as "
            "https://<account>.documents.azure.com:443/."
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"{source} is {endpoint!r}; plain http is accepted only on loopback, use https."
        )
    if not verify_tls and not is_loopback(host):
        raise ConfigurationError(
            f"COSMOS_VERIFY_TLS=false is refused for {endpoint!r}: certificate checks may "
            "be turned off only for an endpoint on this machine (localhost, 127.0.0.0/8 "
            "or ::1), such as a local emulator or test server."
        )


def _check_partition_key(settings: CosmosSettings, properties: Mapping[str, Any]) -> None:
    paths = (properties.get("partitionKey") or {}).get("paths") or []
    if paths and paths != [settings.partition_key]:
        raise StoreUnavailableError(
            f"the container {settings.container!r} is partitioned by {', '.join(paths)}, "
            f"but COSMOS_PARTITION_KEY is {settings.partition_key!r}. Set "
            "COSMOS_PARTITION_KEY to the container's partition key path."
        )


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigurationError(f"{name} is {raw!r}; expected true or false.")


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name} is {raw!r}; expected a whole number from 1 to {MAX_PAGE_SIZE}."
        ) from None


def _first_line(error: BaseException) -> str:
    """A short, single-line account of ``error`` for a message."""
    text: Any = None
    if isinstance(error, exceptions.CosmosHttpResponseError):
        text = error.http_error_message
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            text = json.loads(text).get("message") or text
    if not text:
        text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:300].rstrip(".") if lines else type(error).__name__


def explain_open_error(settings: CosmosSettings, error: BaseException, step: str) -> str:
    """One message for a failure to open: what happened and which setting to fix."""
    where = f"the Cosmos DB account at {settings.endpoint}"
    if isinstance(error, (ServiceRequestError, ServiceResponseError, TimeoutError, OSError)):
        return (
            f"cannot reach {where}: {_first_line(error)}. Check COSMOS__accountEndpoint "
            "(or AccountEndpoint in COSMOS) and that this machine may connect to the account."
        )
    if isinstance(error, ClientAuthenticationError) and not isinstance(
        error, exceptions.CosmosHttpResponseError
    ):
        return (
            f"cannot get a token for {where} from {settings.auth_description}: "
            f"{_first_line(error)}. In Azure, check the app's managed identity and "
            "COSMOS__clientId; locally, sign in with 'az login' or set COSMOS to a "
            "connection string."
        )
    if isinstance(error, exceptions.CosmosHttpResponseError):
        status = error.status_code
        detail = _first_line(error)
        if status == 401 and settings.key is not None:
            return (
                f"{where} refused the account key ({status}: {detail}). Check the "
                "AccountKey in COSMOS, or remove COSMOS and set COSMOS__accountEndpoint "
                "if the account allows only identity-based access."
            )
        if status == 401:
            return (
                f"{where} refused the token of {settings.auth_description} "
                f"({status}: {detail}). Check COSMOS__clientId and that the identity "
                "belongs to the account's tenant."
            )
        if status == 403 and settings.key is None:
            return (
                f"{settings.auth_description} may not read {where} ({status}: {detail}). "
                "Assign the identity the 'Cosmos DB Built-in Data Contributor' role on "
                "the account (it can take a few minutes to apply), or set "
                "COSMOS__clientId to the identity that has it."
            )
        if status == 403:
            return (
                f"{where} refused access ({status}: {detail}). Check the account's "
                "firewall and network settings, and the AccountKey in COSMOS."
            )
        if status == 404 and step == "account":
            return (
                f"{where} has no such resource ({status}: {detail}). "
                "Check COSMOS__accountEndpoint (or AccountEndpoint in COSMOS)."
            )
        if step == "create":
            return (
                f"cannot create the database {settings.database!r} or its containers in "
                f"{where} ({status}: {detail}). Creating them needs an account key or a "
                "control-plane role; in Azure the infrastructure creates them."
            )
        return f"{where} failed while opening the store ({status}: {detail})."
    return f"cannot open {where}: {type(error).__name__}: {_first_line(error)}."
