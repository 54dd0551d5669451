"""`checks.block_on_reject_rate: true`: a run whose reject rate is over the limit delivers nothing.

Through `wsync run`, into a profile store of each backend (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from wsync_dagster.cli import EXIT_BLOCKED, EXIT_CHECK_FAILED, main
from wsync_dagster.store import ProfileStore
from wsync_dagster_tests.conftest import USERS_SQL, user_sync

# Two rows of 2024-01-02 without any identity: two rejects of three rows read.
NOBODY = (
    "INSERT INTO crm.users VALUES (NULL, NULL, 'Nobody', 'pro', TIMESTAMP '2024-01-02 10:00:00'), "
    "(NULL, NULL, 'Noone', 'free', TIMESTAMP '2024-01-02 11:00:00')"
)
BLOCK = {"checks": {"block_on_reject_rate": True}, "sync": {"lookback": "0s"}}


def what_the_store_shows(store: ProfileStore, capsys: pytest.CaptureFixture[str]) -> tuple:
    """Delivered partitions with their counts, every customer's profile, and `wsync rejects`."""
    profiles = [store.profile("customer_id", c) for c in ("C001", "C002", "C003")]
    assert main(["rejects", "crm_users", "--json"]) == 0
    rejects = json.loads(capsys.readouterr().out)
    return store.partition_counts("crm_users", "production"), profiles, rejects


def test_a_blocked_run_writes_nothing_and_says_why_in_one_line(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """2 of 3 rows rejected, over the default 5%: exit 4, one line naming the rate, the limit and the most
    common reason, and the store is as the earlier delivery left it."""
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse, **BLOCK))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    capsys.readouterr()
    before = what_the_store_shows(cli_store, capsys)
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(NOBODY)

    assert main(["run", "crm_users", "--partition", "2024-01-02"]) == EXIT_BLOCKED == 4
    captured = capsys.readouterr()
    [line] = [line for line in captured.err.splitlines() if line.startswith("wsync run:")]
    assert line.startswith(
        "wsync run: crm_users: delivery blocked: 66.7% of rows rejected (2 of 3), over checks.max_reject_rate "
        "5.0%, and checks.block_on_reject_rate is true: nothing was written to the profile store; most often: "
        "no identity: customer_id, email all empty (2 rows); fix the rows or the mapping (or raise "
        "checks.max_reject_rate), then run again (run "
    )
    assert "crm_users/delivery" not in captured.out
    assert what_the_store_shows(cli_store, capsys) == before
    assert cli_store.profile("customer_id", "C003") is None
    assert cli_store.delivered_partitions("crm_users", "production") == ["2024-01-01"]


def test_without_the_flag_the_rows_that_map_are_delivered_and_the_check_fails(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default: the good row is delivered, the rejects are stored, and the run exits 3."""
    write_sync(user_sync(make_warehouse(USERS_SQL + NOBODY + ";"), sync={"lookback": "0s"}))
    assert main(["run", "crm_users", "--partition", "2024-01-02"]) == EXIT_CHECK_FAILED
    assert (
        "check failed: crm_users/mapped_batches:reject_rate 66.7% of rows rejected" in capsys.readouterr().err
    )
    assert cli_store.profile("customer_id", "C003") is not None
    assert len(cli_store.rejects("crm_users")) == 2


def test_a_run_under_the_limit_is_not_blocked(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the flag on and a limit the rate stays under, the run delivers and exits 0."""
    sync = user_sync(make_warehouse(USERS_SQL + NOBODY + ";"), **BLOCK)
    sync["checks"]["max_reject_rate"] = 0.7
    write_sync(sync)
    assert main(["run", "crm_users", "--partition", "2024-01-02"]) == 0
    assert "crm_users/delivery" in capsys.readouterr().out
    assert cli_store.profile("customer_id", "C003") is not None
