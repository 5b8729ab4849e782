"""Stage maps and stage modules: parsing, lookup and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ConfigurationError
from worker.stages import (
    StageEntry,
    build_stages,
    import_stage_package,
    load_modules,
    parse_stage_map,
    registered_functions,
)


def test_map_accepts_names_and_objects_with_kwargs() -> None:
    entries = parse_stage_map(
        '{"Initialize": "initialize",'
        ' "Upload": {"function": "stages.upload:upload", "kwargs": {"timeout": 5},'
        ' "timeout": 60, "leaseSeconds": 120}}'
    )

    assert entries["Initialize"] == StageEntry("initialize")
    assert entries["Upload"] == StageEntry("stages.upload:upload", {"timeout": 5}, 60.0, 120.0)


def test_map_is_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text('{"Upload": "upload"}', encoding="utf-8")

    assert parse_stage_map(str(path)) == {"Upload": StageEntry("upload")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["Upload"]', "must be a JSON object"),
        ('{"Upload": 3}', "expected a function name"),
        ('{"Upload": {"kwargs": {}}}', 'needs a "function" string'),
        ('{"Upload": {"function": "upload", "kwargs": [1]}}', '"kwargs" must be a JSON object'),
        ('{"Upload": {"function": "upload", "retries": 1}}', "unknown keys \\['retries'\\]"),
        ('{"Upload": {"function": "upload", "timeout": -1}}', "positive number of seconds"),
        ("missing-file.json", "neither a JSON object nor a readable file"),
    ],
)
def test_malformed_maps_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_stage_map(text)


def test_stage_package_registers_the_built_in_stages() -> None:
    import_stage_package()

    stages, skipped = build_stages(None, {})

    names = {stage.name for stage in stages}
    assert {"Initialize", "SetReadOnly", "Upload", "TestTask"} <= names
    assert skipped == {}
    assert {"initialize", "set_read_only", "upload", "test_task"} <= set(registered_functions())


def test_map_overrides_the_default_function() -> None:
    import_stage_package()

    stages, _ = build_stages(["Upload"], parse_stage_map('{"Upload": "initialize"}'))

    assert stages[0].function_name == "initialize"


def test_module_from_a_file_path_registers_its_stage(tmp_path: Path) -> None:
    module = tmp_path / "archive_stage.py"
    module.write_text(
        "from worker.stages import stage_function\n"
        "@stage_function('archive', stage='Archive')\n"
        "def archive(item):\n"
        "    return None\n",
        encoding="utf-8",
    )

    load_modules([str(module)])
    stages, _ = build_stages(["Archive"], {})

    assert stages[0].function_name == "archive"


def test_module_that_fails_to_import_names_the_module_and_the_cause(tmp_path: Path) -> None:
    module = tmp_path / "broken_stage.py"
    module.write_text("raise RuntimeError('needs a database')\n", encoding="utf-8")

    expected = r"broken_stage\.py.*RuntimeError: needs a database"
    with pytest.raises(ConfigurationError, match=expected):
        load_modules([str(module)])


def test_missing_module_name_and_missing_file_are_clear_errors() -> None:
    with pytest.raises(ConfigurationError, match="'no_such_stage_module' failed to import"):
        load_modules(["no_such_stage_module"])
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_modules(["./nowhere/stage.py"])


def test_function_in_a_missing_module_is_a_skip_reason() -> None:
    stages, skipped = build_stages(["Upload"], {"Upload": StageEntry("no.such:function")})

    assert stages == []
    assert "'no.such' of 'no.such:function' failed to import" in skipped["Upload"]
