"""The templates and the code agree on app settings, and the templates hold no secret.

These read the Bicep files as text: no Bicep compiler or checkov is needed here
(.ci/check_infra.sh parses and checks the templates in their own environment).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
APP_TEMPLATE = INFRA / "modules" / "function-app.bicep"
MAIN_TEMPLATE = INFRA / "main.bicep"
PARAMETERS = INFRA / "main.parameters.json"
README = ROOT / "README.md"

# Set by the templates for the Functions host, the platform or the Azure SDK, not read
# by our code, and documented by Microsoft rather than in our README.
PLATFORM_SETTINGS = frozenset(
    {
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        "AZURE_CLIENT_ID",
    }
)

# Read by the code but left unset by the templates on purpose.
UNSET_BY_INFRA = {
    "COSMOS": "a connection string with a key, for an emulator or a test server only",
    "COSMOS_PARTITION_KEY": "its default, /id, is the partition key the templates create",
    "COSMOS_PAGE_SIZE": "its default suits the deployed account",
    "COSMOS_VERIFY_TLS": "turns certificate checks off for the local test server only",
    "WORKER_STAGE_TIMEOUT": "optional; per-stage timeouts usually live in the stage map",
    "WORKER_GRACE_SECONDS": "read by the command line only, on a stop signal",
    "WORKER_TEST_TASK_SLEEP": "tunes the demo test task only",
    "WORKER_TEST_TASK_FAILURE_RATE": "tunes the demo test task only",
    "WORKER_TEST_TASK_SEED": "tunes the demo test task only",
}

# What only a key-based connection or a secret parameter would need.
FORBIDDEN_IN_TEMPLATES = (
    "listKeys(",
    "listConnectionStrings(",
    "listAccountSas(",
    "AccountKey=",
    "primaryMasterKey",
    "SharedAccessSignature",
    "@secure",
)

# A string literal naming one of our settings, bare or as a binding's %SETTING%.
SETTING_LITERAL = re.compile(r"""["']%?((?:WORKER|COSMOS)[A-Za-z0-9_]*)%?["']""")
SETTINGS_VAR = re.compile(r"^var\s+\w*Settings\s*=", re.MULTILINE)
OBJECT_KEY = re.compile(r"^\s*'?([A-Za-z_][A-Za-z0-9_]*)'?\s*:", re.MULTILINE)
LINE_COMMENT = re.compile(r"(^|\s)//.*$", re.MULTILINE)
OPENERS, CLOSERS = "({[", ")}]"


def balanced_span(text: str, start: int) -> str:
    """The text from ``start`` up to where the first bracket opened there closes."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] in OPENERS:
            depth += 1
        elif text[index] in CLOSERS:
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    raise AssertionError(f"unbalanced brackets after offset {start} in {APP_TEMPLATE}")


def infra_settings() -> set[str]:
    """Names of the app settings the Function App template sets.

    They are the keys of the template's ``var ...Settings`` objects, which the site's
    ``appSettings`` is built from.
    """
    text = LINE_COMMENT.sub(r"\1", APP_TEMPLATE.read_text())
    names: set[str] = set()
    for match in SETTINGS_VAR.finditer(text):
        names.update(OBJECT_KEY.findall(balanced_span(text, match.end())))
    return names


def code_files() -> list[Path]:
    files = sorted((ROOT / "worker").rglob("*.py"))
    app = ROOT / "function_app.py"
    if app.exists():
        files.append(app)
    return files


def code_settings() -> set[str]:
    """Names of our settings that appear as string literals in the code."""
    names: set[str] = set()
    for path in code_files():
        names.update(SETTING_LITERAL.findall(path.read_text()))
    return names


def is_read(name: str, read: set[str]) -> bool:
    # `COSMOS__accountEndpoint` is also read through the connection named `COSMOS`.
    return name in read or name.split("__")[0] in read


def readme_table_settings() -> set[str]:
    names: set[str] = set()
    for line in README.read_text().splitlines():
        if line.lstrip().startswith("|"):
            names.update(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", line))
    return names


def bicep_params(path: Path) -> dict[str, str | None]:
    """Each ``param`` of a template mapped to its default as written, or None."""
    params: dict[str, str | None] = {}
    for match in re.finditer(r"^param\s+(\w+)\s+\w+(?:\s*=\s*(.+?))?\s*$", path.read_text(), re.M):
        params[match.group(1)] = match.group(2)
    return params


def test_template_settings_are_found() -> None:
    settings = infra_settings()

    assert {"WORKER_STORE", "COSMOS__accountEndpoint", "AZURE_CLIENT_ID"} <= settings
    assert "appSettings: [for setting in items(appSettings)" in APP_TEMPLATE.read_text()


def test_every_setting_the_templates_set_is_read_by_the_code() -> None:
    read = code_settings()

    unread = sorted(
        name for name in infra_settings() - PLATFORM_SETTINGS if not is_read(name, read)
    )

    assert not unread, f"set in {APP_TEMPLATE.name} but read nowhere in the code: {unread}"


def test_every_setting_the_templates_set_is_in_the_readme_table() -> None:
    assert README.exists(), "README.md is missing; its settings table documents every setting"
    documented = readme_table_settings()

    missing = sorted(infra_settings() - PLATFORM_SETTINGS - documented)

    assert not missing, (
        f"set in {APP_TEMPLATE.name} but not in the README settings table: {missing}"
    )


def test_every_setting_the_code_reads_is_set_by_the_templates_or_listed_as_unset() -> None:
    set_by_infra = infra_settings()

    unset = sorted(
        name
        for name in code_settings()
        if name not in set_by_infra
        and name not in UNSET_BY_INFRA
        and not any(other.startswith(name + "__") for other in set_by_infra)
    )

    assert not unset, (
        f"read by the code but neither set in {APP_TEMPLATE.name} nor listed in "
        f"UNSET_BY_INFRA with a reason: {unset}"
    )


def test_settings_left_unset_on_purpose_stay_unset() -> None:
    assert not set(UNSET_BY_INFRA) & infra_settings()


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.bicep")), ids=lambda p: p.name)
def test_template_holds_no_key_or_secret(path: Path) -> None:
    text = path.read_text()

    for forbidden in FORBIDDEN_IN_TEMPLATES:
        assert forbidden not in text, f"{path.name} contains {forbidden!r}"


def test_key_based_access_is_switched_off() -> None:
    modules = INFRA / "modules"

    assert "disableLocalAuth: true" in (modules / "cosmos.bicep").read_text()
    assert "allowSharedKeyAccess: false" in (modules / "storage.bicep").read_text()
    monitoring = (modules / "monitoring.bicep").read_text()
    assert "DisableLocalAuth: true" in monitoring
    assert "disableLocalAuth: true" in monitoring


def test_parameters_file_names_only_parameters_of_main_template() -> None:
    params = bicep_params(MAIN_TEMPLATE)
    given = json.loads(PARAMETERS.read_text())["parameters"]

    assert set(given) <= set(params)
    assert {name for name, default in params.items() if default is None} <= set(given)


def test_parameters_file_defaults_match_template_defaults() -> None:
    params = bicep_params(MAIN_TEMPLATE)
    given = json.loads(PARAMETERS.read_text())["parameters"]

    for name, entry in given.items():
        fallback = re.fullmatch(r"\$\{\w+=(.*)\}", entry["value"])
        if fallback:
            default = params[name]
            assert default is not None, f"{name} has a fallback but no template default"
            assert fallback.group(1) == default.strip("'"), name
