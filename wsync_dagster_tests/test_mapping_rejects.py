"""Bad rows and bad mappings, through the command line: blank identities, events without a time, e-mails from numbers."""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pytest

from wsync_dagster.cli import main
from wsync_dagster.mapping import BatchMapper, build_plan
from wsync_dagster.spec import SyncSpec
from wsync_dagster_tests.conftest import user_sync

BLANK_EMAILS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (
    customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP
);
INSERT INTO crm.users VALUES
    ('C001', chr(9), 'Ada', 'pro', TIMESTAMP '2024-01-01 10:00:00'),
    ('C002', chr(9), 'Bob', 'free', TIMESTAMP '2024-01-01 11:00:00'),
    (NULL, chr(10), 'Cy', 'pro', TIMESTAMP '2024-01-01 12:00:00'),
    (NULL, chr(10), 'Dee', 'free', TIMESTAMP '2024-01-01 13:00:00'),
    (chr(12288), chr(160) || chr(8195), 'Eve', 'pro', TIMESTAMP '2024-01-01 14:00:00'),
    ('C006', chr(8195) || 'fay@example.com' || chr(160) || chr(10), 'Fay', 'pro', TIMESTAMP '2024-01-01 15:00:00');
"""


def _profile(capsys, identity: str) -> dict | None:
    capsys.readouterr()
    if main(["profile", "--identity", identity, "--json"]) != 0:
        return None
    return json.loads(capsys.readouterr().out)


def _rejects(capsys, sync: str) -> list[dict]:
    capsys.readouterr()
    assert main(["rejects", sync, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_emails_that_are_only_whitespace_never_merge_different_people(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(BLANK_EMAILS_SQL)))
    assert (
        main(["run", "crm_users", "--partition", "2024-01-01"]) == 3
    )  # delivered; the reject-rate check fails
    ada, bob = _profile(capsys, "customer_id=C001"), _profile(capsys, "customer_id=C002")
    assert (ada["identities"], ada["attributes"]["first_name"]) == ({"customer_id": "C001"}, "Ada")
    assert (bob["identities"], bob["attributes"]["first_name"]) == ({"customer_id": "C002"}, "Bob")
    assert _profile(capsys, "email=\t") is None
    assert _profile(capsys, "email=\n") is None


def test_rows_whose_identities_are_all_blank_are_rejected_naming_them(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(BLANK_EMAILS_SQL)))
    assert (
        main(["run", "crm_users", "--partition", "2024-01-01"]) == 3
    )  # delivered; the reject-rate check fails
    assert "rows_rejected=3" in capsys.readouterr().out
    rejects = {reject["row"]["first_name"]: reject["reason"] for reject in _rejects(capsys, "crm_users")}
    assert rejects == {
        "Cy": "no identity: customer_id, email all empty (email is blank)",
        "Dee": "no identity: customer_id, email all empty (email is blank)",
        "Eve": "no identity: customer_id, email all empty (customer_id, email are blank)",
    }


def test_identities_are_trimmed_of_unicode_whitespace(make_warehouse, write_sync, capsys):
    write_sync(user_sync(make_warehouse(BLANK_EMAILS_SQL)))
    assert (
        main(["run", "crm_users", "--partition", "2024-01-01"]) == 3
    )  # delivered; the reject-rate check fails
    fay = _profile(capsys, "email=fay@example.com")
    assert fay["identities"] == {"customer_id": "C006", "email": "fay@example.com"}


def test_every_unicode_whitespace_and_zero_width_character_is_trimmed(tmp_path):
    blanks = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()] + ["\u200b", "\u2060", "\ufeff"]
    spec = SyncSpec.model_validate(
        {
            **user_sync(tmp_path / "w.duckdb", data_model={"sql": "SELECT email FROM crm.users"}),
            "sync": {"mode": "full"},
            "source_file": tmp_path / "s.yaml",
        }
    )
    emails = [f"{blank}a@x{blank}{blank}" for blank in blanks] + [blank * 2 for blank in blanks]
    batch = pa.RecordBatch.from_pydict({"email": emails})
    mapped, rejects = BatchMapper(build_plan(spec, batch.schema)).map(batch)
    assert mapped.column("identity.email").to_pylist() == ["a@x"] * len(blanks)
    assert rejects.column("reason").to_pylist() == ["no identity: email all empty (email is blank)"] * len(
        blanks
    )


EVENTS_SQL = """
CREATE SCHEMA analytics;
CREATE TABLE analytics.events (
    event_id VARCHAR, customer_id VARCHAR, event_name VARCHAR, occurred_at TIMESTAMP
);
INSERT INTO analytics.events VALUES
    ('e1', 'C001', 'purchase', TIMESTAMP '2024-01-01 10:00:00'),
    ('e2', 'C001', 'page_view', NULL);
"""


def _event_sync(warehouse, mapping: list[dict]) -> dict:
    return {
        "name": "events",
        "data_type": "event",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT event_id, customer_id, event_name, occurred_at FROM analytics.events"},
        "mapping": mapping,
        "sync": {"mode": "full"},
    }


EVENT_MAPPING = [
    {"type": "column", "column": "event_id", "field": "events.data.source_message_id"},
    {"type": "column", "column": "event_name", "field": "events.data.event_name"},
    {"type": "column", "column": "occurred_at", "field": "events.data.timestamp_unixtime_ms"},
]


def test_an_event_without_a_timestamp_is_rejected_and_the_others_are_stored(
    make_warehouse, write_sync, capsys
):
    write_sync(_event_sync(make_warehouse(EVENTS_SQL), EVENT_MAPPING))
    assert main(["run", "events"]) == 3  # delivered; the reject-rate check fails
    [reject] = _rejects(capsys, "events")
    assert (reject["reason"], reject["row"]["event_id"]) == ("timestamp_unixtime_ms is empty", "e2")
    profile = _profile(capsys, "customer_id=C001")
    assert [event["event_name"] for event in profile["events"]] == ["purchase"]


def test_an_event_sync_without_a_timestamp_mapping_fails_validation(
    make_warehouse, write_sync, tmp_path, capsys
):
    path = write_sync(
        _event_sync(
            make_warehouse(EVENTS_SQL),
            [*EVENT_MAPPING[:2], {"type": "ignore", "column": "occurred_at"}],
        )
    )
    assert main(["validate"]) == 1
    assert (
        f"{path}: mapping: events.data.timestamp_unixtime_ms is required for events"
        in capsys.readouterr().err
    )
    assert main(["run", "events"]) == 1
    assert "events.data.timestamp_unixtime_ms is required" in capsys.readouterr().err
    assert _profile(capsys, "customer_id=C001") is None


NUMBERS_SQL = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (customer_id BIGINT, user_no BIGINT, mobile_number BIGINT, other DECIMAL(12, 0));
INSERT INTO crm.users VALUES (1001, 42, 15550100, 7);
"""


@pytest.mark.parametrize(
    ("mapping", "where"),
    [
        (
            [
                {"type": "column", "column": "user_no", "field": "user_identities.email"},
                {"type": "column", "column": "$unmapped", "field": "user_attributes.*"},
            ],
            "mapping[0].column: column 'user_no'",
        ),
        (None, "mapping: column 'email' (a reserved identity name)"),
    ],
    ids=["mapped", "reserved-name"],
)
def test_validate_refuses_a_numeric_column_as_an_email_identity(
    make_warehouse, write_sync, capsys, mapping, where
):
    sql = "SELECT customer_id, mobile_number, other, " + ("user_no" if mapping else "user_no AS email")
    path = write_sync(
        {
            "name": "numbers",
            "data_type": "user",
            "connection": {"type": "duckdb", "path": str(make_warehouse(NUMBERS_SQL))},
            "data_model": {"sql": f"{sql} FROM crm.users"},
            "sync": {"mode": "full"},
            **({"mapping": mapping} if mapping else {}),
        }
    )
    assert main(["validate"]) == 1
    # Numeric customer ids, phone numbers and other ids stay allowed: the e-mail is the one problem.
    assert capsys.readouterr().err.splitlines() == [
        f"✗ numbers: {path}: {where} is int64, but an email identity takes a text column; "
        "cast it to text in the data model or map it to another identity (customer_id, other, …)"
    ]
