"""Late rows are not lost by default: a run re-reads the window (or the integer range) before its own.

Through `wsync run` on a DuckDB warehouse, into a profile store of each backend (SQLite and PostgreSQL).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from wsync_dagster.cli import main
from wsync_dagster.store import ProfileStore
from wsync_dagster_tests.conftest import USERS_SQL, user_sync

# Range keys as `wsync run` prints them: FIRST_LAST, zero-padded.
IDS_1_4, IDS_5_5 = "00000000000000000001_00000000000000000004", "00000000000000000005_00000000000000000005"
LATE_USER = "INSERT INTO crm.users VALUES ('C009', 'late@example.com', 'Late', 'pro', TIMESTAMP '2024-01-01 23:00:00')"
IDS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, plan VARCHAR, id BIGINT);
INSERT INTO crm.users VALUES
    ('C001', 'ada@example.com', 'free', 1),
    ('C002', 'bo@example.com', 'free', 2),
    ('C004', 'di@example.com', 'team', 4);
"""


def id_sync(warehouse: Path, **settings: object) -> dict:
    """An on-demand user sync ordered by the auto-increment column id."""
    return {
        "name": "crm_users",
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, email, plan, id FROM crm.users"},
        "mapping": [
            {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
            {"type": "column", "column": "email", "field": "user_identities.email"},
            {"type": "column", "column": "plan", "field": "user_attributes.plan"},
            {"type": "ignore", "column": "id"},
        ],
        "sync": {"mode": "incremental", "iterator": "id", "iterator_type": "integer", **settings},
    }


def arrive(warehouse: Path, sql: str) -> None:
    """Rows land in the warehouse (a transaction that commits late, a replica catching up)."""
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(sql)


def run(capsys: pytest.CaptureFixture[str], *partition: str) -> dict[str, int]:
    """`wsync run crm_users [--partition KEY]`, exit 0; the delivery's counts it prints."""
    argv = ["run", "crm_users", *(("--partition", *partition) if partition else ())]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "crm_users/delivery:" in line)
    return {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", line)}


def test_a_row_one_window_late_is_delivered_by_the_next_run(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No lookback in the file: the run of 2024-01-02 reads 2024-01-01 again and finds the late row."""
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse))
    run(capsys, "2024-01-01")
    arrive(warehouse, LATE_USER)  # its window was delivered already

    run(capsys, "2024-01-02")
    late = cli_store.profile("customer_id", "C009")
    assert late is not None and late["attributes"] == {"first_name": "Late", "plan": "pro"}


def test_rows_read_again_are_unchanged_and_change_nothing(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The window read again holds rows the store has: counted unchanged, no attribute set, no profile
    updated; only the window's own row is applied. The counts go to the run's first partition."""
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse))
    run(capsys, "2024-01-01")
    before = [cli_store.profile("customer_id", c) for c in ("C001", "C002")]

    counts = run(capsys, "2024-01-02")  # C001 and C002 again, C003 new
    assert (counts["rows"], counts["rows_unchanged"], counts["rows_applied"]) == (3, 2, 1)
    assert (counts["profiles_created"], counts["profiles_updated"], counts["attributes_set"]) == (1, 0, 1)
    assert [cli_store.profile("customer_id", c) for c in ("C001", "C002")] == before
    stored = cli_store.partition_counts("crm_users", "production")["2024-01-02"]
    assert (stored["rows_unchanged"], stored["rows_applied"]) == (2, 1)

    again = run(capsys, "2024-01-02")  # the same two windows once more: nothing is new
    assert (again["rows_unchanged"], again["rows_applied"], again["attributes_set"]) == (3, 0, 0)


def test_a_newer_row_of_a_profile_read_with_its_older_one_still_wins(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A change-log model: the window read again holds C001's older row, which is unchanged; the newer one
    is applied."""
    warehouse = make_warehouse(
        USERS_SQL
        + "INSERT INTO crm.users VALUES ('C001', 'ada@example.com', 'Ada', 'team', TIMESTAMP '2024-01-02 08:00:00');"
    )
    write_sync(user_sync(warehouse))
    run(capsys, "2024-01-01")
    counts = run(capsys, "2024-01-02")
    assert counts["rows_unchanged"] == 2
    ada = cli_store.profile("customer_id", "C001")
    assert ada is not None and ada["attributes"]["plan"] == "team"


def test_lookback_0s_still_leaves_a_late_row_to_its_own_window(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Opting out: each run reads exactly its window; the late row arrives when its window runs again."""
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse, sync={"lookback": "0s"}))
    run(capsys, "2024-01-01")
    arrive(warehouse, LATE_USER)

    counts = run(capsys, "2024-01-02")
    assert counts["rows"] == 1  # C003 only
    assert cli_store.profile("customer_id", "C009") is None
    run(capsys, "2024-01-01")
    assert cli_store.profile("customer_id", "C009") is not None


def test_an_id_committed_below_the_last_range_is_delivered_by_the_next_run(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Id 3 commits after 1..4 was delivered: the next range (5..5) reads the previous range again, so 3
    arrives; 1, 2 and 4 are read again and unchanged."""
    warehouse = make_warehouse(IDS_SQL)
    write_sync(id_sync(warehouse))
    run(capsys)
    assert cli_store.delivered_partitions("crm_users", "production") == [IDS_1_4]
    arrive(
        warehouse,
        "INSERT INTO crm.users VALUES ('C003', 'cy@example.com', 'pro', 3), ('C005', 'ed@example.com', 'free', 5)",
    )

    counts = run(capsys)
    assert cli_store.delivered_partitions("crm_users", "production") == [IDS_1_4, IDS_5_5]
    late = cli_store.profile("customer_id", "C003")
    assert late is not None and late["attributes"] == {"plan": "pro"}
    assert (counts["rows"], counts["rows_unchanged"], counts["rows_applied"]) == (5, 3, 2)


def test_an_integer_lookback_reads_that_many_ids_back(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`lookback: 2` re-reads ids 3..4 below the range 5..5: the late id 3 arrives, 1 and 2 are not read."""
    warehouse = make_warehouse(IDS_SQL)
    write_sync(id_sync(warehouse, lookback=2))
    run(capsys)
    arrive(
        warehouse,
        "INSERT INTO crm.users VALUES ('C003', 'cy@example.com', 'pro', 3), ('C005', 'ed@example.com', 'free', 5)",
    )

    counts = run(capsys)
    assert (counts["rows"], counts["rows_unchanged"]) == (3, 1)  # 3 and 5 applied, 4 unchanged
    assert cli_store.profile("customer_id", "C003") is not None


def test_lookback_0_still_reads_each_id_once(
    cli_store: ProfileStore,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Opting out: the next range reads only the ids above the last range; the late id is never read."""
    warehouse = make_warehouse(IDS_SQL)
    write_sync(id_sync(warehouse, lookback=0))
    run(capsys)
    arrive(
        warehouse,
        "INSERT INTO crm.users VALUES ('C003', 'cy@example.com', 'pro', 3), ('C005', 'ed@example.com', 'free', 5)",
    )

    counts = run(capsys)
    assert counts["rows"] == 1  # id 5
    assert cli_store.profile("customer_id", "C003") is None
