"""The command line as a user drives it, in a subprocess, on a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def worker(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    environment = {**inherited, "WORKER_TEST_TASK_SLEEP": "0", **(env or {})}
    environment["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def status(cwd: Path, *args: str) -> dict[str, dict[str, int]]:
    result = worker(*args, "status", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    counts: dict[str, dict[str, int]] = json.loads(result.stdout)
    return counts


def test_seed_run_status_on_the_default_store(tmp_path: Path) -> None:
    seeded = worker("seed", "--stage", "Initialize,Upload", "--count", "4", cwd=tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    assert (tmp_path / "routing-items.db").exists()

    ran = worker("run", "--stages", "Initialize,Upload", "--concurrency", "3", cwd=tmp_path)

    assert ran.returncode == 0, ran.stderr
    assert "Initialize" in ran.stdout and "8 items in" in ran.stdout
    assert status(tmp_path) == {
        "Initialize": {"Ready": 0, "InProgress": 0, "Completed": 4, "Failed": 0},
        "Upload": {"Ready": 0, "InProgress": 0, "Completed": 4, "Failed": 0},
    }


def test_run_with_seed_demo_fills_an_empty_store_once(tmp_path: Path) -> None:
    first = worker("run", "--seed-demo", cwd=tmp_path)
    second = worker("run", "--seed-demo", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert "seeded 20 demo items" in first.stderr
    assert "seeded" not in second.stderr
    counts = status(tmp_path)
    assert set(counts) == {"Initialize", "SetReadOnly", "Upload", "TestTask"}
    assert sum(c["Completed"] + c["Failed"] for c in counts.values()) == 20
    assert counts["Upload"]["Failed"] == 1


def test_store_option_and_setting_choose_the_file(tmp_path: Path) -> None:
    worker("--store", "a.db", "seed", "--stage", "Upload", "--count", "2", cwd=tmp_path)
    worker("seed", "--stage", "Upload", "--count", "3", cwd=tmp_path, env={"WORKER_STORE": "b.db"})

    assert status(tmp_path, "--store", "a.db")["Upload"]["Ready"] == 2
    assert status(tmp_path, "--store", "b.db")["Upload"]["Ready"] == 3


def test_seed_with_another_progress(tmp_path: Path) -> None:
    worker("seed", "--stage", "Upload", "--count", "2", "--progress", "Failed", cwd=tmp_path)

    assert status(tmp_path)["Upload"]["Failed"] == 2


def test_run_json_summary_and_status_table(tmp_path: Path) -> None:
    worker("seed", "--stage", "Upload", "--count", "2", cwd=tmp_path)

    ran = worker("run", "--stages", "Upload", "--json", cwd=tmp_path)
    table = worker("status", cwd=tmp_path)

    summary = json.loads(ran.stdout)
    assert summary["stages"][0]["completed"] == 2
    assert table.stdout.split("\n")[0].split() == [
        "stage",
        "Ready",
        "InProgress",
        "Completed",
        "Failed",
    ]


def test_deadline_leaves_unclaimed_items_ready(tmp_path: Path) -> None:
    worker("seed", "--stage", "TestTask", "--count", "30", cwd=tmp_path)
    env = {"WORKER_TEST_TASK_SLEEP": "0.2"}

    ran = worker("run", "--concurrency", "2", "--deadline", "0.5", cwd=tmp_path, env=env)

    assert ran.returncode == 0, ran.stderr
    assert "stopped early: deadline reached" in ran.stdout
    counts = status(tmp_path)["TestTask"]
    assert counts["InProgress"] == 0
    assert 0 < counts["Ready"] < 30


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "--stages", "Uplaod"], {}, "--stages names stages that no function is mapped"),
        (["run", "--concurrency", "many"], {}, "--concurrency must be a whole number"),
        (["run", "--concurrency", "0"], {}, "--concurrency must be a whole number"),
        (["run"], {"WORKER_CONCURRENCY": "-2"}, "WORKER_CONCURRENCY must be a whole number"),
        (["run", "--stage-map", "{oops"], {}, "stage map is not valid JSON"),
        (["run"], {"WORKER_STAGE_MAP": '{"Upload": 7}'}, "maps to 7"),
        (["run", "--modules", "missing_module_xyz"], {}, "'missing_module_xyz' failed to import"),
        (["run", "--deadline", "-1"], {}, "--deadline must be a positive number"),
        (["run"], {"WORKER_LEASE_SECONDS": "soon"}, "WORKER_LEASE_SECONDS must be a number"),
        (["seed", "--stage", "Upload", "--count", "-3"], {}, "--count must not be negative"),
    ],
)
def test_bad_input_is_one_clear_message_and_changes_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    worker("seed", "--stage", "Upload", "--count", "3", cwd=tmp_path)

    result = worker(*args, cwd=tmp_path, env=env)

    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert status(tmp_path)["Upload"] == {"Ready": 3, "InProgress": 0, "Completed": 0, "Failed": 0}


def test_store_that_cannot_be_opened_has_its_own_exit_code(tmp_path: Path) -> None:
    (tmp_path / "folder.db").mkdir()

    missing_dir = worker("--store", str(tmp_path / "no" / "such" / "x.db"), "status", cwd=tmp_path)
    folder = worker("--store", "folder.db", "run", cwd=tmp_path)

    for result in (missing_dir, folder):
        assert result.returncode == 3
        assert "store unavailable" in result.stderr
        assert "WORKER_STORE" in result.stderr
        assert "Traceback" not in result.stderr


def test_unknown_command_and_option_are_refused(tmp_path: Path) -> None:
    assert worker("launch", cwd=tmp_path).returncode == 2
    assert worker("run", "--fast", cwd=tmp_path).returncode == 2


def test_recover_marks_expired_claims_failed(tmp_path: Path) -> None:
    import asyncio

    from worker.store.sqlite import SqliteStore

    worker("seed", "--stage", "Upload", "--count", "2", cwd=tmp_path)

    async def claim_all_with_a_short_lease() -> None:
        async with SqliteStore(tmp_path / "routing-items.db") as store:
            async for item in store.ready_items("Upload"):
                await store.claim(item, "gone:1:x", 0.001)

    asyncio.run(claim_all_with_a_short_lease())

    result = worker("recover", cwd=tmp_path)

    assert result.returncode == 0
    assert "marked 2 items" in result.stdout
    assert status(tmp_path)["Upload"]["Failed"] == 2


def test_setup_then_seed_run_and_status_on_cosmos(
    tmp_path: Path, cosmos_environment: dict[str, str]
) -> None:
    env = {**cosmos_environment, "WORKER_STORE": "cosmos"}

    before = worker("status", cwd=tmp_path, env=env)
    setup = worker("setup", cwd=tmp_path, env=env)
    seeded = worker("seed", "--stage", "Upload", "--count", "3", cwd=tmp_path, env=env)
    ran = worker("run", "--stages", "Upload", cwd=tmp_path, env=env)
    counts = worker("status", "--json", cwd=tmp_path, env=env)

    assert before.returncode == 3
    assert "COSMOS_DATABASE" in before.stderr
    assert setup.returncode == 0, setup.stderr
    assert seeded.returncode == 0 and ran.returncode == 0, ran.stderr
    assert json.loads(counts.stdout) == {
        "Upload": {"Ready": 0, "InProgress": 0, "Completed": 3, "Failed": 0}
    }
