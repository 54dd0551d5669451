"""Dagster's bookkeeping of many-partition runs: the batched event log answers as the stock one does.

Each test runs the same wsync runs on two Dagster instances, one with Dagster's stock event log and one
with wsync_dagster.bookkeeping's, and compares what Dagster's own queries answer: an upgrade of Dagster
that breaks the storage fails here. Both on SQLite (the repo's dagster.yaml) and on PostgreSQL
(deploy/dagster-postgres.yaml, scratch databases on the local server).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import yaml
from dagster import AssetCheckKey, DagsterInstance
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from dagster_shared.serdes import serialize_value

from wsync_dagster.bookkeeping import (
    BATCH_SIZE_VARIABLE,
    BatchedPostgresEventLogStorage,
    BatchedSqliteEventLogStorage,
    EventTexts,
)
from wsync_dagster.defs import build_definitions, sync_job_name
from wsync_dagster.defs.assets import REJECT_RATE_CHECK, delivery_key, mapped_key
from wsync_dagster.modes import sync_mode
from wsync_dagster.run_tags import partition_range_tags
from wsync_dagster.runner import RunError, run_sync
from wsync_dagster.spec import SyncSpec, load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import USERS_SQL, user_sync
from wsync_dagster_tests.engines.postgres import SERVER, scratch_database
from wsync_dagster_tests.test_dagster_dev import REPO, dagster_dev, graphql, wait_until_loaded

FIRST, LAST = "2024-01-01-00:00", "2024-01-02-23:00"  # 48 hourly partitions; rows fall in three of them
NEXT_FIRST, NEXT_LAST = "2024-01-03-00:00", "2024-01-03-23:00"
STORAGES = ("stock", "batched")
BACKENDS = ("sqlite", "postgresql")
BATCHED = {"sqlite": BatchedSqliteEventLogStorage, "postgresql": BatchedPostgresEventLogStorage}


def hourly_spec(make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path]) -> SyncSpec:
    """The users sync with hourly partitions from 2024-01-01."""
    sync = user_sync(make_warehouse(USERS_SQL), sync={"frequency": "hourly", "start": "2024-01-01T00:00:00Z"})
    return load_sync_file(write_sync(sync))


def write_home(home: Path, storage: str, backend: str = "sqlite") -> Path:
    """A DAGSTER_HOME with the backend's instance file; for `stock`, with Dagster's own event log storage."""
    home.mkdir(parents=True)
    if backend == "sqlite":
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        if storage == "stock":
            config.pop("event_log_storage")
    else:
        config = yaml.safe_load((REPO / "deploy" / "dagster-postgres.yaml").read_text())
        if storage == "stock":
            stock = {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage"}
            config["event_log_storage"].update(stock)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@contextmanager
def instance_for(
    tmp_path: Path, storage: str, monkeypatch: pytest.MonkeyPatch, backend: str = "sqlite"
) -> Iterator[DagsterInstance]:
    """A Dagster instance on the backend with its own home (and database), state folder and profile store."""
    # Unset for the stock storages (each event stored on its own, the reference); the batched ones set it.
    monkeypatch.delenv(BATCH_SIZE_VARIABLE, raising=False)
    monkeypatch.setenv("WSYNC_STATE_DIR", str(tmp_path / storage / "state"))
    monkeypatch.setenv("WSYNC_PROFILE_STORE", f"sqlite:///{tmp_path / storage / 'profiles.sqlite'}")
    home = write_home(tmp_path / storage / "home", storage, backend)
    with scratch_database() if backend == "postgresql" else nullcontext("") as database:
        if database:
            monkeypatch.setenv("DAGSTER_PG_HOST", SERVER["host"])
            monkeypatch.setenv("DAGSTER_PG_PORT", str(SERVER["port"]))
            monkeypatch.setenv("DAGSTER_PG_DB", database)
            monkeypatch.setenv("DAGSTER_PG_USER", SERVER["user"])
            monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-the-local-server-trusts")
        with DagsterInstance.from_config(str(home)) as instance:
            assert (type(instance.event_log_storage) is BATCHED[backend]) == (storage == "batched")
            yield instance


def run(spec: SyncSpec, instance: DagsterInstance, partitions: str, store_url: str | None = None) -> str:
    """`wsync run SPEC --partition partitions` on the instance; the Dagster run id."""
    store = open_profile_store(os.environ["WSYNC_PROFILE_STORE"])
    try:
        return run_sync(spec, store, instance, partition=partitions, store_url=store_url).run_id
    finally:
        store.close()


def answers(instance: DagsterInstance, spec: SyncSpec, runs: dict[str, str]) -> dict:
    """What Dagster's own asset queries answer, with run ids and storage ids named by their role."""
    role = {run_id: name for name, run_id in runs.items()}
    partitions_def = sync_mode(spec).partitions()
    result: dict = {}
    for key in (mapped_key(spec), delivery_key(spec)):
        status = get_and_update_asset_status_cache_value(instance, key, partitions_def)
        records = instance.fetch_materializations(key, limit=10_000).records
        latest = instance.get_latest_materialization_event(key)
        entry = instance.get_asset_records([key])[0].asset_entry
        planned = instance.get_latest_planned_materialization_info(key)
        result[key.to_user_string()] = {
            "materialized": sorted(instance.get_materialized_partitions(key)),
            "status": {
                "materialized": sorted(
                    status.deserialize_materialized_partition_subsets(partitions_def).get_partition_keys()
                ),
                "failed": sorted(
                    status.deserialize_failed_partition_subsets(partitions_def).get_partition_keys()
                ),
                "in_progress": sorted(
                    status.deserialize_in_progress_partition_subsets(partitions_def).get_partition_keys()
                ),
            },
            "materializations": sorted(
                (
                    r.partition_key,
                    role[r.run_id],
                    {k: v.value for k, v in r.asset_materialization.metadata.items()},
                )
                for r in records
            ),
            "latest": (latest.dagster_event.partition, role[latest.run_id]) if latest else None,
            "latest_is_newest_record": entry.last_materialization_record is None
            or entry.last_materialization_record.storage_id == max(r.storage_id for r in records),
            "last_run": role.get(entry.last_run_id),
            "last_planned_run": role[planned.run_id] if planned else None,
            "attempts_without_materialization": {
                partition: role[run_id]
                for partition, (
                    run_id,
                    _,
                ) in instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(
                    key
                ).items()
            },
        }
    check = AssetCheckKey(mapped_key(spec), REJECT_RATE_CHECK)
    result["checks"] = sorted(
        (record.partition or "", record.status.value, role[record.run_id])
        for record in instance.event_log_storage.get_asset_check_execution_history(check, limit=10_000)
    )
    result["event_logs"] = {
        name: [
            (entry.dagster_event_type, entry.dagster_event.asset_key, entry.dagster_event.partition)
            for entry in instance.all_logs(run_id)
            if entry.dagster_event is not None
        ]
        for name, run_id in runs.items()
    }
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_over_many_partitions_answers_dagster_queries_as_the_stock_event_log(
    tmp_path, make_warehouse, write_sync, monkeypatch, backend
):
    """Materialized partitions, each one's latest materialization and counts, checks and asset records agree."""
    spec = hourly_spec(make_warehouse, write_sync)
    found = {}
    for storage in STORAGES:
        with instance_for(tmp_path, storage, monkeypatch, backend) as instance:
            runs = {"first": run(spec, instance, f"{FIRST}..{LAST}")}
            runs["again"] = run(spec, instance, "2024-01-01-10:00..2024-01-01-12:00")
            found[storage] = answers(instance, spec, runs)

    assert found["batched"] == found["stock"]
    delivery = found["batched"]["crm_users/delivery"]
    assert len(delivery["materialized"]) == 48 and delivery["last_run"] == "again"
    counts = {partition: metadata for partition, run_name, metadata in delivery["materializations"]}
    assert counts[("2024-01-01-10:00")]["profiles_created"] == 1
    assert sum(metadata["rows_applied"] for metadata in counts.values()) == 3
    assert ("", "SUCCEEDED", "first") in found["batched"]["checks"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_and_planned_partitions_show_as_with_the_stock_event_log(
    tmp_path, make_warehouse, write_sync, monkeypatch, backend
):
    """A run whose delivery fails marks its partitions failed; a run not yet started, in progress."""
    spec = hourly_spec(make_warehouse, write_sync)
    (tmp_path / "a_file").write_text("not a folder")
    unusable_store = f"sqlite:///{tmp_path / 'a_file' / 'profiles.sqlite'}"
    found = {}
    for storage in STORAGES:
        with instance_for(tmp_path, storage, monkeypatch, backend) as instance:
            with pytest.raises(RunError, match="failed"):
                run(spec, instance, f"{FIRST}..{LAST}", store_url=unusable_store)
            failed = instance.get_runs()[0].run_id
            job = build_definitions([spec]).resolve_job_def(sync_job_name(spec))
            queued = instance.create_run_for_job(job, tags=partition_range_tags(NEXT_FIRST, NEXT_LAST)).run_id
            found[storage] = answers(instance, spec, {"failed": failed, "queued": queued})

    assert found["batched"] == found["stock"]
    delivery = found["batched"]["crm_users/delivery"]
    assert len(delivery["status"]["failed"]) == 48
    assert len(delivery["status"]["in_progress"]) == 24
    assert len(found["batched"]["crm_users/mapped_batches"]["materialized"]) == 48


def test_events_are_serialized_exactly_as_dagster_serializes_them(
    tmp_path, make_warehouse, write_sync, monkeypatch
):
    """Each event of a run gets Dagster's own text, also with a key that needs escaping or metadata in another order."""
    spec = hourly_spec(make_warehouse, write_sync)
    with instance_for(tmp_path, "stock", monkeypatch) as instance:
        entries = [
            entry
            for entry in instance.all_logs(run(spec, instance, f"{FIRST}..{LAST}"))
            if entry.dagster_event
        ]
    planned = next(e for e in entries if e.dagster_event_type.value == "ASSET_MATERIALIZATION_PLANNED")
    data = planned.dagster_event.event_specific_data
    odd = planned._replace(
        timestamp=planned.timestamp + 0.1,
        dagster_event=planned.dagster_event._replace(
            event_specific_data=data._replace(partition='ü "1" \\ \n')
        ),
    )
    materialized = next(e for e in entries if e.dagster_event_type.value == "ASSET_MATERIALIZATION")
    data = materialized.dagster_event.event_specific_data
    metadata = dict(reversed(data.materialization.metadata.items()))  # the same values, listed the other way
    reordered = materialized._replace(
        dagster_event=materialized.dagster_event._replace(
            event_specific_data=data._replace(
                materialization=data.materialization._replace(metadata=metadata)
            )
        )
    )
    texts = EventTexts()
    for entry in [*entries, odd, reordered]:
        assert texts.serialize(entry) == serialize_value(entry)
    # Per asset, one shape of planned events, one of materializations and one of the last partition's (which
    # also holds the run's totals); and the reordered one: however many partitions the run has.
    assert len(texts._known) <= 7


def test_dagster_dev_loads_the_storage_and_shows_partitions_materialized_and_failed(
    tmp_path, make_warehouse, write_sync, monkeypatch
):
    """With the repo's dagster.yaml, the UI counts a wsync run's partitions as materialized, a failed run's as failed."""
    spec = hourly_spec(make_warehouse, write_sync)
    (tmp_path / "a_file").write_text("not a folder")
    query = """
    query Stats($path: [String!]!) {
      assetNodeOrError(assetKey: {path: $path}) {
        ... on AssetNode { partitionStats { numMaterialized numFailed numMaterializing } }
      }
    }
    """
    with dagster_dev(tmp_path) as (client, process):
        wait_until_loaded(client, process, "wsync")
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        monkeypatch.delenv(BATCH_SIZE_VARIABLE, raising=False)
        with DagsterInstance.get() as instance:
            assert type(instance.event_log_storage) is BatchedSqliteEventLogStorage
            run(spec, instance, f"{FIRST}..{LAST}")
            with pytest.raises(RunError):
                run(
                    spec,
                    instance,
                    f"{NEXT_FIRST}..{NEXT_LAST}",
                    f"sqlite:///{tmp_path / 'a_file' / 'x.sqlite'}",
                )

        def stats(asset: str) -> dict:
            node = graphql(client, query, path=["crm_users", asset])["assetNodeOrError"]
            return node["partitionStats"]

        assert stats("delivery") == {"numMaterialized": 48, "numFailed": 24, "numMaterializing": 0}
        assert stats("mapped_batches") == {"numMaterialized": 72, "numFailed": 0, "numMaterializing": 0}
