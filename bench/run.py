"""The scoreboard: wsync on both profile stores, beside the floor and drt-core, on one generated dataset.

Run `.venv/bin/python bench/run.py [--users N] [--lines initial,events]`; bench/README.md says what each line
measures. It prints the table and the ratios and writes them, with the machine's description, into bench/RESULTS.md:
one section per store (and drt-core, and the memory line), replacing only the sections this run measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_file import replace_sections  # noqa: E402
from scoreboard import Line, changes_window, run_line, work  # noqa: E402
from warehouse import CHANGES_SYNC, EVENTS_SYNC, FULL_SYNC, HISTORY_DAYS, BenchData, build  # noqa: E402

PG_DSN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
STORES = ("sqlite", "postgresql")
STORE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
# The lines of each store, in the order they run: the sync lines after the first build on the store it left.
FLOOR_LINES = ("floor_users", "floor_events")
SYNC_LINES = ("initial", "unchanged", "changed_own", "changed", "changed_full", "events")
# Lines that run on a copy of the store the lines before them left, so the lines after see the store unchanged.
ON_A_COPY = ("changed_own",)
LINES = (*FLOOR_LINES, *SYNC_LINES, "drt")
# drt-core's fastest batch size on these machines (tried 1k, 5k, 10k, 50k, 100k; see bench/README.md).
DRT_BATCH_SIZE = 10_000
LINE_TIMEOUT_S = 3 * 3600


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="users (default 1,000,000)")
    parser.add_argument("--events", type=int, help="events (default 10 x users)")
    parser.add_argument(
        "--stores", default=",".join(STORES), help="profile stores to measure (sqlite,postgresql)"
    )
    parser.add_argument("--drt-batch-size", type=int, default=DRT_BATCH_SIZE, help="drt-core sync.batch_size")
    parser.add_argument("--skip-drt", action="store_true", help="leave out the drt-core line")
    parser.add_argument(
        "--lines",
        default=",".join(LINES),
        help=f"the lines to take ({','.join(LINES)}); a sync line after `initial` takes `initial` too",
    )
    parser.add_argument(
        "--memory-users",
        type=int,
        help="only the initial users sync at this many users (no events), for its peak RSS: its own section",
    )
    parser.add_argument(
        "--results", type=Path, default=HERE / "RESULTS.md", help="where to write the results"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def _pg(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(**PG_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def store_url(kind: str, name: str, workdir: Path, scratch: list[str]) -> str:
    """A fresh, empty store of that kind: a new file, or a new PostgreSQL database (dropped at the end)."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'{name}.sqlite'}"
    database = f"wsync_bench_{uuid.uuid4().hex[:8]}_{name}"
    _pg(f"CREATE DATABASE {database}")
    scratch.append(database)
    return f"postgresql://{PG_DSN['user']}@{PG_DSN['host']}:{PG_DSN['port']}/{database}"


def copy_store(kind: str, url: str, scratch: list[str]) -> str:
    """A copy of a store no process has open: the file copied, or a database made from it as a template."""
    if kind == "sqlite":
        source = Path(url.removeprefix("sqlite:///"))
        copy = source.with_name(f"{source.stem}_copy.sqlite")
        shutil.copyfile(source, copy)
        return f"sqlite:///{copy}"
    server, database = url.rsplit("/", 1)
    _pg(f"CREATE DATABASE {database}_copy TEMPLATE {database}")
    scratch.append(f"{database}_copy")
    return f"{server}/{database}_copy"


def create_store(url: str) -> None:
    """Let wsync create its tables, so the floor loads into exactly the store's shapes."""
    from wsync_dagster.store import open_profile_store

    open_profile_store(url).close()


def selected_lines(names: str) -> list[str]:
    """The lines asked for, in running order; the sync lines after the initial sync need the store it leaves."""
    asked = {name.strip() for name in names.split(",") if name.strip()}
    if unknown := asked - set(LINES):
        raise SystemExit(
            f"--lines: no line named {', '.join(sorted(unknown))}; the lines are {', '.join(LINES)}"
        )
    if asked & set(SYNC_LINES[1:]):
        asked.add("initial")
    return [name for name in LINES if name in asked]


def measure_store(
    kind: str, data: BenchData, workdir: Path, scratch: list[str], wanted: list[str]
) -> list[Line]:
    """The floor and the sync lines asked for, on one kind of store."""
    lines: list[Line] = []
    base = {"data": data_json(data), "workdir": str(workdir / kind)}
    try:
        if floors := [what for what in ("users", "events") if f"floor_{what}" in wanted]:
            floor = store_url(kind, "floor", workdir, scratch)
            create_store(floor)
        if any(name in wanted for name in SYNC_LINES):
            store = store_url(kind, "wsync", workdir, scratch)
    except Exception as error:  # a store that cannot be made is a line saying why; the others still run
        return [Line(f"{kind}_floor_users", f"{kind}: store", failure=f"failed: {error}")]
    for what in floors:
        job = {**base, "kind": "floor", "store": floor, "what": what}
        lines.append(echo(run_line(f"{kind}_floor_{what}", f"{kind} floor {what}", job, LINE_TIMEOUT_S)))
    folder = workdir / "syncs"
    history = (data.as_of - timedelta(days=HISTORY_DAYS)).isoformat()
    steps = [
        ("initial", "initial users sync (full mode)", data.sync_file(FULL_SYNC, folder), None, "full-1"),
        ("unchanged", "re-sync, nothing changed", data.sync_file(FULL_SYNC, folder), None, "full-2"),
        (
            "changed_own",
            "1% changed, incremental, the same sync",
            data.sync_file(CHANGES_SYNC, folder, named=FULL_SYNC),
            changes_window(data),
            "p1",
        ),
        (
            "changed",
            "1% changed, incremental, a second sync",
            data.sync_file(CHANGES_SYNC, folder),
            changes_window(data),
            "p1",
        ),
        (
            "changed_full",
            "1% changed, full re-read",
            data.sync_file(FULL_SYNC, folder, changed=True),
            None,
            "full-3",
        ),
        (
            "events",
            "events sync",
            data.sync_file(EVENTS_SYNC, folder),
            [history, data.as_of.isoformat()],
            "e1",
        ),
    ]
    for key, label, sync_file, window, partition in steps:
        if key not in wanted:
            continue
        on = copy_store(kind, store, scratch) if key in ON_A_COPY else store
        job = {**base, "kind": "sync", "store": on, "sync_file": str(sync_file), "window": window}
        job["partition"] = partition
        lines.append(echo(run_line(f"{kind}_{key}", f"{kind} {label}", job, LINE_TIMEOUT_S)))
        if on != store and kind == "sqlite":
            Path(on.removeprefix("sqlite:///")).unlink()
    return lines


def data_json(data: BenchData) -> dict:
    """BenchData as the worker's job carries it."""
    return {
        "warehouse": str(data.warehouse),
        "changed_warehouse": str(data.changed_warehouse),
        "as_of": data.as_of.isoformat(),
        "users": data.users,
        "events": data.events,
        "changed": data.changed,
    }


def echo(line: Line) -> Line:
    """Show each line as it is taken: a full run is long."""
    shown = f"{line.seconds:.2f} s" if line.seconds is not None else line.failure
    print(f"  … {line.label}: {shown}", file=sys.stderr, flush=True)
    return line


def version_of(package: str) -> str:
    """An installed package's version, or '-'."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def machine() -> str:
    """The machine and the software measured."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown CPU",
    )
    memory = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    revision = subprocess.run(
        ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {int(memory) / 1024**2:.0f} GB RAM, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, duckdb {version_of('duckdb')}, "
        f"pyarrow {version_of('pyarrow')}, PostgreSQL local (127.0.0.1), drt-core {version_of('drt-core')}; "
        f"wsync {revision or 'unknown'}"
    )


def table(lines: list[Line]) -> list[str]:
    """The measurements as a Markdown table."""
    out = ["| line | rows | wall s | rows/s | peak RSS MB | note |", "|---|---:|---:|---:|---:|---|"]
    for line in lines:
        if line.failure:
            out.append(f"| {line.label} | | | | | {line.failure} |")
            continue
        rate = f"{line.rows_per_s:,.0f}" if line.rows_per_s else "-"
        out.append(
            f"| {line.label} | {line.rows:,} | {line.seconds:.2f} | {rate} | {line.peak_mb:,.0f} | {line.note} |"
        )
    return out


def ratios(lines: list[Line], stores: list[str]) -> list[str]:
    """wsync against the floor of its store, against drt-core, and the goals' own ratios."""
    by_key = {line.key: line for line in lines if not line.failure and line.seconds}
    out = []

    def times(slow: str, fast: str, what: str) -> None:
        if slow in by_key and fast in by_key and by_key[fast].seconds:
            out.append(f"- {what}: {by_key[slow].seconds / by_key[fast].seconds:.1f}x")

    for store in stores:
        times(
            f"{store}_initial", f"{store}_floor_users", f"{store}: initial users sync time / floor users time"
        )
        times(f"{store}_events", f"{store}_floor_events", f"{store}: events sync time / floor events time")
        unchanged = by_key.get(f"{store}_unchanged")
        if unchanged and unchanged.rows_per_s:
            out.append(f"- {store}: re-sync with nothing changed: {unchanged.rows_per_s:,.0f} rows/s")
        initial = by_key.get(f"{store}_initial")
        for key, which in (("changed_own", "of the same sync"), ("changed", "of a second sync")):
            changed = by_key.get(f"{store}_{key}")
            if changed and initial:
                share = changed.seconds / initial.seconds  # type: ignore[operator]
                out.append(
                    f"- {store}: 1%-changed incremental {which} took {share:.1%} of the initial sync's time"
                )
        drt = by_key.get("drt_users")
        if drt and initial and drt.rows_per_s and initial.rows_per_s:
            out.append(
                f"- {store}: wsync initial users rows/s / drt-core rows/s: {initial.rows_per_s / drt.rows_per_s:.1f}x"
                f" ({initial.rows_per_s:,.0f} vs {drt.rows_per_s:,.0f})"
            )
    return out


def main() -> int:
    """Generate the data, take the lines asked for in turn, print the results and write their sections."""
    args = parse_args()
    if args.worker:
        print(json.dumps(work(json.loads(args.worker))))
        return 0
    stores = [store for store in args.stores.split(",") if store]
    if args.memory_users:
        users, events, wanted = args.memory_users, 0, ["initial"]
    else:
        users = args.users
        events = args.events if args.events is not None else 10 * users
        wanted = [name for name in selected_lines(args.lines) if name != "drt" or not args.skip_drt]
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="wsync-scoreboard-"))
    scratch: list[str] = []
    lines: list[Line] = []
    try:
        print(f"generating {users:,} users and {events:,} events in {workdir}", file=sys.stderr, flush=True)
        data = build(workdir / "data", users, events)
        for kind in stores:
            lines += measure_store(kind, data, workdir, scratch, wanted)
        if "drt" in wanted:
            job = {
                "kind": "drt",
                "data": data_json(data),
                "dsn": {**PG_DSN, "dbname": "test"},
                "batch_size": args.drt_batch_size,
                "workdir": str(workdir / "drt"),
            }
            label = "drt-core users: DuckDB → PostgreSQL upsert"
            lines.append(echo(run_line("drt_users", label, job, LINE_TIMEOUT_S)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for database in scratch:
            _pg(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    measured = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `.venv/bin/python bench/run.py"
        f" {' '.join(shlex.quote(argument) for argument in sys.argv[1:])}`; load average {load_before:.1f} at start,"
        f" {os.getloadavg()[0]:.1f} at end; {time.perf_counter() - started:.0f} s in all."
    )
    sections = [
        section(prefix, heading, measured, chosen, ratios(lines, [kind] if kind else []))
        for prefix, heading, chosen, kind in sections_of(
            lines, stores, users, events, bool(args.memory_users)
        )
    ]
    text = "\n\n".join(text for _, text in sections)
    print(text)
    replace_sections(args.results, sections)
    return 1 if any(line.failure for line in lines) else 0


def sections_of(
    lines: list[Line], stores: list[str], users: int, events: int, memory: bool
) -> list[tuple[str, str, list[Line], str | None]]:
    """(heading prefix, heading, lines, store) of each section this run wrote: one per store, and drt-core's."""
    out: list[tuple[str, str, list[Line], str | None]] = []
    for kind in stores:
        chosen = [line for line in lines if line.key.startswith(f"{kind}_")]
        name = STORE_NAMES.get(kind, kind)
        if memory:
            out.append((f"## {name} memory: ", f"## {name} memory: {users:,} users", chosen, None))
        else:
            out.append((f"## {name}: ", f"## {name}: {users:,} users, {events:,} events", chosen, kind))
    if drt := [line for line in lines if line.key == "drt_users"]:
        out.append(("## drt-core: ", f"## drt-core: {users:,} users", drt, None))
    return out


def section(
    prefix: str, heading: str, measured: str, lines: list[Line], ratio_lines: list[str]
) -> tuple[str, str]:
    """One section of bench/RESULTS.md: the heading, how it was measured, the table and its ratios."""
    text = [heading, "", measured, "", f"Machine: {machine()}.", "", *table(lines)]
    if ratio_lines:
        text += ["", "Ratios (this run's figures):", "", *ratio_lines]
    return prefix, "\n".join(text) + "\n"


if __name__ == "__main__":
    sys.exit(main())
