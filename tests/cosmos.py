"""Helpers for tests on Cosmos DB: the local test server and the store settings.

The test server is ``@vercel/cosmosdb-server`` (pinned in cosmos_server/package.json),
run by ``cosmos_server/server.js`` on loopback over HTTPS with keep-alive. It lives
as long as the process that started it: closing its standard input stops it.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

SERVER_DIR = Path(__file__).resolve().parent / "cosmos_server"
#: The test server accepts any key; this one is only recognisable in output.
TEST_KEY = "dGVzdC1zZXJ2ZXIta2V5LW5vdC1hLXNlY3JldA=="
START_TIMEOUT_SECONDS = 30.0

#: Settings of a real account or the official emulator for the integration test.
REAL_ENDPOINT = "WORKER_TEST_COSMOS_ENDPOINT"
REAL_KEY = "WORKER_TEST_COSMOS_KEY"
REAL_DATABASE = "WORKER_TEST_COSMOS_DATABASE"
REAL_CONTAINER = "WORKER_TEST_COSMOS_CONTAINER"
REAL_VERIFY_TLS = "WORKER_TEST_COSMOS_VERIFY_TLS"


class ServerError(RuntimeError):
    """The test server could not be installed or started."""


def unique_name(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def install_server() -> None:
    """Install the pinned server package with ``npm ci`` unless it is there."""
    if (SERVER_DIR / "node_modules" / "@vercel" / "cosmosdb-server").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ServerError("npm is not installed; the Cosmos DB tests need Node.js 20 and npm")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=SERVER_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise ServerError(f"npm ci failed in {SERVER_DIR}:\n{result.stdout}\n{result.stderr}")


class TestServer:
    """A running test server; use as a context manager or call ``stop``."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, port: int = 0) -> None:
        node = shutil.which("node")
        if node is None:
            raise ServerError("node is not installed; the Cosmos DB tests need Node.js 20")
        install_server()
        # The server reports its own errors (a 500 for a missing item, for one) on
        # stderr; a file keeps them for a failure message without filling a pipe.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [node, str(SERVER_DIR / "server.js"), str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.port = self._read_port()
        self.endpoint = f"https://127.0.0.1:{self.port}/"

    def _read_port(self) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline()
                if line.startswith("port "):
                    return int(line.split()[1])
                if not line and self.process.poll() is not None:
                    break
        self.stop()
        raise ServerError(f"the Cosmos DB test server did not start:\n{self.errors()}")

    def send(self, command: str) -> str:
        """Send a fault command (see server.js) and return the server's answer."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT_SECONDS)
        if not ready:
            raise ServerError(f"the test server did not answer {command!r}")
        return self.process.stdout.readline().strip()

    def errors(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()

    def __enter__(self) -> TestServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def server_environment(endpoint: str, database: str, **settings: str) -> dict[str, str]:
    """Store settings for the test server: its key, TLS checks off (loopback only)."""
    return {
        "COSMOS": f"AccountEndpoint={endpoint};AccountKey={TEST_KEY};",
        "COSMOS_VERIFY_TLS": "false",
        "COSMOS_DATABASE": database,
        **settings,
    }


def real_environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """Store settings for the configured real account or emulator, or None."""
    environ = os.environ if environ is None else environ
    endpoint = environ.get(REAL_ENDPOINT, "").strip()
    if not endpoint:
        return None
    settings = {
        "COSMOS__accountEndpoint": endpoint,
        "COSMOS_DATABASE": environ.get(REAL_DATABASE, "").strip() or "OrchestratorDb",
        # A container of its own, so that a test run never touches real work.
        "COSMOS_CONTAINER": environ.get(REAL_CONTAINER, "").strip() or "RoutingItemsTest",
        "COSMOS_VERIFY_TLS": environ.get(REAL_VERIFY_TLS, "").strip() or "true",
    }
    key = environ.get(REAL_KEY, "").strip()
    if key:
        settings["COSMOS"] = f"AccountEndpoint={endpoint};AccountKey={key};"
    for name in ("COSMOS__clientId", "AZURE_CLIENT_ID", "COSMOS_PARTITION_KEY"):
        if environ.get(name):
            settings[name] = environ[name]
    return settings


REAL_SKIP_REASON = (
    f"no real Cosmos DB account configured: set {REAL_ENDPOINT} (and {REAL_KEY} for a "
    f"key, else DefaultAzureCredential is used; {REAL_DATABASE} and {REAL_CONTAINER} "
    "choose a test database and container, default OrchestratorDb and RoutingItemsTest)"
)
