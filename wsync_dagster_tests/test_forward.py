"""Destinations wired in: a sync file's `destinations`, the outbox a delivery fills, `wsync forward`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

from wsync_dagster.cli import main
from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster.store import ProfileStore, open_profile_store
from wsync_dagster.store.schema import SCHEMA_VERSION
from wsync_dagster_tests.conftest import STORE_BACKENDS, store_sql
from wsync_dagster_tests.engines import http_sink
from wsync_dagster_tests.engines.http_sink import Fault, HttpSink

MP_KEY = "mp-key-planted-1b7e"
MP_SECRET = "mp-secret-planted-c4d2"
AMP_KEY = "amp-key-planted-9a0f"
AMP_SECRET = "amp-secret-planted-5e31"

USERS = """
CREATE TABLE users (customer_id VARCHAR, email VARCHAR, plan VARCHAR, city VARCHAR);
INSERT INTO users VALUES
    ('cust-00001', 'ada@example.com', 'pro', 'Paris'),
    ('cust-00002', 'bob@example.com', 'free', 'Oslo'),
    ('cust-00003', 'cy@example.com', 'pro', NULL);
"""


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpSink]:
    """The loopback sink, and the destinations' secrets in the environment."""
    yield from serve_sink(monkeypatch)


def serve_sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpSink]:
    """Runs the sink with the destinations' secrets set; after the test, no contract may have been broken."""
    server = http_sink.start(MP_KEY, MP_SECRET, AMP_KEY, amplitude_secret=AMP_SECRET)
    running = next(server)
    monkeypatch.setenv("MP_API_KEY", MP_KEY)
    monkeypatch.setenv("MP_API_SECRET", MP_SECRET)
    monkeypatch.setenv("AMP_API_KEY", AMP_KEY)
    monkeypatch.setenv("AMP_SECRET_KEY", AMP_SECRET)
    yield running
    server.close()
    assert running.violations == [], "the payloads broke an API contract"


def destinations(sink: HttpSink, rate: int = 100_000) -> list[dict]:
    return [
        {
            "name": "mp",
            "type": "mparticle",
            "pod": "US1",
            "api_key": {"env": "MP_API_KEY"},
            "api_secret": {"env": "MP_API_SECRET"},
            "base_url": sink.url,
            "rate": rate,
        },
        {
            "name": "amp",
            "type": "amplitude",
            "api_key": {"env": "AMP_API_KEY"},
            "secret_key": {"env": "AMP_SECRET_KEY"},
            "base_url": sink.url,
            "rate": rate,
        },
    ]


def full_sync(warehouse: Path, **overrides: object) -> dict:
    """A full-mode user sync over `users` (mirroring: a row that leaves removes its attributes)."""
    return {
        "name": "crm",
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, email, plan, city FROM users"},
        "sync": {"mode": "full", "mirror": True, "mirror_max_removal": 1.0},
        **overrides,
    }


def warehouse_sql(path: Path, sql: str) -> None:
    with duckdb.connect(str(path)) as connection:
        connection.execute(sql)


def store_view(store: ProfileStore, customer_id: str) -> dict:
    profile = store.profile("customer_id", customer_id)
    assert profile is not None
    return profile["attributes"]


# --- the sync file ---------------------------------------------------------------------------------------


def test_a_literal_destination_secret_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "crm.yaml"
    path.write_text(
        "name: crm\ndata_type: user\nconnection: {type: duckdb, path: w.duckdb}\n"
        "data_model: {sql: SELECT customer_id FROM users}\nsync: {mode: full}\n"
        "destinations:\n  - {name: mp, type: mparticle, api_key: {env: K}, api_secret: s3cr3t-planted}\n"
    )
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    assert str(error.value) == (
        f"{path}: destinations[0].api_secret: a secret is never written in a sync file; use {{env: VAR_NAME}}"
    )
    assert "s3cr3t-planted" not in str(error.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {
                "name": "mp",
                "type": "mparticle",
                "pod": "US9",
                "api_key": {"env": "K"},
                "api_secret": {"env": "S"},
            },
            "destinations[0].pod: Input should be 'US1', 'US2', 'EU1' or 'AU1'",
        ),
        (
            {
                "name": "mp",
                "type": "mparticle",
                "api_key": {"env": "K"},
                "api_secret": {"env": "S"},
                "regulation": "hipaa",
            },
            "destinations[0].regulation: Input should be 'gdpr' or 'ccpa'",
        ),
        (
            {"name": "amp", "type": "amplitude", "api_key": {"env": "K"}, "region": "asia"},
            "destinations[0].region: Input should be 'us' or 'eu'",
        ),
        (
            {"name": "x", "type": "braze"},
            "destinations[0]: type 'braze' is not a destination type; available: mparticle, amplitude",
        ),
        (
            {"name": "amp", "type": "amplitude", "api_key": {"env": "K"}, "colour": "red"},
            "destinations[0].colour: unknown key; allowed: name, rate, base_url, type, api_key, secret_key, region, user_id",
        ),
        (
            {"name": "Amp", "type": "amplitude", "api_key": {"env": "K"}},
            "destinations[0].name: lower-case letters, digits and _, starting with a letter ([a-z][a-z0-9_]*)",
        ),
    ],
)
def test_a_bad_destination_names_the_file_the_field_and_what_is_allowed(
    tmp_path: Path, entry: dict, message: str
) -> None:
    import yaml

    path = tmp_path / "crm.yaml"
    sync = full_sync(tmp_path / "w.duckdb", destinations=[entry])
    path.write_text(yaml.safe_dump(sync))
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    assert str(error.value) == f"{path}: {message}"


def test_two_destinations_of_one_name_are_refused(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "crm.yaml"
    entry = {"name": "amp", "type": "amplitude", "api_key": {"env": "K"}}
    path.write_text(yaml.safe_dump(full_sync(tmp_path / "w.duckdb", destinations=[entry, entry])))
    with pytest.raises(SyncSpecError, match=r"destinations\[1\].name: 'amp' is used twice in this sync"):
        load_sync_file(path)


# --- deliveries forward ----------------------------------------------------------------------------------


def test_wsync_run_forwards_profiles_and_removals_to_mparticle_and_amplitude(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    warehouse = make_warehouse(USERS)
    write_sync(full_sync(warehouse, destinations=destinations(sink)))

    assert main(["run", "crm"]) == 0
    assert sink.mparticle_profiles()["cust-00001"] == {"plan": "pro", "city": "Paris"}
    assert sink.amplitude_profiles()["cust-00002"] == {"plan": "free", "city": "Oslo"}
    # A NULL is a removal: never sent as a value.
    assert sink.mparticle_profiles()["cust-00003"] == {"plan": "pro"}

    warehouse_sql(warehouse, "UPDATE users SET plan = NULL, city = 'Rome' WHERE customer_id = 'cust-00001'")
    assert main(["run", "crm"]) == 0
    second = sink.batches[-1]
    assert second["user_identities"]["customerid"] == "cust-00001"
    assert second["deleted_user_attributes"] == ["plan"]
    assert sink.identifies[-1]["user_properties"]["$unset"] == {"plan": "-"}
    for customer in ("cust-00001", "cust-00002", "cust-00003"):
        assert sink.mparticle_profiles()[customer] == store_view(cli_store, customer)
        assert sink.amplitude_profiles()[customer] == store_view(cli_store, customer)
    # Only the changed profile went out the second time.
    assert len(sink.batches) == 4


def test_a_row_that_leaves_a_mirror_is_forwarded_as_removals(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    warehouse = make_warehouse(USERS)
    write_sync(full_sync(warehouse, destinations=destinations(sink)))
    assert main(["run", "crm"]) == 0

    warehouse_sql(warehouse, "DELETE FROM users WHERE customer_id = 'cust-00002'")
    assert main(["run", "crm"]) == 0
    assert sink.mparticle_profiles()["cust-00002"] == {}
    assert sink.amplitude_profiles()["cust-00002"] == {}
    assert sorted(sink.batches[-1]["deleted_user_attributes"]) == ["city", "plan"]


def test_a_mirror_removal_held_back_forwards_nothing(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    warehouse = make_warehouse(USERS)
    sync = full_sync(warehouse, destinations=destinations(sink))
    sync["sync"]["mirror_max_removal"] = 0.5
    write_sync(sync)
    assert main(["run", "crm"]) == 0
    sent = (len(sink.batches), len(sink.identifies))

    warehouse_sql(warehouse, "DELETE FROM users WHERE customer_id <> 'cust-00003'")
    assert main(["run", "crm"]) == 3  # held back: two of three profiles would lose their attributes
    assert (len(sink.batches), len(sink.identifies)) == sent
    assert sink.mparticle_profiles()["cust-00001"] == {"plan": "pro", "city": "Paris"}


def test_a_blocked_run_forwards_nothing(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    warehouse = make_warehouse(USERS + "INSERT INTO users VALUES (NULL, NULL, 'x', 'y');")
    sync = full_sync(warehouse, destinations=destinations(sink))
    sync["checks"] = {"max_reject_rate": 0.1, "block_on_reject_rate": True}
    write_sync(sync)
    assert main(["run", "crm"]) == 4
    assert sink.received == []
    assert main(["forward", "crm"]) == 0
    assert sink.received == []


def test_forward_seed_sends_the_current_profiles_to_a_new_destination_without_the_warehouse(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
) -> None:
    warehouse = make_warehouse(USERS)
    write_sync(full_sync(warehouse))
    assert main(["run", "crm"]) == 0
    assert sink.received == []

    write_sync(full_sync(warehouse, destinations=destinations(sink)[1:]))
    warehouse.unlink()  # the seed reads the profile store only
    capsys.readouterr()
    assert main(["forward", "crm", "--destination", "amp", "--seed"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("crm: forwarded to amp: profiles=3, events=0, requests=1, bytes=")
    assert all(
        name in out
        for name in ("retries=0", "throttled_waits=0", "rejects=0", "encode_seconds=", "wait_seconds=")
    )
    assert sink.amplitude_profiles() == {
        "cust-00001": {"plan": "pro", "city": "Paris"},
        "cust-00002": {"plan": "free", "city": "Oslo"},
        "cust-00003": {"plan": "pro"},
    }
    # Nothing is pending any more: a second forward sends nothing.
    assert main(["forward", "crm"]) == 0
    assert len(sink.identifies) == 3


def test_a_short_amplitude_user_id_is_a_reject_shown_by_wsync_rejects(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
) -> None:
    warehouse = make_warehouse(USERS + "INSERT INTO users VALUES ('c4', 'dee@example.com', 'pro', 'Rome');")
    write_sync(full_sync(warehouse, destinations=destinations(sink)))
    assert main(["run", "crm"]) == 0
    assert "c4" not in sink.amplitude_profiles()
    assert sink.mparticle_profiles()["c4"] == {"plan": "pro", "city": "Rome"}
    capsys.readouterr()
    assert main(["rejects", "crm", "--json"]) == 0
    [reject] = json.loads(capsys.readouterr().out)
    assert reject["partition"] == "amp"
    assert reject["kind"] == "forward"
    assert reject["reason"] == "user_id shorter than 5 characters (Amplitude's minimum)"
    assert main(["rejects", "crm"]) == 0
    shown = capsys.readouterr()
    assert shown.out.startswith('amp: user_id shorter than 5 characters (Amplitude\'s minimum): {"item": ')
    assert shown.err.strip() == "0 rejected rows, 0 identity conflicts, 1 item refused by destinations"
    # Rejected is final: it is not pending any more.
    assert main(["forward", "crm", "--destination", "amp"]) == 0
    assert len(sink.identifies) == 3
    # Amplitude never took the person: erasing them queues mParticle's deletion only.
    assert main(["erase", "--identity", "customer_id=c4"]) == 0
    assert (cli_store.pending_erasures("crm", "amp"), cli_store.pending_erasures("crm", "mp")) == (0, 1)


def test_refused_credentials_stop_with_one_line_naming_the_destination_never_the_key(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warehouse = make_warehouse(USERS)
    write_sync(full_sync(warehouse))
    assert main(["run", "crm"]) == 0
    write_sync(full_sync(warehouse, destinations=destinations(sink)[:1]))
    monkeypatch.setenv("MP_API_SECRET", "wrong-secret-planted-77")
    capsys.readouterr()
    assert main(["forward", "crm", "--destination", "mp", "--seed"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "wsync forward: destination mp: the platform refused its credentials (HTTP 403); "
        "check the keys in its environment variables"
    ]
    assert MP_KEY not in err and "wrong-secret-planted-77" not in err
    # Nothing was acknowledged: with the right secret, everything goes.
    monkeypatch.setenv("MP_API_SECRET", MP_SECRET)
    sink.received.clear()
    assert main(["forward", "crm"]) == 0
    assert set(sink.mparticle_profiles()) == {"cust-00001", "cust-00002", "cust-00003"}


def test_an_unset_secret_variable_names_the_destination_field_and_variable(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_sync(full_sync(make_warehouse(USERS), destinations=destinations(sink)[1:]))
    monkeypatch.delenv("AMP_API_KEY")
    assert main(["forward", "crm"]) == 1
    assert capsys.readouterr().err.strip() == (
        "wsync forward: destination amp: api_key: environment variable AMP_API_KEY is not set"
    )


def amp_forwarded_then_seeded(
    store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> Path:
    """The users synced and forwarded to amp, then all three marked pending for amp again; the warehouse."""
    warehouse = make_warehouse(USERS)
    write_sync(full_sync(warehouse, destinations=destinations(sink)[1:]))
    assert main(["run", "crm"]) == 0
    assert store.pending_profiles("crm", "amp") == 0
    assert store.seed_destination("crm", "amp", "production") == 3
    return warehouse


def test_what_a_failed_forward_or_a_later_delivery_left_stays_pending_until_sent(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    warehouse = amp_forwarded_then_seeded(cli_store, write_sync, make_warehouse, sink)
    read = cli_store.pending_forward("crm", "amp", "production", None, 100)
    cli_store.seed_destination("crm", "amp", "production")  # marked again after the read
    # The delivery commits, its forward fails: the change waits in the outbox.
    warehouse_sql(warehouse, "UPDATE users SET city = 'Lima' WHERE customer_id = 'cust-00002'")
    monkeypatch.delenv("AMP_API_KEY")
    assert main(["run", "crm"]) == 1
    assert store_view(cli_store, "cust-00002")["city"] == "Lima"
    # A forward acknowledging what it read before removes none of what was marked since.
    assert cli_store.acknowledge_forward("crm", "amp", "production", read.rows, []) == 0
    assert cli_store.pending_profiles("crm", "amp") == 3
    monkeypatch.setenv("AMP_API_KEY", AMP_KEY)
    capsys.readouterr()
    assert main(["status", "crm"]) == 0
    assert (
        "  forward     amp (amplitude): 3 profiles pending (`wsync forward crm`)" in capsys.readouterr().out
    )
    assert main(["forward", "crm"]) == 0
    assert sink.amplitude_profiles()["cust-00002"] == {"plan": "free", "city": "Lima"}
    assert cli_store.pending_profiles("crm", "amp") == 0
    assert main(["status", "crm"]) == 0
    assert "  forward     amp (amplitude): up to date" in capsys.readouterr().out


EVENTS = """
CREATE TABLE orders (order_id VARCHAR, customer_id VARCHAR, amount DOUBLE, ordered_at TIMESTAMP);
INSERT INTO orders SELECT 'o' || i, 'cust-0000' || (i % 3 + 1), i * 1.5, now()::TIMESTAMP - INTERVAL (i) HOUR
FROM range(1, 7) AS t(i);
"""


def events_sync(warehouse: Path, sink: HttpSink, rate: int = 100_000) -> dict:
    """A full-mode event sync over `orders`, forwarding to both destinations."""
    return {
        "name": "orders",
        "data_type": "event",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT order_id, customer_id, amount, ordered_at FROM orders"},
        "mapping": [
            {"type": "static", "value": "custom_event", "field": "events.event_type"},
            {"type": "static", "value": "purchase", "field": "events.data.event_name"},
            {"type": "static", "value": "transaction", "field": "events.data.custom_event_type"},
            {"type": "column", "column": "ordered_at", "field": "events.data.timestamp_unixtime_ms"},
            {"type": "column", "column": "order_id", "field": "events.data.source_message_id"},
            {"type": "column", "column": "amount", "field": "events.data.custom_attributes.amount"},
        ],
        "sync": {"mode": "full"},
        "destinations": destinations(sink, rate),
    }


def test_events_are_forwarded_once_with_their_dedup_keys(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    warehouse = make_warehouse(EVENTS)
    write_sync(events_sync(warehouse, sink))
    assert main(["run", "orders"]) == 0
    assert sorted(e["insert_id"] for e in sink.events) == [f"o{i}" for i in range(1, 7)]
    sent = sorted(e["data"]["source_message_id"] for b in sink.batches for e in b.get("events", []))
    assert sent == [f"o{i}" for i in range(1, 7)]
    assert {e["event_properties"]["amount"] for e in sink.events if e["insert_id"] == "o2"} == {3.0}

    warehouse_sql(warehouse, "INSERT INTO orders VALUES ('o9', 'cust-00001', 9.0, now()::TIMESTAMP)")
    assert main(["run", "orders"]) == 0
    assert sorted(e["insert_id"] for e in sink.events) == sorted([f"o{i}" for i in range(1, 7)] + ["o9"])


@pytest.mark.parametrize("backend", STORE_BACKENDS)
def test_a_version_4_store_is_upgraded_in_place_and_keeps_its_events(
    backend: str, make_store: Callable
) -> None:
    store = make_store()
    url = store.url
    store.close()
    # Back to version 4: without the outbox tables and the events' delivery numbers, holding an event.
    version = "PRAGMA user_version" if backend == "sqlite" else "SELECT version FROM wsync_schema"
    to_4 = "PRAGMA user_version = 4" if backend == "sqlite" else "UPDATE wsync_schema SET version = 4"
    store_sql(
        url,
        "DROP TABLE forward_pending",
        "DROP TABLE forwarded",
        "DROP TABLE erasure_pending",
        "ALTER TABLE events DROP COLUMN seq",
        "INSERT INTO profiles VALUES ('p1', 'production', '2024-01-01')",
        "INSERT INTO identities VALUES ('production', 'customer_id', 'cust-00001', 'p1', '2024-01-01', 1)",
        "INSERT INTO events VALUES ('production', 'orders', 'o1', 'p1', 'custom_event', 'purchase', 1, '{}')",
        to_4,
    )
    with open_profile_store(url) as upgraded:
        assert upgraded.seed_destination("orders", "amp", "production") == 1
        [change] = upgraded.pending_forward("orders", "amp", "production", None, 10).changes
    assert [event.event_id for event in change.events] == ["o1"]
    assert change.identities == {"customer_id": "cust-00001"}
    assert store_sql(url, version) == [(SCHEMA_VERSION,)]


def test_a_sink_that_throttles_and_fails_still_gets_everything_once_acknowledged(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    warehouse = make_warehouse(USERS)
    write_sync(full_sync(warehouse, destinations=destinations(sink)))
    sink.plan("/v2/bulkevents", Fault(status=429, retry_after="0"), Fault(status=500), Fault(drop=True))
    sink.plan("/identify", Fault(status=503))
    assert main(["run", "crm"]) == 0
    for customer in ("cust-00001", "cust-00002", "cust-00003"):
        assert sink.mparticle_profiles()[customer] == store_view(cli_store, customer)
        assert sink.amplitude_profiles()[customer] == store_view(cli_store, customer)


def test_opening_the_store_again_in_one_process_keeps_the_wal_another_process_writes(tmp_path: Path) -> None:
    import subprocess
    import sys

    from wsync_dagster.store import open_profile_store

    path = tmp_path / "profiles.sqlite"
    url = f"sqlite:///{path}"
    held = open_profile_store(url)
    writer = (
        "import sys; from wsync_dagster.store import open_profile_store; "
        "s = open_profile_store(sys.argv[1]); s.seed_destination('crm', 'amp', 'production'); s.close()"
    )
    try:
        assert held.pending_profiles("crm", "amp") == 0
        open_profile_store(url).close()  # a second open and close here, as dagster dev's asset runs do
        # Another process writes and closes: it must not take our connection for gone and drop the WAL.
        subprocess.run([sys.executable, "-c", writer, url], check=True)
        assert path.with_name("profiles.sqlite-wal").exists()
        assert held.pending_profiles("crm", "amp") == 0
    finally:
        held.close()


def store_text(url: str) -> bytes:
    """Everything the store holds, as its user could read it: the SQLite file and its WAL, or every table."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        wal = path.with_name(f"{path.name}-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    tables = store_sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return "\n".join(
        str(row) for (table,) in tables for row in store_sql(url, f"SELECT t::text FROM {table} AS t")
    ).encode()


def test_forward_sends_each_platforms_deletion_of_an_erased_person_once_and_the_queue_forgets_them(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
) -> None:
    warehouse = make_warehouse(USERS)
    write_sync(full_sync(warehouse, destinations=destinations(sink)))
    assert main(["run", "crm"]) == 0
    capsys.readouterr()
    assert main(["erase", "--identity", "customer_id=cust-00001"]) == 0
    assert "queued 2 deletion requests for the destinations that received them" in capsys.readouterr().out
    assert cli_store.pending_erasures("crm", "mp") == cli_store.pending_erasures("crm", "amp") == 1
    # Until the platforms took the deletions, the queue holds who to delete.
    assert b"ada@example.com" in store_text(cli_store.url)

    assert main(["forward", "crm"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "crm: forwarded to mp: profiles=0," in out and "crm: forwarded to amp: profiles=0," in out
    assert out.count("deletions_sent=1") == 2
    # The deletion requests count with the forward's requests and bytes.
    for name in ("mp", "amp"):
        assert f"crm: forwarded to {name}: profiles=0, events=0, requests=1, bytes=" in out
    [erasure] = sink.erasures
    assert erasure["subject_request_type"] == "erasure" and erasure["regulation"] == "gdpr"
    assert erasure["subject_identities"] == {
        "controller_customer_id": {"value": "cust-00001", "encoding": "raw"},
        "email": {"value": "ada@example.com", "encoding": "raw"},
    }
    [deletion] = sink.deletions
    assert deletion["user_ids"] == ["cust-00001"]
    assert deletion["requester"] == "wsync crm"
    assert cli_store.pending_erasures("crm", "mp") == cli_store.pending_erasures("crm", "amp") == 0
    assert b"ada@example.com" not in store_text(cli_store.url)
    assert b"cust-00001" not in store_text(cli_store.url)
    # Sent is done: a second forward sends nothing.
    requests = len(sink.received)
    assert main(["forward", "crm"]) == 0
    assert len(sink.received) == requests
    assert (len(sink.erasures), len(sink.deletions)) == (1, 1)
    assert main(["status", "crm"]) == 0
    assert "  forward     amp (amplitude): up to date\n" in capsys.readouterr().out


def test_mparticle_erasures_go_under_the_regulation_the_destination_names(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    warehouse = make_warehouse(USERS)
    [mp, amp] = destinations(sink)
    write_sync(full_sync(warehouse, destinations=[{**mp, "regulation": "ccpa"}, amp]))
    assert main(["run", "crm"]) == 0
    assert main(["erase", "--identity", "customer_id=cust-00003"]) == 0
    assert main(["forward", "crm"]) == 0
    [erasure] = sink.erasures
    assert erasure["regulation"] == "ccpa"
    assert erasure["subject_identities"]["controller_customer_id"]["value"] == "cust-00003"


def test_a_person_a_destination_never_received_gets_no_deletion_there(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    warehouse = make_warehouse(USERS)
    write_sync(full_sync(warehouse, destinations=destinations(sink)[1:]))
    assert main(["run", "crm"]) == 0
    write_sync(full_sync(warehouse, destinations=destinations(sink)))  # mp is added, not seeded
    assert main(["erase", "--identity", "customer_id=cust-00002"]) == 0
    assert main(["forward", "crm"]) == 0
    assert sink.erasures == []
    assert [d["user_ids"] for d in sink.deletions] == [["cust-00002"]]


def test_a_failed_erasure_request_is_retried_and_a_refused_one_is_a_reject_with_mparticles_reason(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
) -> None:
    write_sync(full_sync(make_warehouse(USERS), destinations=destinations(sink)[:1]))
    assert main(["run", "crm"]) == 0
    assert (
        main(["erase", "--identity", "customer_id=cust-00001", "--identity", "customer_id=cust-00002"]) == 0
    )
    refusal = {"code": 400, "message": "Invalid", "errors": [{"message": "planted: identity not valid"}]}
    sink.plan("/v3/requests", Fault(status=500), Fault(), Fault(status=400, answer=refusal))
    capsys.readouterr()
    assert main(["forward", "crm"]) == 0
    assert "deletions_sent=1" in capsys.readouterr().out
    # The 500 was retried and taken; the 400 is final, kept with mParticle's reason.
    [erasure] = sink.erasures
    assert [r.status for r in sink.requests_to("/v3/requests")] == [500, 201, 400]
    assert cli_store.pending_erasures("crm", "mp") == 0
    assert main(["rejects", "crm", "--json"]) == 0
    [reject] = json.loads(capsys.readouterr().out)
    assert (reject["partition"], reject["kind"], reject["reason"]) == (
        "mp",
        "forward",
        "planted: identity not valid",
    )
    erased_first = erasure["subject_identities"]["controller_customer_id"]["value"]
    assert erased_first in ("cust-00001", "cust-00002")


def test_without_amplitudes_secret_key_its_deletions_wait_with_one_warning_and_the_rest_goes(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warehouse = make_warehouse(USERS)
    no_secret = destinations(sink)
    del no_secret[1]["secret_key"]
    write_sync(full_sync(warehouse, destinations=no_secret))
    assert main(["run", "crm"]) == 0
    assert main(["erase", "--identity", "customer_id=cust-00001"]) == 0
    warehouse_sql(warehouse, "UPDATE users SET city = 'Lima' WHERE customer_id = 'cust-00002'")
    assert main(["run", "crm"]) == 0
    assert sink.amplitude_profiles()["cust-00002"]["city"] == "Lima"
    assert len(sink.erasures) == 1 and sink.deletions == []
    capsys.readouterr()
    assert main(["forward", "crm"]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "wsync forward: warning: destination amp: 1 deletion request of erased people stays queued: "
        "secret_key is not set in its sync file entry"
    ]
    assert cli_store.pending_erasures("crm", "amp") == 1
    # Named but unset: the warning names the variable; set, the deletion goes.
    write_sync(full_sync(warehouse, destinations=destinations(sink)))
    monkeypatch.delenv("AMP_SECRET_KEY")
    assert main(["forward", "crm"]) == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "wsync forward: warning: destination amp: 1 deletion request of erased people stays queued: "
        "secret_key: environment variable AMP_SECRET_KEY is not set"
    ]
    assert cli_store.pending_erasures("crm", "amp") == 1
    monkeypatch.setenv("AMP_SECRET_KEY", AMP_SECRET)
    assert main(["forward", "crm"]) == 0
    assert [d["user_ids"] for d in sink.deletions] == [["cust-00001"]]
    assert cli_store.pending_erasures("crm", "amp") == 0
    assert AMP_SECRET not in "".join(capsys.readouterr())


def test_mparticle_erasures_use_the_workspaces_dsr_credentials_when_given(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = http_sink.start(
        MP_KEY, MP_SECRET, AMP_KEY, dsr_key="dsr-key-planted", dsr_secret="dsr-secret-planted"
    )
    sink = next(server)
    try:
        monkeypatch.setenv("MP_API_KEY", MP_KEY)
        monkeypatch.setenv("MP_API_SECRET", MP_SECRET)
        monkeypatch.setenv("MP_DSR_KEY", "dsr-key-planted")
        monkeypatch.setenv("MP_DSR_SECRET", "dsr-secret-planted")
        warehouse = make_warehouse(USERS)
        write_sync(full_sync(warehouse, destinations=destinations(sink)[:1]))
        assert main(["run", "crm"]) == 0
        assert main(["erase", "--identity", "email=bob@example.com"]) == 0
        capsys.readouterr()
        # The Events API's key is not the workspace's: refused, one line, the deletion kept.
        assert main(["forward", "crm"]) == 1
        assert capsys.readouterr().err.strip() == (
            "wsync forward: destination mp: the platform refused its credentials (HTTP 401); "
            "check the keys in its environment variables"
        )
        assert cli_store.pending_erasures("crm", "mp") == 1
        mp = {
            **destinations(sink)[0],
            "dsr_api_key": {"env": "MP_DSR_KEY"},
            "dsr_api_secret": {"env": "MP_DSR_SECRET"},
        }
        write_sync(full_sync(warehouse, destinations=[mp]))
        assert main(["forward", "crm"]) == 0
        assert [e["subject_identities"]["email"]["value"] for e in sink.erasures] == ["bob@example.com"]
        assert cli_store.pending_erasures("crm", "mp") == 0
        assert "dsr-secret-planted" not in "".join(capsys.readouterr())
    finally:
        server.close()
    assert sink.violations == []


def test_a_deletion_sent_but_not_acknowledged_before_a_crash_is_sent_again_as_the_same_request(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    from datetime import datetime

    from wsync_dagster.destinations import mparticle
    from wsync_dagster.destinations.profile_changes import Erasure

    spec = load_sync_file(write_sync(full_sync(make_warehouse(USERS), destinations=destinations(sink)[:1])))
    assert main(["run", "crm"]) == 0
    assert main(["erase", "--identity", "customer_id=cust-00003"]) == 0
    # The send reached mParticle, then the process died before the queue was told.
    [queued] = cli_store.erasure_requests("crm", "mp", 10)
    erasure = Erasure(queued.profile_id, queued.identities, datetime.fromisoformat(queued.requested_at))
    request = mparticle.erasure_request(erasure)
    assert not isinstance(request, mparticle.Reject)
    mparticle.send_erasure(spec.destinations[0].platform("production"), request)
    assert cli_store.pending_erasures("crm", "mp") == 1

    assert main(["forward", "crm"]) == 0
    sent = [json.loads(r.body) for r in sink.requests_to("/v3/requests")]
    assert [r["subject_request_id"] for r in sent] == [request.subject_request_id] * 2
    assert len(sink.erasures) == 1  # mParticle answered "already exists": acknowledged, not lost
    assert cli_store.pending_erasures("crm", "mp") == 0


def test_a_person_erased_while_a_forward_sends_them_gets_the_deletion_queued(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    write_sync(full_sync(make_warehouse(USERS)))
    assert main(["run", "crm"]) == 0
    cli_store.seed_destination("crm", "amp", "production")
    read = cli_store.pending_forward("crm", "amp", "production", None, 100)
    cli_store.erase([("customer_id", "cust-00002")], "production")
    # The slice read before the erasure went out: the platform holds the person now.
    cli_store.acknowledge_forward("crm", "amp", "production", read.rows, [], read.changes)
    assert cli_store.pending_erasures("crm", "amp") == 1
    assert cli_store.pending_profiles("crm", "amp") == 0
    # amp received cust-00003 in that slice; mp, which was never forwarded to, needs no deletion.
    cli_store.erase([("customer_id", "cust-00003")], "production")
    assert cli_store.pending_erasures("crm", "amp") == 2
    assert cli_store.pending_erasures("crm", "mp") == 0


def test_the_forward_asset_shows_its_figures_per_partition_and_alone_forwards_its_partitions_again(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    from dagster import AssetKey, DagsterInstance

    from wsync_dagster.defs import build_definitions, sync_job_name
    from wsync_dagster.runner import run_sync

    spec = load_sync_file(write_sync(full_sync(make_warehouse(USERS), destinations=destinations(sink))))
    instance = DagsterInstance.ephemeral()
    report = run_sync(spec, cli_store, instance)
    amp = AssetKey(["crm", "forward", "amp"])
    [record] = instance.fetch_materializations(amp, limit=5).records
    materialization = record.asset_materialization
    assert materialization is not None and materialization.partition == report.partitions
    figures = {name: entry.value for name, entry in materialization.metadata.items()}
    assert {
        k: figures[k] for k in ("profiles", "events", "requests", "retries", "throttled_waits", "rejects")
    } == {
        "profiles": 3,
        "events": 0,
        "requests": 1,
        "retries": 0,
        "throttled_waits": 0,
        "rejects": 0,
    }
    assert figures["bytes"] > 0 and figures["encode_seconds"] >= 0 and figures["wait_seconds"] > 0
    assert MP_KEY not in repr(figures) and AMP_KEY not in repr(figures)

    # The forward asset alone (a backfill of it): its partition's profiles go out again.
    job = build_definitions([spec]).resolve_job_def(sync_job_name(spec))
    result = job.execute_in_process(instance=instance, partition_key=report.partitions, asset_selection=[amp])
    assert result.success
    assert len(sink.identifies) == 6
    assert sink.amplitude_profiles()["cust-00001"] == {"plan": "pro", "city": "Paris"}
    assert len(sink.batches) == 3  # mParticle's forward was not part of that run


def test_wsync_run_now_forwards_the_window_under_way(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    from datetime import UTC, datetime

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    warehouse = make_warehouse(
        USERS.replace("city VARCHAR", "city VARCHAR, updated_at TIMESTAMP")
        .replace("'Paris')", "'Paris', now())")
        .replace("'Oslo')", "'Oslo', now())")
        .replace("NULL)", "NULL, now())")
    )
    sync = full_sync(warehouse, destinations=destinations(sink)[1:])
    sync["data_model"]["sql"] = "SELECT customer_id, email, plan, city, updated_at FROM users"
    sync["sync"] = {
        "mode": "incremental",
        "iterator": "updated_at",
        "iterator_type": "timestamp",
        "schedule": "interval",
        "frequency": "daily",
        "start": f"{today}T00:00:00Z",
    }
    write_sync(sync)
    assert main(["run", "crm", "--now"]) == 0
    assert sink.amplitude_profiles()["cust-00001"] == {"plan": "pro", "city": "Paris"}
    assert cli_store.pending_profiles("crm", "amp") == 0


def test_no_destination_secret_lands_in_the_store_the_state_folder_or_the_output(
    wsync_env: Path,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    write_sync(full_sync(make_warehouse(USERS), destinations=destinations(sink)))
    assert main(["run", "crm"]) == 0
    assert main(["forward", "crm", "--destination", "mp", "--seed"]) == 0
    printed = "".join(capsys.readouterr())
    state = [path for path in (tmp_path / "state").rglob("*") if path.is_file()]
    assert any(path.name == "profiles.sqlite" for path in state)
    for secret in (MP_KEY, MP_SECRET, AMP_KEY):
        assert secret not in printed
        assert not [path for path in state if secret.encode() in path.read_bytes()]


def test_a_backfill_through_dagster_dev_forwards_every_partition(
    tmp_path: Path, make_warehouse: Callable, write_sync: Callable, sink: HttpSink
) -> None:
    import os
    import subprocess
    import sys

    from dagster import AssetKey, DagsterInstance

    from wsync_dagster.store import open_profile_store
    from wsync_dagster_tests.conftest import user_sync
    from wsync_dagster_tests.test_backfill import BACKFILL_TIMEOUT_S, HISTORY_SQL, PARTITIONS
    from wsync_dagster_tests.test_dagster_dev import LOCATION, dagster_dev, wait_until_loaded

    write_sync(user_sync(make_warehouse(HISTORY_SQL), destinations=destinations(sink)[:1]))
    with dagster_dev(tmp_path) as (client, process):
        wait_until_loaded(client, process, LOCATION)
        done = subprocess.run(
            [sys.executable, "-m", "wsync_dagster.cli", "backfill", "crm_users",
             "--from", PARTITIONS[0], "--to", PARTITIONS[-1], "--url", str(client.base_url)],
            capture_output=True, text=True, timeout=BACKFILL_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    instance = DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    try:
        forwarded = instance.get_materialized_partitions(AssetKey(["crm_users", "forward", "mp"]))
    finally:
        instance.dispose()
    assert forwarded == set(PARTITIONS)
    with open_profile_store(os.environ["WSYNC_PROFILE_STORE"]) as store:
        for customer in ("C001", "C002"):
            profile = store.profile("customer_id", customer)
            assert profile is not None
            assert sink.mparticle_profiles()[customer] == profile["attributes"]
        assert store.pending_profiles("crm_users", "mp") == 0


@pytest.mark.parametrize(
    ("argv", "with_destinations", "code", "message"),
    [
        (["forward", "crm", "--seed"], True, 2, "wsync forward: --seed marks every profile for one destination: name it with --destination"),
        (["forward", "crm", "--destination", "braze"], True, 1, "wsync forward: crm: no destination named 'braze'; its destinations: mp, amp"),
        (["forward", "crm"], False, 1, "wsync forward: crm: has no destinations (the sync file's `destinations` section)"),
    ],
)  # fmt: skip
def test_forward_usage_mistakes_get_one_line(
    argv: list[str], with_destinations: bool, code: int, message: str,
    write_sync: Callable, make_warehouse: Callable, sink: HttpSink, capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    sync = full_sync(
        make_warehouse(USERS), **({"destinations": destinations(sink)} if with_destinations else {})
    )
    write_sync(sync)
    assert main(argv) == code
    assert capsys.readouterr().err.strip() == message
    assert sink.received == []


def test_an_item_the_platform_refuses_is_a_reject_with_its_reason_and_the_rest_goes_through(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    capsys: pytest.CaptureFixture,
) -> None:
    warehouse = make_warehouse(USERS + "ALTER TABLE users ADD COLUMN bad VARCHAR;"
                               "UPDATE users SET bad = 'x' WHERE customer_id = 'cust-00002';")  # fmt: skip
    sync = full_sync(warehouse, destinations=destinations(sink)[:1])
    sync["data_model"]["sql"] = "SELECT customer_id, email, plan, city, bad FROM users"
    write_sync(sync)
    assert main(["run", "crm"]) == 0
    assert set(sink.mparticle_profiles()) == {"cust-00001", "cust-00003"}
    capsys.readouterr()
    assert main(["rejects", "crm", "--json"]) == 0
    [reject] = json.loads(capsys.readouterr().out)
    assert (reject["partition"], reject["kind"]) == ("mp", "forward")
    assert reject["reason"] == 'user attribute "bad" is not allowed'
    profile = cli_store.profile("customer_id", "cust-00002")
    assert profile is not None and reject["row"] == {"item": profile["profile_id"]}


def test_a_queued_deletion_holds_the_identities_until_the_platform_took_it(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    from wsync_dagster.destinations.profile_changes import Reject

    write_sync(full_sync(make_warehouse(USERS), destinations=destinations(sink)))
    assert main(["run", "crm"]) == 0
    cli_store.erase([("customer_id", "cust-00001"), ("customer_id", "cust-00002")], "production")
    requests = cli_store.erasure_requests("crm", "mp", 10)
    assert sorted(request.identities["customer_id"] for request in requests) == ["cust-00001", "cust-00002"]
    assert requests[0].identities.keys() == {"customer_id", "email"}
    done, refused = requests[0].profile_id, requests[1].profile_id
    removed = cli_store.erasures_sent("crm", "mp", "production", [done], [Reject(refused, "planted refusal")])
    assert removed == 2
    assert cli_store.erasure_requests("crm", "mp", 10) == []
    assert cli_store.pending_erasures("crm", "amp") == 2  # each destination's own queue
    [reject] = cli_store.rejects("crm")
    assert (reject["kind"], reject["partition"], reject["reason"]) == ("forward", "mp", "planted refusal")


def test_two_forwards_of_one_destination_at_once_send_each_profile_once(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    import subprocess
    import sys

    amp_forwarded_then_seeded(cli_store, write_sync, make_warehouse, sink)
    sent_by_run = len(sink.identifies)
    # The first forward's request is slow, so the second starts while the first is sending.
    sink.plan("/identify", Fault(delay=2.0))
    forward = [sys.executable, "-m", "wsync_dagster.cli", "forward", "crm"]
    first = subprocess.Popen(forward, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not sink.in_flight and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.in_flight, "the first forward never reached the sink"
    second = subprocess.run(forward, capture_output=True, text=True, timeout=120)
    first_output, _ = first.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 0), first_output + second.stdout + second.stderr
    again = sorted(identify["user_id"] for identify in sink.identifies[sent_by_run:])
    assert again == ["cust-00001", "cust-00002", "cust-00003"]
    assert cli_store.pending_profiles("crm", "amp") == 0


def test_a_forward_waits_for_the_one_under_way_and_gives_up_at_the_lock_timeout(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from wsync_dagster.destinations.forward_lock import forward_lock_name

    amp_forwarded_then_seeded(cli_store, write_sync, make_warehouse, sink)
    sent_by_run = len(sink.identifies)
    holder = open_profile_store(cli_store.url)  # another forward of amp, under way
    try:
        assert holder.try_hold(forward_lock_name("crm", "amp", "production"))
        monkeypatch.setenv("WSYNC_LOCK_TIMEOUT", "1s")
        capsys.readouterr()
        assert main(["forward", "crm"]) == 1
        assert capsys.readouterr().err.strip() == (
            "wsync forward: crm: waited 1s for the forward to amp already under way and gave up "
            "(WSYNC_LOCK_TIMEOUT); nothing was sent"
        )
        assert len(sink.identifies) == sent_by_run
    finally:
        holder.close()  # its end releases the lock, however it ends
    assert main(["forward", "crm"]) == 0
    assert len(sink.identifies) == sent_by_run + 3
