"""Mirror guards through `wsync run`, on both store backends: a full-mode `mirror: true` run removes
nothing when it read no rows or rejected them all, and holds back a mass removal unless allowed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from wsync_dagster.cli import main
from wsync_dagster.store import ProfileStore

FOUR_CUSTOMERS = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id VARCHAR, email VARCHAR, plan VARCHAR);
INSERT INTO crm.users VALUES
    ('C1', 'c1@example.com', 'free'), ('C2', 'c2@example.com', 'pro'),
    ('C3', 'c3@example.com', 'team'), ('C4', 'c4@example.com', 'free');
"""
CUSTOMERS = ("C1", "C2", "C3", "C4")
HELD_BACK = (
    "  warning: crm_users: mirror removal held back: 3 of the 4 profiles it set would have lost this "
    "sync's attributes (75%, over sync.mirror_max_removal 50%); nothing was removed. If that is right, "
    "run `wsync run crm_users --allow-mass-removal` (in the UI: tag wsync/allow_mass_removal=true)"
)


@pytest.fixture
def store(cli_store: ProfileStore) -> ProfileStore:
    """The store `wsync` uses, of each backend."""
    return cli_store


@pytest.fixture
def warehouse(
    store: ProfileStore, make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path]
) -> Path:
    """Four customers, a full-mode mirror sync of them, and a first run that set each one's plan."""
    path = make_warehouse(FOUR_CUSTOMERS)
    write_sync(mirror_sync(path))
    assert main(["run", "crm_users", "--partition", "20240101T000000"]) == 0
    return path


def mirror_sync(warehouse: Path, **settings: object) -> dict:
    """A full-mode user sync with mirror on."""
    return {
        "name": "crm_users",
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, email, plan FROM crm.users"},
        "sync": {"mode": "full", "mirror": True, **settings},
    }


def change(warehouse: Path, sql: str) -> None:
    """Change the warehouse's table between runs."""
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(sql)


def plans(store: ProfileStore) -> dict[str, object]:
    """Each customer's plan as the store shows it (None: no plan, or no profile)."""
    found = {customer: store.profile("customer_id", customer) for customer in CUSTOMERS}
    return {customer: profile and profile["attributes"].get("plan") for customer, profile in found.items()}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`wsync run crm_users` for the next run key: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(["run", "crm_users", "--partition", "20240102T000000", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BEFORE = {"C1": "free", "C2": "pro", "C3": "team", "C4": "free"}


def test_an_emptied_model_removes_nothing_and_exits_3(store, warehouse, capsys) -> None:
    change(warehouse, "DELETE FROM crm.users")

    code, out, err = run(capsys)

    assert code == 3
    assert (
        "  warning: crm_users: mirror removed nothing: the run mapped no rows (an empty model, or every row "
        "rejected; see `wsync rejects crm_users`), and 4 of the 4 profiles it set would have lost this "
        "sync's attributes"
    ) in err.splitlines()
    assert "check failed: crm_users/delivery:mirror_removal" in err
    assert "mirror_held_back=4" in out
    assert plans(store) == BEFORE


def test_a_model_whose_every_row_is_rejected_removes_nothing(store, warehouse, capsys) -> None:
    change(warehouse, "UPDATE crm.users SET customer_id = '', email = NULL")

    code, _, err = run(capsys)

    assert code == 3
    assert "warning: crm_users: mirror removed nothing: the run mapped no rows" in err
    assert plans(store) == BEFORE


def test_a_mass_removal_is_held_back_and_the_rest_delivered(store, warehouse, capsys) -> None:
    change(warehouse, "DELETE FROM crm.users WHERE customer_id <> 'C1'; UPDATE crm.users SET plan = 'pro'")

    code, out, err = run(capsys)

    assert code == 3
    assert HELD_BACK in err.splitlines()
    assert "check failed: crm_users/delivery:mirror_removal" in err
    assert "mirror_held_back=3" in out
    assert plans(store) == {**BEFORE, "C1": "pro"}


def test_allow_mass_removal_lets_one_run_remove_it(store, warehouse, capsys) -> None:
    change(warehouse, "DELETE FROM crm.users WHERE customer_id <> 'C1'")

    code, out, err = run(capsys, "--allow-mass-removal")

    assert code == 0, err
    assert "warning:" not in err
    assert "mirror_held_back=0" in out
    assert plans(store) == {"C1": "free", "C2": None, "C3": None, "C4": None}


def test_a_removal_within_the_share_goes_ahead(store, warehouse, capsys) -> None:
    change(warehouse, "DELETE FROM crm.users WHERE customer_id = 'C4'")

    code, _, err = run(capsys)

    assert code == 0, err
    assert plans(store) == {**BEFORE, "C4": None}


def test_mirror_max_removal_in_the_sync_file_sets_the_share(store, warehouse, write_sync, capsys) -> None:
    write_sync(mirror_sync(warehouse, mirror_max_removal=0.2))
    change(warehouse, "DELETE FROM crm.users WHERE customer_id = 'C4'")

    code, _, err = run(capsys)

    assert code == 3
    assert "1 of the 4 profiles it set would have lost this sync's attributes (25%, over sync.mirror_max_removal 20%)" in err
    assert plans(store) == BEFORE


def test_a_row_sharing_an_email_with_a_departed_customer_does_not_keep_it(store, warehouse, capsys) -> None:
    """Presence is decided by the upsert rule: C9 with C4's e-mail is a new customer, so C4 has left."""
    change(warehouse, "UPDATE crm.users SET customer_id = 'C9' WHERE customer_id = 'C4'")

    code, _, err = run(capsys)

    assert code == 0, err
    assert plans(store) == {**BEFORE, "C4": None}
