"""The PostgreSQL profile store's own behaviour, on the local PostgreSQL: runs writing at once, a killed run,
and a store that cannot be used (no permission, a newer schema, the password never shown)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg2
import pyarrow as pa
import pytest

from wsync_dagster.store import ProfileStoreError, open_profile_store
from wsync_dagster.store.postgres import ANALYZE_ROWS, PostgresBackend
from wsync_dagster.store.schema import SCHEMA_VERSION
from wsync_dagster.store.sqlite import SQLiteBackend
from wsync_dagster_tests.conftest import pg_store_url, store_sql
from wsync_dagster_tests.test_profile_store import _customers, deliver, mapped

REPO = Path(__file__).resolve().parents[1]
DELIVER = """
    import sys
    from wsync_dagster.store import open_profile_store
    from wsync_dagster_tests.test_profile_store import deliver, mapped

    url, sync, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open_profile_store(url) as store:
        for n in range(first, first + 6):
            rows = [
                {{"customer_id": f"C{{c}}", "email": f"c{{c}}@x.io", "{attribute}": f"{{sync}}-{{n}}"}}
                for c in range(n % 3, 40, 3)
            ]
            # Versions never tie across the syncs: a tie goes to the later delivery, which is order itself.
            version = n * 2 + (sync == "billing")
            deliver(store, mapped(*rows, version=version), sync=sync, partition=f"{{sync}}-{{n}}")
"""


def python(*args: str, script: str) -> subprocess.Popen[str]:
    """A Python process running `script` with this repository importable."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_runs_of_two_syncs_writing_at_once_end_as_a_serial_replay(pg_store_database: str) -> None:
    """Four processes, two syncs, the same customers: the profiles equal one process delivering them in turn."""
    url = pg_store_url(pg_store_database)
    script = DELIVER.format(attribute="plan")
    writers = [
        python(url, sync, str(first), script=script) for sync in ("crm", "billing") for first in (1, 7)
    ]
    for writer in writers:
        _, error = writer.communicate(timeout=300)
        assert writer.returncode == 0, error

    serial = pg_store_url(pg_store_database)
    for sync in ("crm", "billing"):
        for first in (1, 7):
            done = python(serial, sync, str(first), script=script)
            assert done.communicate(timeout=300)[0] is not None and done.returncode == 0
    with open_profile_store(url) as together, open_profile_store(serial) as alone:
        assert _customers(together) == _customers(alone)
    counted = store_sql(url, "SELECT COUNT(*), COUNT(DISTINCT profile_id) FROM identities")
    assert counted == [(80, 40)]  # one profile per customer, each with its two identities


def test_a_killed_delivery_leaves_nothing_and_the_next_one_proceeds(pg_store_database: str) -> None:
    """SIGKILL inside an open delivery: its rows are gone with its connection, its locks too."""
    url = pg_store_url(pg_store_database)
    with open_profile_store(url) as store:
        deliver(store, mapped({"customer_id": "A", "plan": "free"}))
    hold = """
        import sys, time
        from wsync_dagster.store import open_profile_store
        from wsync_dagster_tests.test_profile_store import mapped
        store = open_profile_store(sys.argv[1])
        with store.delivery(sync="crm_users", environment="production", partitions=["p2"],
                            input_protection="create_and_update") as d:
            d.apply_batch(mapped({"customer_id": "A", "plan": "pro"}, {"customer_id": "B"}, version=2))
            print("applied", flush=True)
            time.sleep(600)
    """
    writer = python(url, script=hold)
    assert writer.stdout.readline().strip() == "applied"  # type: ignore[union-attr]
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)

    with open_profile_store(url) as store:
        assert store.profile("customer_id", "A")["attributes"] == {"plan": "free"}  # type: ignore[index]
        assert store.profile("customer_id", "B") is None
        assert store.delivered_partitions("crm_users", "production") == ["2024-11-15"]
        started = time.monotonic()
        deliver(store, mapped({"customer_id": "A", "plan": "team"}, version=3), partition="p3")
        assert time.monotonic() - started < 30  # the killed run's identity locks went with its connection
        assert store.profile("customer_id", "A")["attributes"] == {"plan": "team"}  # type: ignore[index]


@pytest.fixture
def scratch_role(pg_store_database: str) -> Callable[[str], str]:
    """A login role with a password and no CREATE on a fresh schema; dropped afterwards."""
    created: list[str] = []
    admin = psycopg2.connect(pg_store_database)
    admin.autocommit = True

    def make(password: str) -> str:
        role, schema = f"wsync_ro_{uuid.uuid4().hex[:8]}", f"locked_{uuid.uuid4().hex[:8]}"
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
            cur.execute(f"CREATE SCHEMA {schema}")
            cur.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
            cur.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        created.append(role)
        database = pg_store_database.rsplit("/", 1)[1]
        return f"postgresql://{role}:{password}@127.0.0.1:5432/{database}?options=-csearch_path%3D{schema}"

    yield make
    with admin.cursor() as cur:
        for role in created:
            cur.execute(f"DROP OWNED BY {role}")
            cur.execute(f"DROP ROLE {role}")
    admin.close()


def test_a_database_without_permission_to_create_tables_is_one_line_without_the_password(
    scratch_role: Callable[[str], str],
) -> None:
    """The store says which store, that it may not create its tables and what to grant."""
    password = "planted-pg-secret-4b1d"
    with pytest.raises(ProfileStoreError) as error:
        open_profile_store(scratch_role(password))
    message = str(error.value)
    assert message.startswith("profile store postgresql://wsync_ro_") and "\n" not in message
    assert "no permission to create the store's tables" in message and "grant CREATE" in message
    assert password not in message


def test_a_store_made_by_a_newer_wsync_is_refused(pg_store_database: str) -> None:
    """A schema version above this wsync's: one line saying to upgrade; nothing is changed."""
    url = pg_store_url(pg_store_database)
    open_profile_store(url).close()
    schema = url.rsplit("%3D", 1)[1]
    with psycopg2.connect(pg_store_database) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {schema}.wsync_schema SET version = 99")
    conn.close()
    with pytest.raises(
        ProfileStoreError,
        match=rf"has schema version 99, newer than this wsync \({SCHEMA_VERSION}\); upgrade",
    ):
        open_profile_store(url)


def test_wsync_run_delivers_into_a_postgresql_store(
    pg_store_database: str,
    make_warehouse: Callable[[str], Path],
    write_sync: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command line end to end with WSYNC_PROFILE_STORE=postgresql://…"""
    from wsync_dagster.cli import main
    from wsync_dagster_tests.conftest import USERS_SQL, user_sync

    url = pg_store_url(pg_store_database)
    monkeypatch.setenv("WSYNC_PROFILE_STORE", url)
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    with open_profile_store(url) as store:
        ada = store.profile("customer_id", "C001")
        assert store.backend == "postgresql"
    assert ada is not None and ada["identities"]["email"] == "ada@example.com"


def test_events_copied_straight_in_count_and_keep_as_the_merge_does(
    pg_store_database: str, tmp_path: Path
) -> None:
    """A batch of new events is COPYed straight in; one holding a stored or repeated event id falls back to
    the merge: the counts and the rows kept are SQLite's, every batch of the delivery."""

    def events(ids: list[int]) -> pa.Table:
        return pa.table(
            {
                "environment": ["production"] * len(ids),
                "sync": ["clicks"] * len(ids),
                "event_id": [f"e{i}" for i in ids],
                "profile_id": [f"p{i % 7}" for i in ids],
                "timestamp_ms": [i for i in ids],
                "data": [f"{len(ids)}-{i}" for i in ids],
                "seq": [1] * len(ids),
            }
        )

    batches = [range(0, 50), range(50, 80), [*range(70, 90), 95, 95], range(100, 120), range(0, 10)]
    conflict = "ON CONFLICT (environment, sync, event_id) DO NOTHING"
    kept = {}
    for name, backend in (
        ("postgresql", PostgresBackend(pg_store_url(pg_store_database))),
        ("sqlite", SQLiteBackend(tmp_path / "profiles.sqlite")),
    ):
        backend.begin_delivery()
        profiles = [f"p{i}" for i in range(7)]
        backend.insert(
            "profiles",
            pa.table({"profile_id": profiles, "environment": ["production"] * 7, "created_at": ["now"] * 7}),
        )
        counts = [backend.insert("events", events(list(ids)), conflict) for ids in batches]
        backend.commit()
        backend.begin_delivery()
        counts.append(backend.insert("events", events([*range(120, 130)]), conflict))
        counts.append(backend.insert("events", events([*range(125, 135)]), conflict))
        backend.commit()
        rows = backend.rows("SELECT event_id, data FROM events ORDER BY event_id")
        backend.close()
        kept[name] = (counts, rows)
    assert kept["postgresql"] == kept["sqlite"]
    assert kept["sqlite"][0] == [50, 30, 11, 20, 0, 10, 5]


def test_a_table_a_delivery_doubled_is_analyzed_in_it(pg_store_database: str) -> None:
    """With autovacuum off a table filled by one delivery would keep its empty statistics: the delivery
    ANALYZEs it, and its own look-ups plan with the rows it wrote."""
    backend = PostgresBackend(pg_store_url(pg_store_database))
    n = ANALYZE_ROWS + 1
    backend.begin_delivery()
    ids = [f"p{i:06d}" for i in range(n)]
    backend.insert(
        "profiles",
        pa.table({"profile_id": ids, "environment": ["production"] * n, "created_at": ["now"] * n}),
    )
    [(estimate,)] = backend.rows("SELECT reltuples FROM pg_class WHERE oid = to_regclass('profiles')")
    backend.commit()
    backend.close()
    assert estimate == n


def test_a_delivery_that_waited_for_an_owners_profile_sees_what_the_other_moved(
    pg_store_database: str,
) -> None:
    """Delivery A moves customer C1's profile to a new email and stays open; B, delivering the old email,
    waits for that profile, then resolves as if it had run after A: the old email, which A released, starts
    a profile of its own (as delivered one after the other)."""
    first = mapped({"customer_id": "C1", "email": "old@x.io", "plan": "free"}, version=1)
    moved = mapped({"customer_id": "C1", "email": "new@x.io", "plan": "pro"}, version=2)
    old_email = mapped({"email": "old@x.io", "plan": "team"}, version=3)
    serial, url = pg_store_url(pg_store_database), pg_store_url(pg_store_database)
    with open_profile_store(serial) as store:
        for n, batch in enumerate((first, moved, old_email)):
            deliver(store, batch, partition=f"p{n}")
        expected = {value: store.profile("email", value) for value in ("old@x.io", "new@x.io")}

    with open_profile_store(url) as a_store, open_profile_store(url) as b_store:
        deliver(a_store, first, partition="p0")
        with ExitStack() as a_open:
            a = a_open.enter_context(
                a_store.delivery(
                    sync="crm_users",
                    environment="production",
                    partitions=["p1"],
                    input_protection="create_and_update",
                )
            )
            a.apply_batch(moved)
            b = threading.Thread(target=deliver, args=(b_store, old_email), kwargs={"partition": "p2"})
            b.start()
            _until_a_delivery_waits_for_a_lock(url)
        b.join(timeout=60)
        assert not b.is_alive()
        got = {value: a_store.profile("email", value) for value in ("old@x.io", "new@x.io")}
    assert got["old@x.io"]["attributes"] == {"plan": "team"}
    assert got["new@x.io"]["attributes"] == {"plan": "pro"}
    assert got["old@x.io"]["profile_id"] != got["new@x.io"]["profile_id"]
    assert {v: (p["identities"], p["attributes"]) for v, p in got.items()} == {
        v: (p["identities"], p["attributes"]) for v, p in expected.items()
    }


def _until_a_delivery_waits_for_a_lock(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = store_sql(url, "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory'")
        if waiting[0][0]:
            return
        time.sleep(0.05)
    raise AssertionError("the second delivery never waited for the first's lock")


def test_a_delivery_sends_no_identity_value_in_a_statements_text(pg_store_database: str) -> None:
    """A statement's text shows in pg_stat_activity and, when it fails (a lock timeout), in the server's log:
    identity values go in by COPY, and no statement a delivery sends names one."""
    sent: list[bytes] = []

    class Recording(psycopg2.extensions.cursor):
        def execute(self, query: Any, params: Any = None) -> Any:
            try:
                return super().execute(query, params)
            finally:
                sent.append(self.query or b"")

    planted = "planted-7f3a@x.io"
    with open_profile_store(pg_store_url(pg_store_database)) as store:
        store._db._conn.cursor_factory = Recording  # type: ignore[attr-defined]
        deliver(store, mapped({"customer_id": "C-planted-7f3a", "email": planted, "plan": "pro"}), partition="p1")
        deliver(store, mapped({"email": planted, "plan": "team"}, version=2), partition="p2")
        delivered = list(sent)
        assert store.profile("email", planted)["attributes"] == {"plan": "team"}
    assert delivered
    assert not [query for query in delivered if b"planted-7f3a" in query]
