"""BigQuery: the bqemulator server (REST + gRPC, on DuckDB), run from its own virtual environment.

`scripts/setup` creates `.venv-bqemulator/` (the emulator pins a sqlglot older than wsync's) with its
DuckDB spatial extension under `.venv-bqemulator/home`, given to the emulator as HOME so DuckDB loads
it offline. One emulator serves the whole test session; each test gets a project of its own.
"""

from __future__ import annotations

import atexit
import io
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

VENV = Path(__file__).resolve().parents[2] / ".venv-bqemulator"
_READY_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class BigQueryEmulator:
    """A running bqemulator process and where it listens."""

    process: subprocess.Popen
    rest_url: str
    grpc_endpoint: str
    log: Path

    @classmethod
    def start(cls, log: Path) -> BigQueryEmulator:
        """Start it on free ports and wait until its REST API answers."""
        executable = VENV / "bin" / "bqemulator"
        if not executable.exists():
            raise RuntimeError(
                f"{executable} is missing: run scripts/setup, which creates the emulator's venv"
            )
        rest, grpc = _free_port(), _free_port()
        command = [str(executable), "start", "--rest-port", str(rest), "--grpc-port", str(grpc)]
        command += ["--ephemeral", "--project", "wsync", "--log-level", "warning"]
        output = log.open("wb")
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(VENV / "home")},
        )
        emulator = cls(process, f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc}", log)
        emulator._wait_until_ready()
        return emulator

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bqemulator exited with {self.process.returncode}: see {self.log}")
            try:
                if httpx.get(f"{self.rest_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"bqemulator did not answer within {_READY_SECONDS} s: see {self.log}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, project: str):
        """A BigQuery client of `project` on the emulator."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.rest_url),
        )


_running: BigQueryEmulator | None = None


def emulator(log_dir: Path | None = None) -> BigQueryEmulator:
    """The session's emulator, started on first use; stopped by `stop_emulator` (and at exit at the latest)."""
    global _running
    if _running is None or _running.process.poll() is not None:
        log = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"bqemulator-{os.getpid()}.log"
        _running = BigQueryEmulator.start(log)
        atexit.register(_running.stop)
    return _running


def stop_emulator() -> None:
    """Stop the session's emulator, if one was started."""
    if _running is not None:
        _running.stop()


def bigquery_type(arrow_type: pa.DataType) -> tuple[str, str]:
    """The native BigQuery column type (and mode) for an Arrow type."""
    if pa.types.is_list(arrow_type):
        return bigquery_type(arrow_type.value_type)[0], "REPEATED"
    if pa.types.is_timestamp(arrow_type):
        return ("TIMESTAMP" if arrow_type.tz else "DATETIME"), "NULLABLE"
    for test, name in (
        (pa.types.is_string, "STRING"),
        (pa.types.is_integer, "INT64"),
        (pa.types.is_floating, "FLOAT64"),
        (pa.types.is_decimal, "NUMERIC"),
        (pa.types.is_boolean, "BOOL"),
        (pa.types.is_date, "DATE"),
    ):
        if test(arrow_type):
            return name, "NULLABLE"
    raise TypeError(f"no BigQuery type for {arrow_type}")


class BigQueryEngine:
    """A project of its own on the session's emulator."""

    # BigQuery has no NULL array: a REPEATED column stores (and a query returns) an empty one instead.
    stores_null_lists_as_empty = True

    def __init__(self, server: BigQueryEmulator):
        self.server = server
        self.project = f"wsync-{uuid.uuid4().hex[:12]}"

    def connection(self, **keys) -> dict:
        """The sync file's connection to this project, with extra keys."""
        return {"type": "bigquery", "project": self.project, "api_endpoint": self.server.rest_url, **keys}

    def load(self, tables: dict[str, pa.Table]) -> dict:
        """Create each dataset.table with BigQuery's own types, loaded from Parquet by a load job."""
        from google.cloud import bigquery

        client = self.server.client(self.project)
        try:
            for name, table in tables.items():
                client.create_dataset(name.split(".")[0], exists_ok=True)
                schema = [bigquery.SchemaField(f.name, *bigquery_type(f.type)) for f in table.schema]
                data = io.BytesIO()
                pq.write_table(table, data)
                data.seek(0)
                config = bigquery.LoadJobConfig(
                    source_format="PARQUET", schema=schema, write_disposition="WRITE_TRUNCATE"
                )
                client.load_table_from_file(data, name, job_config=config).result()
        finally:
            client.close()
        return self.connection()


def start(tmp_path: Path) -> Iterator[BigQueryEngine]:
    """A fresh project on the session's emulator."""
    yield BigQueryEngine(emulator())
