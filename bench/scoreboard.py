"""The lines of the scoreboard, each run in a process of its own so that its peak memory is its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import floors
import peer
import pyarrow as pa
from warehouse import BenchData

from wsync_dagster.batches import BatchFile
from wsync_dagster.delivery import deliver_partitions
from wsync_dagster.iterators import IteratorWindow
from wsync_dagster.mapped_batches import map_partition
from wsync_dagster.run_partitions import Partition
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster.warehouses import resource  # noqa: F401  (a run opens its warehouse through Dagster)

HERE = Path(__file__).resolve().parent


@dataclass
class Line:
    """One measured line: what moved how many rows in how long, with what peak memory; or why it did not run."""

    key: str
    label: str
    rows: int | None = None
    seconds: float | None = None
    peak_mb: float | None = None
    note: str = ""
    failure: str | None = None

    @property
    def rows_per_s(self) -> float | None:
        """Throughput, when the line ran and moved rows."""
        if self.failure or not self.rows or not self.seconds:
            return None
        return self.rows / self.seconds


def run_line(key: str, label: str, job: dict, timeout_s: float) -> Line:
    """Run one job in a fresh interpreter; its wall time, rows and peak RSS (the worker's own VmHWM)."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "run.py"), "--worker", json.dumps(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return Line(key, label, failure=f"failed: no result within {timeout_s:.0f} s")
    if process.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return Line(key, label, failure=f"failed: exit {process.returncode}: {tail}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return Line(key, label, result["rows"], result["seconds"], result["peak_mb"], result.get("note", ""))


def work(job: dict) -> dict:
    """Inside the worker: do the job, timed on the wall clock; what the parent reads back."""
    # Everything is imported before the clock starts: no line pays for imports, nor for pandas, which pyarrow
    # imports the first time it makes a table.
    pa.schema([("column", pa.int64())]).empty_table()
    data = BenchData(**{**job["data"], "as_of": datetime.fromisoformat(job["data"]["as_of"])})
    kind = job["kind"]
    start = time.perf_counter()
    if kind == "floor":
        stored = _floor(job, data)
        rows = data.users if job["what"] == "users" else data.events
        note = f"{stored:,} store rows, bulk load, no rules"
    elif kind == "drt":
        rows = peer.run_drt(data, job["dsn"], job["batch_size"], Path(job["workdir"]))
        note = f"drt-core, sync.batch_size {job['batch_size']:,}"
    else:
        rows, note = _sync(job, data)
    return {"rows": rows, "seconds": time.perf_counter() - start, "note": note, "peak_mb": _peak_mb()}


def _peak_mb() -> float:
    """This process's own peak resident memory (VmHWM): getrusage's peak starts at the parent's, which
    is inherited through fork and exec, so a line would never show less than the bench process holds."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def _floor(job: dict, data: BenchData) -> int:
    url = job["store"]
    if url.startswith("sqlite:///"):
        return floors.load_sqlite(data, job["what"], url[len("sqlite:///") :])
    return floors.load_postgres(data, job["what"], url)


def _sync(job: dict, data: BenchData) -> tuple[int, str]:
    spec = load_sync_file(Path(job["sync_file"]))
    window = None
    if job.get("window"):
        lower, upper = (datetime.fromisoformat(bound) for bound in job["window"])
        window = IteratorWindow(lower, upper)
    batch_file = BatchFile(Path(job["workdir"]) / "batches" / spec.name, job["partition"])
    run_version = int(datetime.now(UTC).timestamp() * 1_000_000)
    store = open_profile_store(job["store"])
    try:
        # As a run maps: the store's fingerprints at hand, for a warehouse that compares them itself.
        stored = partial(store.fingerprints, spec.name, spec.sync.environment)
        mapped = map_partition(spec, window, batch_file, run_version=run_version, stored=stored)
        partition = Partition(job["partition"], window.micros if window else (None, None))
        counts = deliver_partitions(spec, batch_file, store, [partition]).totals
    finally:
        store.close()
    note = f"applied {counts.rows_applied:,}, unchanged {counts.rows_unchanged:,}"
    if counts.events_written or counts.events_duplicate:
        note = f"events written {counts.events_written:,}"
    return mapped.rows_read, note


def changes_window(data: BenchData) -> list[str]:
    """The hour in which 1% of the users changed (warehouse.build puts the changes there)."""
    return [data.as_of.isoformat(), (data.as_of + timedelta(hours=1)).isoformat()]
