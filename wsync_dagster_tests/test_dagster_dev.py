"""A real `dagster dev` loads the code location and runs one partition of a sync through GraphQL."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from wsync_dagster.defs.warehouses import warehouse_key
from wsync_dagster.spec import load_sync_file
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import USERS_SQL, user_sync, users_sync
from wsync_dagster_tests.engines.postgres import PASSWORD_VARIABLE, PostgresEngine

REPO = Path(__file__).resolve().parents[1]
LOCATION = "wsync"
JOB = "crm_users_job"
PARTITION = "2024-01-01"
LOAD_TIMEOUT = 120.0
RUN_TIMEOUT = 90.0
POLL_INTERVAL = 0.25
STOP_TIMEOUT = 20.0
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}

LOCATIONS_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message stack } }
      }
    }
    ... on PythonError { message }
  }
}
"""

ASSET_KEYS_QUERY = "query { assetNodes { assetKey { path } } }"
ASSET_KINDS_QUERY = "query { assetNodes { assetKey { path } kinds } }"

RESOURCE_QUERY = """
query Resource($selector: ResourceSelector!) {
  topLevelResourceDetailsOrError(resourceSelector: $selector) {
    __typename
    ... on ResourceDetails { name resourceType configuredValues { key value type } }
    ... on Error { message }
  }
}
"""
# A secret planted in the variable a sync file names: it must appear in no response.
PLANTED_SECRET = "planted-dev-s3cret-51d2"

LAUNCH_RUN_MUTATION = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN_STATUS_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on Error { message }
  }
}
"""

RUN_EVENTS_QUERY = """
query RunEvents($runId: ID!, $cursor: String) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection(afterCursor: $cursor) {
        cursor
        hasMore
        events {
          __typename
          ... on MessageEvent { level stepKey message }
          ... on ErrorEvent { error { message stack } }
        }
      }
    }
  }
}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left of it."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT)
    # Children (webserver, daemon, code server, run workers) may outlive dagster dev itself.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def dagster_dev(tmp_path: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    """`dagster dev` on workspace.yaml with its own DAGSTER_HOME; a client on its URL; output shown on failure."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    log = tmp_path / "dagster_dev.log"
    dagster = str(Path(sys.executable).parent / "dagster")
    command = [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "DAGSTER_HOME": str(home)},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    failed = False
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
            yield client, process
    except BaseException:
        failed = True
        raise
    finally:
        stop_process_group(process)
        if failed:
            print(f"--- {' '.join(command)} ---\n{log.read_text(errors='replace')}")


def graphql(client: httpx.Client, query: str, **variables: Any) -> dict[str, Any]:
    """Post a GraphQL query; its data, after checking there were no errors."""
    response = client.post("/graphql", json={"query": query, "variables": variables})
    response.raise_for_status()
    body = response.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


def poll(what: str, timeout: float, check: Callable[[], Any]) -> Any:
    """Call `check` every poll interval until it returns something other than None; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result is not None:
            return result
        time.sleep(POLL_INTERVAL)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_until_loaded(client: httpx.Client, process: subprocess.Popen[bytes], location: str) -> None:
    """Wait for the code location to load; fail with its error if it did not."""

    def loaded() -> dict[str, Any] | None:
        assert process.poll() is None, f"dagster dev exited with code {process.returncode}"
        try:
            workspace = graphql(client, LOCATIONS_QUERY)["workspaceOrError"]
        except httpx.TransportError:
            return None  # the webserver is not listening yet
        assert workspace["__typename"] == "Workspace", workspace
        entry = next((e for e in workspace["locationEntries"] if e["name"] == location), None)
        return entry if entry is not None and entry["loadStatus"] == "LOADED" else None

    entry = poll(f"code location {location!r} to load", LOAD_TIMEOUT, loaded)
    error = entry["locationOrLoadError"]
    assert error["__typename"] == "RepositoryLocation", (
        f"code location {location!r} failed to load: {error.get('message')}\n{''.join(error.get('stack', []))}"
    )


def asset_paths(client: httpx.Client) -> set[tuple[str, ...]]:
    """Asset keys the webserver knows, as tuples of path parts."""
    nodes = graphql(client, ASSET_KEYS_QUERY)["assetNodes"]
    return {tuple(node["assetKey"]["path"]) for node in nodes}


def launch_partition(client: httpx.Client, job: str, partition: str) -> str:
    """Launch one partition of a job of the `Definitions` repository; its run id."""
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": job},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        "mode": "default",
    }
    result = graphql(client, LAUNCH_RUN_MUTATION, executionParams=params)["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def run_errors(client: httpx.Client, run_id: str) -> str:
    """The run's error-level messages and error stacks, for a readable failure."""
    lines: list[str] = []
    cursor: str | None = None
    while True:
        run = graphql(client, RUN_EVENTS_QUERY, runId=run_id, cursor=cursor)["runOrError"]
        connection = run["eventConnection"]
        for event in connection["events"]:
            error = event.get("error")
            if event.get("level") in ("ERROR", "CRITICAL") or error:
                lines.append(f"[{event['__typename']} {event.get('stepKey') or ''}] {event.get('message')}")
            if error:
                lines.append(error["message"] + "".join(error["stack"]))
        if not connection["hasMore"]:
            return "\n".join(lines)
        cursor = connection["cursor"]


def wait_for_run(client: httpx.Client, run_id: str) -> str:
    """Poll the run until it is done; its final status."""

    def status() -> str | None:
        run = graphql(client, RUN_STATUS_QUERY, runId=run_id)["runOrError"]
        assert run["__typename"] == "Run", run
        return run["status"] if run["status"] in RUN_DONE else None

    return poll(f"run {run_id}", RUN_TIMEOUT, status)


def resource_details(client: httpx.Client, name: str) -> tuple[dict[str, Any], str]:
    """A top-level resource as the UI's resource page reads it, and the raw response text."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "resourceName": name}
    response = client.post("/graphql", json={"query": RESOURCE_QUERY, "variables": {"selector": selector}})
    assert response.status_code == 200, response.text
    details = response.json()["data"]["topLevelResourceDetailsOrError"]
    assert details["__typename"] == "ResourceDetails", details
    return details, response.text


def test_dagster_dev_delivers_one_partition_launched_through_graphql(
    tmp_path: Path,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dagster dev loads the sync's assets and a run of its 2024-01-01 partition fills the profile store.

    Beside it, an on-demand PostgreSQL sync (never run): its warehouse resource shows the password's
    variable by name, and the secret planted in that variable appears in no GraphQL response.
    """
    duckdb_sync = write_sync(user_sync(make_warehouse(USERS_SQL)))
    postgres = PostgresEngine("wsync_never_opened").connection()
    postgres_sync = write_sync(users_sync(postgres, "SELECT customer_id, email, updated_at FROM crm.users"))
    monkeypatch.setenv(PASSWORD_VARIABLE, PLANTED_SECRET)
    # Each connection's resource, under the key its syncs share.
    postgres_key, duckdb_key = (warehouse_key(load_sync_file(path)) for path in (postgres_sync, duckdb_sync))

    with dagster_dev(tmp_path) as (client, process):
        wait_until_loaded(client, process, LOCATION)
        assert {
            ("crm_users", "mapped_batches"),
            ("crm_users", "delivery"),
            ("warehouse", "warehouse", "crm", "users"),
        } <= asset_paths(client)

        details, text = resource_details(client, postgres_key)
        values = {value["key"]: value for value in details["configuredValues"]}
        assert values["password"] == {"key": "password", "value": PASSWORD_VARIABLE, "type": "ENV_VAR"}
        assert values["host"]["value"] == '"127.0.0.1"'
        assert details["resourceType"].endswith("PostgresWarehouseResource")
        duckdb_details, duckdb_text = resource_details(client, duckdb_key)
        assert duckdb_details["resourceType"].endswith("DuckDBWarehouseResource")
        kinds_response = client.post("/graphql", json={"query": ASSET_KINDS_QUERY})
        kinds = {
            tuple(n["assetKey"]["path"]): set(n["kinds"]) for n in kinds_response.json()["data"]["assetNodes"]
        }
        # The engine is shown on the table read and on the asset that reads it.
        assert "postgres" in kinds[("users", "mapped_batches")]
        assert "postgres" in kinds[("warehouse", "wsync_never_opened", "crm", "users")]
        assert "duckdb" in kinds[("crm_users", "mapped_batches")]
        assert "duckdb" in kinds[("warehouse", "warehouse", "crm", "users")]
        for response_text in (text, duckdb_text, kinds_response.text):
            assert PLANTED_SECRET not in response_text

        run_id = launch_partition(client, JOB, PARTITION)
        status = wait_for_run(client, run_id)
        assert status == "SUCCESS", f"run {run_id} ended {status}:\n{run_errors(client, run_id)}"

    with open_profile_store(os.environ["WSYNC_PROFILE_STORE"]) as store:
        ada = store.profile("customer_id", "C001")
        cy = store.profile("customer_id", "C003")
    assert ada is not None
    assert ada["identities"]["email"] == "ada@example.com"
    assert cy is None
