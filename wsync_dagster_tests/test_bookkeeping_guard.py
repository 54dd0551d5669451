"""The batched event log storages load only on the Dagster they were built for, and say what to use instead.

The installed Dagster is played by patching `dagster.__version__` in this process; `wsync run` is called
in-process (`cli.main`) so it sees the patched version when it opens the instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import dagster
import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus

from wsync_dagster.bookkeeping import BUILT_FOR
from wsync_dagster.cli import main
from wsync_dagster_tests.conftest import USERS_SQL, profile_store_bytes, user_sync
from wsync_dagster_tests.engines.postgres import SERVER, scratch_database

REPO = Path(__file__).resolve().parents[1]
OTHER_DAGSTER = "1.14.0"
# The instance file each backend ships with, and the storage wsync's error names for it.
INSTANCE_FILES = {"sqlite": REPO / "dagster.yaml", "postgresql": REPO / "deploy" / "dagster-postgres.yaml"}
BATCHED = {
    "sqlite": "wsync_dagster.bookkeeping.BatchedSqliteEventLogStorage",
    "postgresql": "wsync_dagster.bookkeeping.BatchedPostgresEventLogStorage",
}
SWITCH = {
    "sqlite": "delete event_log_storage from dagster.yaml to use Dagster's stock "
    "dagster._core.storage.event_log.SqliteEventLogStorage (the same files)",
    "postgresql": "set event_log_storage in dagster.yaml to Dagster's stock storage "
    "(module: dagster_postgres.event_log, class: PostgresEventLogStorage, the same config)",
}
STOCK = {
    "sqlite": "dagster._core.storage.event_log.sqlite.sqlite_event_log.SqliteEventLogStorage",
    "postgresql": "dagster_postgres.event_log.event_log.PostgresEventLogStorage",
}


@contextmanager
def dagster_home(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """DAGSTER_HOME with the backend's shipped dagster.yaml (on PostgreSQL, in a scratch database)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_FILES[backend].read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with scratch_database() if backend == "postgresql" else nullcontext("") as database:
        if database:
            monkeypatch.setenv("DAGSTER_PG_HOST", SERVER["host"])
            monkeypatch.setenv("DAGSTER_PG_PORT", str(SERVER["port"]))
            monkeypatch.setenv("DAGSTER_PG_DB", database)
            monkeypatch.setenv("DAGSTER_PG_USER", SERVER["user"])
            monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-the-local-server-trusts")
        yield home


@pytest.fixture
def users_sync_file(make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path]) -> Path:
    """The daily users sync (crm_users) over a small warehouse."""
    return write_sync(user_sync(make_warehouse(USERS_SQL)))


@pytest.mark.parametrize("backend", INSTANCE_FILES)
def test_wsync_run_on_another_dagster_names_the_stock_event_log_to_switch_to(
    backend, users_sync_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(dagster, "__version__", OTHER_DAGSTER)
    with dagster_home(tmp_path, backend, monkeypatch) as home:
        assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"wsync run: Dagster instance {home / 'dagster.yaml'}: {BATCHED[backend]} is built for Dagster {BUILT_FOR}, "
        f"not the installed {OTHER_DAGSTER}: {SWITCH[backend]}, or install dagster=={BUILT_FOR}"
    )
    assert profile_store_bytes(tmp_path) is None


@pytest.mark.parametrize("backend", INSTANCE_FILES)
def test_after_the_switch_the_error_says_syncs_run_on_that_dagster_with_the_stock_event_log(
    backend, users_sync_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(dagster, "__version__", OTHER_DAGSTER)
    with dagster_home(tmp_path, backend, monkeypatch) as home:
        config = yaml.safe_load((home / "dagster.yaml").read_text())
        if backend == "sqlite":
            del config["event_log_storage"]
        else:
            stock = {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage"}
            config["event_log_storage"].update(stock)
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))

        assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
        with DagsterInstance.from_config(str(home)) as instance:
            storage = type(instance.event_log_storage)
            assert f"{storage.__module__}.{storage.__name__}" == STOCK[backend]
            [record] = instance.get_run_records()
            assert record.dagster_run.status == DagsterRunStatus.SUCCESS
    assert profile_store_bytes(tmp_path) is not None


def test_the_batched_event_log_loads_on_the_dagster_it_was_built_for(tmp_path, monkeypatch):
    with (
        dagster_home(tmp_path, "sqlite", monkeypatch) as home,
        DagsterInstance.from_config(str(home)) as instance,
    ):
        assert type(instance.event_log_storage).__name__ == "BatchedSqliteEventLogStorage"
    assert dagster.__version__ == BUILT_FOR
