"""`wsync backfill`: a real Dagster backfill through a real `dagster dev` and its daemon, and its bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from wsync_dagster.cli import main
from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import closed_port, user_sync
from wsync_dagster_tests.test_dagster_dev import LOCATION, dagster_dev, wait_until_loaded

# One customer changes plan on each of three days, and a second appears on day two: a backfill that runs
# its partitions in any order, or at once, must leave what an in-order run leaves.
HISTORY_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (
    customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP
);
INSERT INTO crm.users VALUES
    ('C001', 'ada@example.com', 'Ada', 'free', TIMESTAMP '2024-01-01 10:00:00'),
    ('C001', 'ada@example.com', 'Ada', 'pro', TIMESTAMP '2024-01-02 10:00:00'),
    ('C002', 'bo@example.com', 'Bo', 'free', TIMESTAMP '2024-01-02 11:00:00'),
    ('C001', 'ada@new.example.com', 'Ada', 'enterprise', TIMESTAMP '2024-01-03 10:00:00');
"""
PARTITIONS = ["2024-01-01", "2024-01-02", "2024-01-03"]
BACKFILL_TIMEOUT_S = 300


def profiles(store_url: str) -> dict:
    """The two customers' identities and attributes."""
    with open_profile_store(store_url) as store:
        found = {customer: store.profile("customer_id", customer) for customer in ("C001", "C002")}
    return {c: p and {"identities": p["identities"], "attributes": p["attributes"]} for c, p in found.items()}


def test_a_backfill_through_dagster_dev_runs_every_partition_and_ends_as_an_in_order_run(
    tmp_path: Path,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon runs the launched backfill; the CLI follows it to the end; profiles equal an in-order run's."""
    write_sync(user_sync(make_warehouse(HISTORY_SQL)))
    backfill_store = os.environ["WSYNC_PROFILE_STORE"]

    with dagster_dev(tmp_path) as (client, process):
        wait_until_loaded(client, process, LOCATION)
        done = subprocess.run(
            [
                sys.executable, "-m", "wsync_dagster.cli", "backfill", "crm_users",
                "--from", PARTITIONS[0], "--to", PARTITIONS[-1], "--url", str(client.base_url),
            ],
            capture_output=True,
            text=True,
            timeout=BACKFILL_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    assert "backfill" in done.stdout and "3 partitions launched" in done.stdout, done.stdout
    assert "crm_users/delivery: 3/3 done" in done.stdout, done.stdout

    # Dagster's own record, read from its instance after the webserver stopped: what the UI shows.
    instance = DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    try:
        delivered = instance.get_materialized_partitions(AssetKey(["crm_users", "delivery"]))
    finally:
        instance.dispose()
    assert delivered == set(PARTITIONS)

    # The same partitions, in order, into a fresh store.
    in_order_store = f"sqlite:///{tmp_path / 'in_order.sqlite'}"
    monkeypatch.setenv("WSYNC_PROFILE_STORE", in_order_store)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for partition in PARTITIONS:
        assert main(["run", "crm_users", "--partition", partition]) == 0
    expected = profiles(in_order_store)
    assert expected["C001"]["attributes"]["plan"] == "enterprise"
    assert expected["C001"]["identities"]["email"] == "ada@new.example.com"
    assert profiles(backfill_store) == expected


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2024-01-03", "2024-01-01", "--from 2024-01-03 is after --to 2024-01-01"),
        ("2023-12-31", "2024-01-02", "--from 2023-12-31 is not one of its complete partitions; they run from 2024-01-01"),
        ("2024-01-01", "2024-13-01", "--to 2024-13-01 is not one of its complete partitions"),
    ],
)  # fmt: skip
def test_a_backfill_range_that_is_not_the_syncs_is_refused_before_anything_runs(
    first: str,
    last: str,
    message: str,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reversed or unknown range: one line naming the sync and the keys; no webserver is even asked."""
    write_sync(user_sync(make_warehouse(HISTORY_SQL)))
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["backfill", "crm_users", "--from", first, "--to", last, "--url", url]) == 1
    error = capsys.readouterr().err
    assert error.startswith("wsync backfill: crm_users: ") and message in error, error
    assert "webserver" not in error


def test_a_backfill_with_no_webserver_running_says_so_and_writes_nothing(
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    store_bytes: Callable[[], bytes],
) -> None:
    """Nothing listens at --url: one line saying how to start one; the profile store is untouched."""
    write_sync(user_sync(make_warehouse(HISTORY_SQL)))
    before = store_bytes()
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["backfill", "crm_users", "--from", PARTITIONS[0], "--to", PARTITIONS[1], "--url", url]) == 1
    error = capsys.readouterr().err
    assert f"no Dagster webserver answers at {url}" in error and "dagster dev" in error, error
    assert store_bytes() == before


def test_a_full_mode_sync_has_no_partitions_to_backfill(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Full mode's partitions are run keys: the error says to use `wsync run`."""
    sync = user_sync(make_warehouse(HISTORY_SQL), sync={"mode": "full", "schedule": "on_demand"})
    for key in ("iterator", "iterator_type", "frequency", "start", "historical_start"):
        sync["sync"].pop(key)
    write_sync(sync)
    assert main(["backfill", "crm_users", "--from", "a", "--to", "b"]) == 1
    assert "use `wsync run crm_users`" in capsys.readouterr().err
