"""Dagster's per-partition bookkeeping: one `wsync run` over N hourly partitions of a tiny sync.

    .venv/bin/python bench/partitions.py [--partitions 200 500 8760]
        [--storages default batched pg-default pg-default-batch-size pg-batched]

Per N and per event log storage, in a fresh tmp DAGSTER_HOME, state folder and store: the wall time
of `wsync run SYNC --partition FIRST..LAST` as a subprocess, the pipeline's time inside it (the
map and delivery functions the assets call, timed by hooks this script installs in the child),
the difference (process start-up, definitions, Dagster's run and per-partition events), the CPU time
of the run's process (less disturbed by other work on a shared machine than wall time), and the
partitions Dagster then reports as materialized for each asset (it must be N).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import yaml

REPO = Path(__file__).resolve().parents[1]
HISTORY_START = datetime(2023, 1, 1, tzinfo=UTC)
SYNC = "bench_users"
# The stock SQLite event log storage and wsync's (dagster.yaml's) that stores a batch at once; on
# PostgreSQL (a scratch database on the local server), the stock event log storage without and with
# DAGSTER_EVENT_BATCH_SIZE (which makes it insert a step's materializations in one statement, but
# still its planned events one by one), and wsync's (deploy/dagster-postgres.yaml's).
STORAGES = ("default", "batched", "pg-default", "pg-default-batch-size", "pg-batched")
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
TIMED = ("map_partition", "map_counts_by_partition", "deliver_partitions")


def child(args: list[str], timings: Path) -> int:
    """In the subprocess: time the pipeline functions the assets call, then run the CLI."""
    from wsync_dagster import cli
    from wsync_dagster.defs import assets

    spent = dict.fromkeys(TIMED, 0.0)

    def timed(name: str):
        function = getattr(assets, name)

        def wrapper(*a, **kw):
            started = time.perf_counter()
            try:
                return function(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - started

        return wrapper

    for name in TIMED:
        setattr(assets, name, timed(name))
    try:
        return cli.main(args)
    finally:
        timings.write_text(json.dumps(spent))


def build_sync(folder: Path, partitions: int) -> str:
    """A tiny user sync (five rows in its first hours) over hourly partitions; the FIRST..LAST it runs."""
    warehouse = folder / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(
            "CREATE SCHEMA crm; CREATE TABLE crm.users (customer_id VARCHAR, plan VARCHAR, updated_at TIMESTAMP)"
        )
        for i in range(5):
            connection.execute(
                "INSERT INTO crm.users VALUES (?, ?, ?)",
                [f"C{i:04}", "pro", (HISTORY_START + timedelta(minutes=30 + 60 * i)).replace(tzinfo=None)],
            )
    syncs = folder / "syncs"
    syncs.mkdir()
    spec = {
        "name": SYNC,
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, plan, updated_at FROM crm.users"},
        "sync": {
            "mode": "incremental",
            "iterator": "updated_at",
            "iterator_type": "timestamp",
            "schedule": "interval",
            "frequency": "hourly",
            "start": HISTORY_START.isoformat(),
            "historical_start": HISTORY_START.date().isoformat(),
        },
    }
    (syncs / f"{SYNC}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    last = HISTORY_START + timedelta(hours=partitions - 1)
    return f"{HISTORY_START:%Y-%m-%d-%H:%M}..{last:%Y-%m-%d-%H:%M}"


def dagster_yaml(storage: str) -> dict:
    """The instance file of the storage: the repo's dagster.yaml or deploy/dagster-postgres.yaml, for the
    `default` ones with Dagster's stock event log storage instead of wsync's."""
    if storage.startswith("pg-"):
        config = yaml.safe_load((REPO / "deploy" / "dagster-postgres.yaml").read_text())
        if storage.startswith("pg-default"):
            stock = {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage"}
            config["event_log_storage"].update(stock)
        return config
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    if storage == "default":
        config.pop("event_log_storage", None)
    return config


@contextmanager
def instance_env(storage: str, partitions: int) -> Iterator[dict[str, str]]:
    """The variables the instance needs: for the postgres storages, a scratch database, dropped after."""
    if not storage.startswith("pg-"):
        yield {}
        return
    import psycopg2

    name = f"wsync_bench_{partitions}_{os.getpid()}"
    admin = psycopg2.connect(dbname="postgres", **POSTGRES)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "DAGSTER_PG_HOST": POSTGRES["host"],
            "DAGSTER_PG_PORT": str(POSTGRES["port"]),
            "DAGSTER_PG_DB": name,
            "DAGSTER_PG_USER": POSTGRES["user"],
            "DAGSTER_PG_PASSWORD": "unused-the-local-server-trusts",
            **({"DAGSTER_EVENT_BATCH_SIZE": "20000"} if storage == "pg-default-batch-size" else {}),
        }
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def materialized_counts(home: Path, extra: dict[str, str]) -> list[int]:
    """Partitions Dagster reports as materialized, per asset of the sync."""
    code = (
        "import json; from dagster import AssetKey, DagsterInstance\n"
        "with DagsterInstance.get() as i:\n"
        f"    print(json.dumps([len(i.get_materialized_partitions(AssetKey([{SYNC!r}, a]))) "
        "for a in ('mapped_batches', 'delivery')]))"
    )
    env = {**os.environ, **extra, "DAGSTER_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(partitions: int, storage: str, keep: bool) -> dict:
    """One `wsync run` over `partitions` hourly partitions with one storage: its figures."""
    folder = Path(tempfile.mkdtemp(prefix=f"wsync-partitions-{partitions}-{storage}-"))
    with instance_env(storage, partitions) as extra:
        try:
            return _measure(folder, partitions, storage, extra)
        finally:
            if keep:
                print(f"  kept {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)


def _measure(folder: Path, partitions: int, storage: str, extra: dict[str, str]) -> dict:
    """The run and its figures, in a prepared folder and instance."""
    span = build_sync(folder, partitions)
    home = folder / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(dagster_yaml(storage)))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "WSYNC_SYNCS_DIR": str(folder / "syncs"),
        "WSYNC_STATE_DIR": str(folder / "state"),
        "WSYNC_PROFILE_STORE": f"sqlite:///{folder / 'state' / 'profiles.sqlite'}",
    }
    env.pop("DAGSTER_EVENT_BATCH_SIZE", None)
    env.update(extra)
    timings = folder / "timings.json"
    command = [sys.executable, __file__, "--child", str(timings), "run", SYNC, "--partition", span]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{storage} N={partitions}: wsync run failed:\n{done.stderr[-3000:]}")
    spent = json.loads(timings.read_text())
    return {
        "wall": wall,
        "cpu": cpu,
        "pipeline": sum(spent.values()),
        "materialized": materialized_counts(home, extra),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 200, 500, 8760])
    parser.add_argument("--storages", nargs="+", choices=STORAGES, default=list(STORAGES))
    parser.add_argument("--keep", action="store_true", help="keep the tmp folders")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (
        f"{'N':>6} {'storage':<21} {'wall s':>8} {'cpu s':>7} {'pipeline s':>10} {'other s':>8} "
        f"{'ms/partition':>12}  materialized"
    )
    print(header)
    print("-" * len(header))
    for partitions in args.partitions:
        for storage in args.storages:
            figures = measure(partitions, storage, args.keep)
            other = figures["wall"] - figures["pipeline"]
            print(
                f"{partitions:>6} {storage:<21} {figures['wall']:>8.1f} {figures['cpu']:>7.1f} {figures['pipeline']:>10.2f} "
                f"{other:>8.1f} {1000 * other / partitions:>12.1f}  "
                f"{'/'.join(str(n) for n in figures['materialized'])}",
                flush=True,
            )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        raise SystemExit(child(sys.argv[3:], Path(sys.argv[2])))
    main()
