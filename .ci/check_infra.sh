#!/usr/bin/env bash
# Checks the Bicep templates under infra/ without a Bicep compiler:
#   1. every .bicep file must parse (pycep, the parser checkov itself uses);
#   2. checkov's Bicep checks must report no failed check.
# Step 1 exists because checkov reports a file it cannot parse and still exits 0.
#
# checkov pins old versions of many packages, so it lives in a virtual environment of
# its own, outside the work tree (CHECKOV_VENV overrides the place). The environment is
# built once and reused while the pins below are unchanged.
set -euo pipefail

CHECKOV_VERSION=3.3.30
PYCEP_VERSION=0.5.1 # the exact version checkov 3.3.30 requires

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/routing-worker/checkov-$CHECKOV_VERSION}"
stamp="$venv/.installed-checkov-$CHECKOV_VERSION-pycep-$PYCEP_VERSION"
python="${PYTHON:-python3}"

if [[ ! -f "$stamp" ]]; then
    echo "check_infra: building $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    log="$venv/install.log"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check \
        "checkov==$CHECKOV_VERSION" "pycep-parser==$PYCEP_VERSION" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "check_infra: installing checkov failed; full log in $log" >&2
        exit 1
    fi
    touch "$stamp"
fi

cd "$root"
mapfile -t templates < <(find infra -name '*.bicep' -type f | sort)
if [[ ${#templates[@]} -eq 0 ]]; then
    echo "check_infra: no .bicep file under infra/" >&2
    exit 1
fi

echo "check_infra: parsing ${#templates[@]} Bicep files"
"$venv/bin/python" - "${templates[@]}" <<'PY'
import sys
from pathlib import Path

from pycep import BicepParser

parser = BicepParser()
broken = 0
for name in sys.argv[1:]:
    try:
        parser.parse(file_path=Path(name))
    except Exception as error:  # lark raises several unrelated types
        broken += 1
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"check_infra: {name} does not parse: {type(error).__name__}: {first_line}")
        print(str(error), file=sys.stderr)
sys.exit(1 if broken else 0)
PY

echo "check_infra: running checkov $CHECKOV_VERSION"
# No platform API key: checkov scans locally. BC_SKIP_MAPPING stops it asking the
# platform for check metadata, which this network cannot reach anyway.
BC_SKIP_MAPPING=TRUE "$venv/bin/checkov" \
    --directory infra \
    --framework bicep \
    --quiet \
    --compact \
    --skip-download \
    --output cli
echo "check_infra: ok"
