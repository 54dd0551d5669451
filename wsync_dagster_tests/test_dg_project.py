"""The repository is a `dg` project: the real `dg` commands list, scaffold, check, list and serve the syncs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator

from wsync_dagster_tests.conftest import user_sync

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
DG_TIMEOUT = 180.0
DEV_LOAD_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0

WORKSPACE_QUERY = "query { workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
ASSETS_QUERY = "query { assetNodes { assetKey { path } } }"


def dg(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `dg` as a user would, from the project root, with the project's virtual environment active."""
    return subprocess.run(
        [str(VENV / "bin" / "dg"), *args],
        cwd=cwd,
        env=_env(cwd, **env),
        capture_output=True,
        text=True,
        timeout=DG_TIMEOUT,
    )


def _env(cwd: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(cwd), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "VIRTUAL_ENV": str(VENV), "NO_COLOR": "1", **extra}


@pytest.fixture(scope="module")
def syncs(tmp_path_factory) -> Path:
    """A sync folder holding one valid sync and one file that does not load."""
    folder = tmp_path_factory.mktemp("syncs")
    (folder / "crm_users.yaml").write_text(yaml.safe_dump(user_sync(folder / "w.duckdb")))
    broken = user_sync(folder / "w.duckdb", name="broken", data_model={"sql": "DELETE FROM crm.users"})
    (folder / "broken.yaml").write_text(yaml.safe_dump(broken))
    return folder


def test_dg_list_components_lists_both_wsync_components():
    result = dg("list", "components", "--json", "--package", "wsync_dagster")
    assert result.returncode == 0, result.stderr
    keys = {item["key"] for item in json.loads(result.stdout)["items"]}
    assert keys == {"wsync_dagster.WarehouseSync", "wsync_dagster.WarehouseSyncFolder"}


def test_dg_list_defs_shows_every_sync_and_the_file_that_does_not_load(syncs):
    result = dg("list", "defs", "--json", WSYNC_SYNCS_DIR=str(syncs))
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assets = {asset["asset_key"]: asset for asset in listed["assets"]}
    assert {"crm_users/mapped_batches", "crm_users/delivery", "invalid_sync_files/broken_yaml"} <= set(assets)
    assert "found DELETE" in assets["invalid_sync_files/broken_yaml"]["description"]
    assert {check["key"] for check in listed["asset_checks"]} >= {"crm_users/mapped_batches:reject_rate"}
    assert [job["name"] for job in listed["jobs"]] == ["crm_users_job"]
    assert [schedule["name"] for schedule in listed["schedules"]] == ["crm_users_schedule"]
    assert [sensor["name"] for sensor in listed["sensors"]] == ["wsync_recover_abandoned_runs"]


def test_dg_check_defs_names_the_file_that_does_not_load_and_exits_1(syncs):
    result = dg("check", "defs", WSYNC_SYNCS_DIR=str(syncs))
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert (
        f"{syncs / 'broken.yaml'}:\n- data_model.sql: the data model must be a SELECT, found DELETE" in output
    )
    assert "crm_users.yaml" not in output


@pytest.fixture
def project(tmp_path) -> Path:
    """A dg project of one's own (as `dg scaffold project` makes) that uses wsync's components."""
    (tmp_path / ".venv").symlink_to(VENV)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "syncproj"\nversion = "0.1.0"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "syncproj"\n'
    )
    (tmp_path / "syncproj" / "defs").mkdir(parents=True)
    (tmp_path / "syncproj" / "__init__.py").touch()
    (tmp_path / "syncproj" / "defs" / "__init__.py").touch()
    (tmp_path / "syncproj" / "definitions.py").write_text(
        "from pathlib import Path\n\nfrom dagster import load_from_defs_folder\n\n"
        "from wsync_dagster.components import wsync_code_location\n\n"
        "defs = wsync_code_location(load_from_defs_folder(path_within_project=Path(__file__).parent))\n"
    )
    return tmp_path


def test_scaffolded_sync_is_valid_checked_listed_and_has_a_schema(project):
    scaffolded = dg("scaffold", "defs", "wsync_dagster.WarehouseSync", "crm_users", cwd=project)
    assert scaffolded.returncode == 0, scaffolded.stderr
    defs_yaml = project / "syncproj" / "defs" / "crm_users" / "defs.yaml"
    text = defs_yaml.read_text()
    assert text.startswith("# A wsync sync as a Dagster component")
    attributes = yaml.safe_load(text)["attributes"]
    assert attributes["name"] == "crm_users"

    checked = dg("check", "defs", cwd=project)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # A second sync that does not validate shows as its own asset, and the first still loads.
    deleter = project / "syncproj" / "defs" / "deleter" / "defs.yaml"
    deleter.parent.mkdir()
    deleter.write_text(
        text.replace("name: crm_users", "name: deleter").replace("SELECT customer_id", "DELETE --")
    )
    listed = json.loads(dg("list", "defs", "--json", cwd=project).stdout)
    assets = {asset["asset_key"]: asset for asset in listed["assets"]}
    assert {"crm_users/mapped_batches", "crm_users/delivery", "invalid_sync_files/deleter"} <= set(assets)
    assert "data_model.sql" in assets["invalid_sync_files/deleter"]["description"]

    # The schema editors use (dg writes it): the scaffolded attributes pass, a misspelt key does not.
    schema_path = project / "schema.json"
    generated = dg("utils", "generate-component-schema", "--output-path", str(schema_path), cwd=project)
    assert generated.returncode == 0, generated.stderr
    validator = Draft202012Validator(json.loads(schema_path.read_text()))
    document = yaml.safe_load(text)
    assert not list(validator.iter_errors(document))
    document["attributes"]["sync"]["mdoe"] = document["attributes"]["sync"].pop("mode")
    assert list(validator.iter_errors(document))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dg_dev(syncs, tmp_path) -> Iterator[str]:
    """`dg dev` serving the project on a free port; stopped (its own process group) afterwards."""
    port = _free_port()
    process = subprocess.Popen(
        [str(VENV / "bin" / "dg"), "dev", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=_env(REPO, WSYNC_SYNCS_DIR=str(syncs), DAGSTER_HOME=str(tmp_path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}/graphql"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_dg_dev_serves_every_sync_and_the_file_that_does_not_load(dg_dev):
    deadline = time.monotonic() + DEV_LOAD_TIMEOUT
    status = None
    while time.monotonic() < deadline and status != "LOADED":
        try:
            answer = httpx.post(dg_dev, json={"query": WORKSPACE_QUERY}, timeout=5).json()
            [entry] = answer["data"]["workspaceOrError"]["locationEntries"]
            status = entry["loadStatus"]
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.5)
            continue
        time.sleep(0.5)
    assert status == "LOADED"
    assert entry["name"] == "wsync"
    nodes = httpx.post(dg_dev, json={"query": ASSETS_QUERY}, timeout=10).json()["data"]["assetNodes"]
    keys = {"/".join(node["assetKey"]["path"]) for node in nodes}
    assert {"crm_users/mapped_batches", "crm_users/delivery", "invalid_sync_files/broken_yaml"} <= keys
