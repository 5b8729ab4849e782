#!/usr/bin/env bash
# Sets up everything the tests need (a virtual environment, the Cosmos DB test
# server from npm) and runs lint, type checks and the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k cli`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "test.sh: $python is older than Python 3.11; set PYTHON to a 3.11 interpreter" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The Cosmos DB test server (a Node.js package, pinned by its lock file).
if [ ! -d tests/cosmos_server/node_modules ]; then
    (cd tests/cosmos_server && npm ci --no-audit --no-fund --loglevel=error)
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
