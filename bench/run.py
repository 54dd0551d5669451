"""Benchmark: the floor, wsync's pipeline, wsync's CLI through Dagster, and drt-core, on one demo warehouse.

Run with `.venv/bin/python bench/run.py [--users N] [--events N]`; see bench/README.md for what each line means.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from wsync_dagster.batches import BatchFile
from wsync_dagster.demo import build_demo
from wsync_dagster.iterators import iterator_window
from wsync_dagster.pipeline import Partition, deliver_partitions, map_partition
from wsync_dagster.spec import SyncSpec, load_sync_file
from wsync_dagster.store import open_profile_store

REPO = Path(__file__).resolve().parents[1]
# The batch size wsync's DuckDB reader uses, so the floor reads the same way.
READ_BATCH_ROWS = 100_000
USERS_SYNC, EVENTS_SYNC = "demo_users", "demo_events"
PG_HOST, PG_PORT, PG_DATABASE, PG_USERS = "127.0.0.1", 5432, "test", ("postgres", "root")
DRT_INSTALL = "drt-core[duckdb,postgres]"
CLI_TIMEOUT_S = 1800
WARM_UP_USERS, WARM_UP_EVENTS = 500, 5_000
FLOOR_RUNS = 3


@dataclass
class Measurement:
    """One line of the table: what moved how many rows in how long, or why it did not run."""

    label: str
    rows: int | None = None
    seconds: float | None = None
    note: str = ""
    failure: str | None = None
    partitions: int | None = None

    @property
    def rows_per_s(self) -> float | None:
        """Throughput, when the line ran and moved rows."""
        if self.failure or not self.rows or not self.seconds:
            return None
        return self.rows / self.seconds


@dataclass
class Report:
    """Every measurement by key, in the order taken."""

    lines: dict[str, Measurement] = field(default_factory=dict)
    echo: bool = True

    def add(self, key: str, measurement: Measurement) -> Measurement:
        """Record a line and echo it, so a long run shows progress."""
        self.lines[key] = measurement
        if not self.echo:
            return measurement
        shown = f"{measurement.seconds:.2f} s" if measurement.seconds is not None else measurement.failure
        print(f"  … {measurement.label}: {shown}", file=sys.stderr, flush=True)
        return measurement

    def ran(self, key: str) -> Measurement | None:
        """The line if it ran, else None."""
        line = self.lines.get(key)
        return line if line is not None and line.failure is None and line.seconds else None


@dataclass(frozen=True)
class Demo:
    """The benchmark's demo warehouse and its two sync specs."""

    root: Path
    warehouse: Path
    syncs_dir: Path
    users: SyncSpec
    events: SyncSpec


def timed(action: Callable[[], int]) -> tuple[int, float]:
    """Run `action` (returning a row count) and time it on the wall clock."""
    start = time.perf_counter()
    rows = action()
    return rows, time.perf_counter() - start


# ---- 1. floor --------------------------------------------------------------------------------------------


def sqlite_values(column: pa.Array) -> list:
    """Python values SQLite binds natively; temporal columns go as their integer storage (µs, days)."""
    if pa.types.is_temporal(column.type):
        column = column.view(pa.int64() if column.type.bit_width == 64 else pa.int32())
    return column.to_pylist()


def floor_copy(warehouse: Path, sql: str, target: Path) -> int:
    """DuckDB → Arrow → `executemany` plain INSERTs into a fresh SQLite table, WAL, one transaction."""
    source = duckdb.connect(str(warehouse), read_only=True)
    sink = sqlite3.connect(target, isolation_level=None)
    try:
        sink.execute("PRAGMA journal_mode = WAL")
        sink.execute("PRAGMA synchronous = NORMAL")
        reader = source.sql(sql).to_arrow_reader(READ_BATCH_ROWS)
        names = reader.schema.names
        quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in names)
        sink.execute(f"CREATE TABLE copied ({quoted})")
        insert = f"INSERT INTO copied VALUES ({', '.join('?' * len(names))})"
        rows = 0
        sink.execute("BEGIN")
        for batch in reader:
            sink.executemany(insert, zip(*(sqlite_values(column) for column in batch.columns), strict=True))
            rows += batch.num_rows
        sink.execute("COMMIT")
        return rows
    finally:
        sink.close()
        source.close()


def measure_floor(report: Report, demo: Demo, workdir: Path) -> None:
    """The bare copy of the users' and the events' rows, each time into a fresh SQLite file; the best of a few."""
    for key, spec in (("floor_users", demo.users), ("floor_events", demo.events)):
        label = f"floor {spec.data_type}s: DuckDB → Arrow → SQLite executemany"
        try:
            # The floor is a lower bound, and one short run is at the mercy of whatever else the machine does.
            runs = [
                timed(
                    lambda s=spec, target=workdir / f"{key}_{attempt}.sqlite": floor_copy(
                        demo.warehouse, s.data_model.sql, target
                    )
                )
                for attempt in range(FLOOR_RUNS)
            ]
            rows, seconds = min(runs, key=lambda run: run[1])
            note = f"best of {FLOOR_RUNS}; plain table, no index, no mapping"
            report.add(key, Measurement(label, rows, seconds, note))
        except Exception as error:  # a failed line is reported, the others still run
            report.add(key, Measurement(label, failure=f"failed: {error}"))


# ---- 2. wsync pipeline -----------------------------------------------------------------------------------


def measure_pipeline(report: Report, demo: Demo, workdir: Path) -> None:
    """map_partition + deliver_partitions over each sync's whole history, users first, into one fresh store."""
    now = datetime.now(UTC)
    store = open_profile_store(f"sqlite:///{workdir / 'profiles.sqlite'}")
    try:
        for short, spec in (("users", demo.users), ("events", demo.events)):
            window = iterator_window(spec.sync, spec.sync.history_start, now)
            batch_file = BatchFile(workdir / "batches" / spec.name, "bench")
            try:
                mapped, map_s = timed(lambda s=spec, w=window, f=batch_file: map_partition(s, w, f).rows_read)
                delivered, deliver_s = timed(
                    lambda s=spec, w=window, f=batch_file: (
                        deliver_partitions(s, f, store, [Partition("bench", w.micros)]).totals.rows
                    )
                )
            except Exception as error:  # a failed line is reported, the others still run
                report.add(
                    f"pipeline_{short}", Measurement(f"wsync pipeline {short}", failure=f"failed: {error}")
                )
                continue
            report.add(
                f"map_{short}", Measurement(f"wsync pipeline {short}: map (DuckDB → Parquet)", mapped, map_s)
            )
            report.add(
                f"deliver_{short}",
                Measurement(f"wsync pipeline {short}: deliver (→ profile store)", delivered, deliver_s),
            )
            report.add(
                f"pipeline_{short}", Measurement(f"wsync pipeline {short}: total", mapped, map_s + deliver_s)
            )
    finally:
        store.close()


# ---- 3. wsync CLI through Dagster ------------------------------------------------------------------------


def wsync_command() -> list[str]:
    """The `wsync` console script of this interpreter's environment, else the module."""
    script = Path(sys.executable).parent / "wsync"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsync_dagster.cli"]


def cli_environment(demo: Demo, workdir: Path) -> dict[str, str]:
    """A tmp DAGSTER_HOME (with the repo's dagster.yaml) and tmp wsync state, syncs and store."""
    dagster_home = workdir / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSYNC_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        WSYNC_SYNCS_DIR=str(demo.syncs_dir),
        WSYNC_STATE_DIR=str(workdir / "state"),
        WSYNC_PROFILE_STORE=f"sqlite:///{workdir / 'profiles.sqlite'}",
    )
    return env


def run_cli(sync: str, env: dict[str, str], cwd: Path) -> tuple[str, float]:
    """`wsync run SYNC` as a subprocess: its stdout and wall time; raises with its stderr on failure."""
    start = time.perf_counter()
    done = subprocess.run(
        [*wsync_command(), "run", sync],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"exit {done.returncode}: {tail}")
    return done.stdout, seconds


def rows_read(stdout: str) -> int | None:
    """The rows the run's mapped-batches asset reports having read."""
    match = re.search(r"rows_read=(\d+)", stdout)
    return int(match.group(1)) if match else None


def partitions_run(spec: SyncSpec, stdout: str) -> int | None:
    """How many of the sync's partitions the run covered, from the range `wsync run` printed."""
    from wsync_dagster.defs.partitions import sync_partitions

    match = re.search(r"partitions (\S+)", stdout)
    if not match:
        return None
    first, _, last = match.group(1).partition("..")
    keys = sync_partitions(spec).get_partition_keys(current_time=datetime.now(UTC))
    if first not in keys or (last or first) not in keys:
        return None
    return keys.index(last or first) - keys.index(first) + 1


def measure_cli(report: Report, demo: Demo, workdir: Path) -> None:
    """`wsync run demo_users` then `wsync run demo_events` into one fresh store, then a run with nothing due."""
    env = cli_environment(demo, workdir)
    for short, spec in (("users", demo.users), ("events", demo.events)):
        label = f"wsync CLI (Dagster) `wsync run {spec.name}`"
        try:
            stdout, seconds = run_cli(spec.name, env, workdir)
        except Exception as error:  # a failed line is reported, the others still run
            report.add(f"cli_{short}", Measurement(label, failure=f"failed: {error}"))
            continue
        partitions = partitions_run(spec, stdout)
        note = f"{partitions} {spec.sync.partition_frequency} partitions in one run" if partitions else ""
        report.add(
            f"cli_{short}", Measurement(label, rows_read(stdout), seconds, note, partitions=partitions)
        )
    label = f"wsync CLI (Dagster) `wsync run {demo.users.name}` again, nothing due"
    try:
        stdout, seconds = run_cli(demo.users.name, env, workdir)
        report.add("cli_noop", Measurement(label, 0, seconds, "fixed cost: start-up, imports, instance"))
    except Exception as error:  # a failed line is reported, the others still run
        report.add("cli_noop", Measurement(label, failure=f"failed: {error}"))


# ---- 4. drt-core -----------------------------------------------------------------------------------------


def drt_version() -> str | None:
    """drt-core's installed version, or None."""
    try:
        return metadata.version("drt-core")
    except metadata.PackageNotFoundError:
        return None


def install_drt() -> str | None:
    """pip-install drt-core with its DuckDB and PostgreSQL extras; why it failed, or None."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", DRT_INSTALL],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return " | ".join(done.stderr.strip().splitlines()[-2:])
    return None


def connect_postgres() -> tuple[Any, str]:
    """A PostgreSQL connection to the local test database, as the first user it accepts."""
    import psycopg2

    errors = []
    for user in PG_USERS:
        try:
            conn = psycopg2.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname=PG_DATABASE, connect_timeout=5
            )
            conn.autocommit = True
            return conn, user
        except psycopg2.Error as error:
            errors.append(f"{user}: {str(error).strip()}")
    raise RuntimeError(f"PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DATABASE} refused: {'; '.join(errors)}")


def postgres_type(arrow_type: pa.DataType) -> str:
    """The PostgreSQL column type for an Arrow column of the users model."""
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "bigint"
    if pa.types.is_floating(arrow_type):
        return "double precision"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    return "text"


@contextmanager
def scratch_table(conn: Any, schema: pa.Schema, key: str) -> Iterator[str]:
    """A fresh PostgreSQL table shaped like `schema`, keyed by `key`, dropped afterwards."""
    table = f"wsync_bench_users_{uuid.uuid4().hex[:10]}"
    columns = ", ".join(
        f'"{name}" {postgres_type(schema.field(name).type)}' + (" PRIMARY KEY" if name == key else "")
        for name in schema.names
    )
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE public.{table} ({columns})")
    try:
        yield table
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS public.{table}")


def model_schema(demo: Demo, sql: str) -> pa.Schema:
    """The data model's Arrow columns, from a zero-row read."""
    con = duckdb.connect(str(demo.warehouse), read_only=True)
    try:
        return con.sql(f"SELECT * FROM ({sql}) LIMIT 0").to_arrow_table().schema
    finally:
        con.close()


def measure_drt(report: Report, demo: Demo, workdir: Path, *, batch_size: int, install: bool) -> str:
    """drt-core's engine: the users model from the same DuckDB file, upserted into a fresh PostgreSQL table."""
    label = "drt-core users: DuckDB → postgres upsert"
    version = drt_version()
    if version is None and install:
        print(f"  … installing {DRT_INSTALL}", file=sys.stderr, flush=True)
        why = install_drt()
        version = drt_version()
        if version is None:
            report.add(
                "drt_users", Measurement(label, failure=f"not run: pip install {DRT_INSTALL} failed: {why}")
            )
            return "not installed"
    if version is None:
        report.add(
            "drt_users",
            Measurement(
                label,
                failure=(
                    f"not run: drt-core is not installed in this environment "
                    f"(`{sys.executable} -m pip install '{DRT_INSTALL}'`, or pass --install-drt)"
                ),
            ),
        )
        return "not installed"
    try:
        from drt.config.profiles import DuckDBProfile
        from drt.config.sync_options import SyncConfig
        from drt.destinations.postgres import PostgresDestination
        from drt.engine.sync import run_sync
        from drt.sources.duckdb import DuckDBSource
    except ImportError as error:
        report.add(
            "drt_users",
            Measurement(
                label,
                failure=(
                    f"not run: drt-core {version} is installed but cannot be imported ({error}); "
                    f"its extras may be missing: pip install '{DRT_INSTALL}'"
                ),
            ),
        )
        return version
    try:
        conn, pg_user = connect_postgres()
    except Exception as error:  # no database, no line: say why
        report.add("drt_users", Measurement(label, failure=f"not run: {error}"))
        return version
    sql = demo.users.data_model.sql
    try:
        with scratch_table(conn, model_schema(demo, sql), "customer_id") as table:
            sync = SyncConfig.model_validate(
                {
                    "name": "wsync_bench_users",
                    "model": sql,
                    "destination": {
                        "type": "postgres",
                        "host": PG_HOST,
                        "port": PG_PORT,
                        "user": pg_user,
                        "dbname": PG_DATABASE,
                        "table": f"public.{table}",
                        "upsert_key": ["customer_id"],
                    },
                    "sync": {"mode": "upsert", "batch_size": batch_size},
                }
            )
            profile = DuckDBProfile(type="duckdb", database=str(demo.warehouse))
            project = workdir / "drt_project"
            project.mkdir(exist_ok=True)
            start = time.perf_counter()
            result = run_sync(sync, DuckDBSource(), PostgresDestination(), profile, project)
            seconds = time.perf_counter() - start
            with conn.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM public.{table}")
                landed = cur.fetchone()[0]
        if result.failed or landed != result.success:
            raise RuntimeError(
                f"{result.failed} rows failed, {landed} of {result.success} landed: "
                f"{'; '.join(result.errors[:2])}"
            )
        note = (
            f"drt {version}, sync.batch_size {batch_size}, other options default; "
            f"PostgreSQL {conn.server_version // 10000}.{conn.server_version % 10000}"
        )
        report.add("drt_users", Measurement(label, result.success, seconds, note))
    except Exception as error:  # a failed line is reported, the others still run
        report.add("drt_users", Measurement(label, failure=f"failed: {type(error).__name__}: {error}"))
    finally:
        conn.close()
    return version


# ---- the demo and the printout ---------------------------------------------------------------------------


def build_bench_demo(root: Path, users: int, events: int) -> Demo:
    """Build the demo warehouse and load its users and events sync specs."""
    paths = build_demo(root, users=users, events=events)
    return Demo(
        root=root,
        warehouse=paths.warehouse,
        syncs_dir=paths.syncs_dir,
        users=load_sync_file(paths.syncs_dir / f"{USERS_SYNC}.yaml"),
        events=load_sync_file(paths.syncs_dir / f"{EVENTS_SYNC}.yaml"),
    )


def warm_up(workdir: Path, args: argparse.Namespace) -> None:
    """Run the in-process lines once on a tiny demo, untimed, so no line pays first-call imports and caches."""
    print("warming up on a tiny demo (untimed)", file=sys.stderr, flush=True)
    demo = build_bench_demo(workdir / "demo", WARM_UP_USERS, WARM_UP_EVENTS)
    silent = Report(echo=False)
    for name in ("floor", "pipeline"):
        (workdir / name).mkdir()
    measure_floor(silent, demo, workdir / "floor")
    measure_pipeline(silent, demo, workdir / "pipeline")
    if not args.skip_drt:
        measure_drt(silent, demo, workdir, batch_size=args.drt_batch_size, install=args.install_drt)


def load_average() -> str:
    """The 1-minute load average, where the platform has one."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def version_of(package: str) -> str:
    """An installed package's version, or '-'."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def wsync_revision() -> str:
    """The commit of the wsync code measured, flagged when its files have uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--", "wsync_dagster") else "")


def print_table(report: Report) -> None:
    """The measurements: rows, wall seconds, rows/s, notes."""
    width = max(len(line.label) for line in report.lines.values())
    print(f"{'measurement':<{width}}  {'rows':>10}  {'wall s':>8}  {'rows/s':>10}  note")
    print("-" * (width + 46))
    for line in report.lines.values():
        if line.failure:
            print(f"{line.label:<{width}}  {line.failure}")
            continue
        rate = f"{line.rows_per_s:,.0f}" if line.rows_per_s else "-"
        rows = f"{line.rows:,}" if line.rows is not None else "?"
        print(f"{line.label:<{width}}  {rows:>10}  {line.seconds:>8.2f}  {rate:>10}  {line.note}")


def ratio(report: Report, fast_key: str, slow_key: str, what: str) -> str:
    """How many times longer per row `slow_key` took than `fast_key`, as a sentence."""
    fast, slow = report.ran(fast_key), report.ran(slow_key)
    if fast is None or slow is None or not fast.rows_per_s or not slow.rows_per_s:
        missing = ", ".join(k for k, line in ((fast_key, fast), (slow_key, slow)) if line is None)
        return f"{what}: n/a ({missing} did not run)"
    factor = fast.rows_per_s / slow.rows_per_s
    return f"{what}: {factor:.1f}x ({slow.rows_per_s:,.0f} vs {fast.rows_per_s:,.0f} rows/s)"


def print_ratios(report: Report) -> None:
    """The comparisons asked of one run: pipeline vs floor, wsync vs drt-core, CLI vs pipeline."""
    print("\nratios (from this run's figures)")
    print("  " + ratio(report, "floor_users", "pipeline_users", "floor is faster than wsync pipeline, users"))
    print(
        "  " + ratio(report, "floor_events", "pipeline_events", "floor is faster than wsync pipeline, events")
    )
    wsync, drt = report.ran("pipeline_users"), report.ran("drt_users")
    if wsync and drt and wsync.rows_per_s and drt.rows_per_s:
        share = wsync.rows_per_s / drt.rows_per_s
        print(
            f"  wsync pipeline rows/s / drt-core rows/s, users: {share:.2f} "
            f"({wsync.rows_per_s:,.0f} vs {drt.rows_per_s:,.0f}; wsync {'faster' if share >= 1 else 'slower'})"
        )
    else:
        attempt = report.lines.get("drt_users")
        print(
            f"  wsync pipeline vs drt-core, users: n/a ({attempt.failure if attempt else 'drt-core skipped'})"
        )
    noop = report.ran("cli_noop")
    for short in ("users", "events"):
        cli, pipeline = report.ran(f"cli_{short}"), report.ran(f"pipeline_{short}")
        if not (cli and pipeline and cli.seconds and pipeline.seconds):
            print(f"  wsync CLI vs pipeline, {short}: n/a (one of them did not run)")
            continue
        extra = cli.seconds - pipeline.seconds
        line = f"  wsync CLI vs pipeline, {short}: {cli.seconds / pipeline.seconds:.2f}x the time (+{extra:.1f} s)"
        if noop and noop.seconds and cli.partitions:
            per_partition = (extra - noop.seconds) / cli.partitions
            line += (
                f" = {noop.seconds:.1f} s fixed + {extra - noop.seconds:.1f} s Dagster run and bookkeeping, "
                f"≈ {per_partition * 1000:.0f} ms for each of {cli.partitions} partitions"
            )
        print(line)
    if noop:
        print(f"  wsync CLI fixed cost (a run with nothing due): {noop.seconds:.1f} s")


def print_row_check(report: Report) -> None:
    """Say whether every line of a dataset moved the same number of rows."""
    for short in ("users", "events"):
        counts = {
            line.label: line.rows
            for key, line in report.lines.items()
            if key.endswith(f"_{short}") and report.ran(key) and line.rows is not None
        }
        if len(set(counts.values())) > 1:
            print(f"  WARNING: the {short} lines moved different row counts: {counts}")
        elif counts:
            print(f"  same rows: every {short} line moved {next(iter(counts.values())):,} rows")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="demo users (default 100,000)")
    parser.add_argument("--events", type=int, default=1_000_000, help="demo events (default 1,000,000)")
    parser.add_argument(
        "--drt-batch-size",
        type=int,
        default=1_000,
        help="drt-core sync.batch_size (its default is 100; default here 1,000)",
    )
    parser.add_argument("--install-drt", action="store_true", help=f"pip-install {DRT_INSTALL} if missing")
    parser.add_argument("--skip-cli", action="store_true", help="leave out the `wsync run` lines")
    parser.add_argument("--skip-drt", action="store_true", help="leave out the drt-core line")
    parser.add_argument("--keep", action="store_true", help="keep the tmp folder and print where it is")
    return parser.parse_args()


def main() -> int:
    """Build the demo, take every measurement in turn, print the table and the ratios."""
    args = parse_args()
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="wsync-bench-"))
    report = Report()
    load_before, revision = load_average(), wsync_revision()
    try:
        print(
            f"building the demo warehouse ({args.users:,} users, {args.events:,} events) in {workdir}",
            file=sys.stderr,
            flush=True,
        )
        build_start = time.perf_counter()
        demo = build_bench_demo(workdir / "demo", args.users, args.events)
        build_s = time.perf_counter() - build_start
        warm_up(workdir / "warm_up", args)
        for name in ("floor", "pipeline", "cli"):
            (workdir / name).mkdir()
        measure_floor(report, demo, workdir / "floor")
        measure_pipeline(report, demo, workdir / "pipeline")
        if not args.skip_cli:
            measure_cli(report, demo, workdir / "cli")
        drt = "skipped (--skip-drt)"
        if not args.skip_drt:
            drt = measure_drt(report, demo, workdir, batch_size=args.drt_batch_size, install=args.install_drt)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nwsync benchmark: {args.users:,} users, {args.events:,} events "
        f"(demo warehouse built in {build_s:.1f} s)"
    )
    print(f"wsync: {revision}")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_before} at start / {load_average()} at end; "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, duckdb {version_of('duckdb')}, "
        f"pyarrow {version_of('pyarrow')}, dagster {version_of('dagster')}, drt-core {drt}"
    )
    if not args.skip_drt:
        print(
            "drt-core destination: postgres (INSERT … ON CONFLICT (customer_id) DO UPDATE, one row per user), "
            "chosen over rest_api: it is a keyed upsert of the user row, with no HTTP server of ours sharing "
            "the CPUs"
        )
    print()
    print_table(report)
    print_ratios(report)
    print_row_check(report)
    print(f"\nbenchmark wall time: {time.perf_counter() - started:.0f} s (warm-up and demo build included)")
    return (
        1 if any(line.failure and line.failure.startswith("failed") for line in report.lines.values()) else 0
    )


if __name__ == "__main__":
    sys.exit(main())
