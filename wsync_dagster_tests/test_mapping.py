"""SPEC "Mapping semantics": column / static / ignore, $unmapped, auto-mapped identities, events, rejects."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pytest

from wsync_dagster.data_model import DataModelError, source_tables, windowed_sql
from wsync_dagster.identities import DEVICE_IDENTITIES, USER_IDENTITIES
from wsync_dagster.mapping import BatchMapper, MappingError, build_plan
from wsync_dagster.read_plan import check_mapping
from wsync_dagster.spec import SyncSpec
from wsync_dagster_tests.conftest import USERS_SQL, user_sync


def _spec(tmp_path, **overrides) -> SyncSpec:
    return SyncSpec.model_validate(
        {**user_sync(tmp_path / "w.duckdb", **overrides), "source_file": tmp_path / "s.yaml"}
    )


def _users_batch(**columns) -> pa.RecordBatch:
    base = {
        "customer_id": ["C001", "C002"],
        "email": ["ada@example.com", None],
        "plan": ["pro", None],
        "updated_at": pa.array([datetime(2024, 1, 1, 10), datetime(2024, 1, 2, 11)], pa.timestamp("us")),
    }
    return pa.RecordBatch.from_pydict({**base, **columns})


def _map(spec: SyncSpec, batch: pa.RecordBatch):
    mapped, rejects = BatchMapper(build_plan(spec, batch.schema)).map(batch)
    return mapped.to_pylist(), rejects.to_pylist()


def test_without_mapping_every_other_column_becomes_an_attribute(tmp_path):
    rows, _ = _map(_spec(tmp_path), _users_batch())
    assert rows[0]["identity.customer_id"] == "C001"
    assert rows[0]["identity.email"] == "ada@example.com"
    assert json.loads(rows[0]["attribute.plan"]) == "pro"
    assert "attribute.updated_at" not in rows[0]  # the iterator is never an attribute


@pytest.mark.parametrize("name", [*USER_IDENTITIES, *DEVICE_IDENTITIES])
def test_every_reserved_identity_name_auto_maps_case_insensitively(tmp_path, name):
    batch = pa.RecordBatch.from_pydict(
        {name.upper(): ["id-1"], "updated_at": pa.array([datetime(2024, 1, 1)])}
    )
    plan = build_plan(_spec(tmp_path), batch.schema)
    assert plan.identities == {name: name.upper()}
    assert plan.attributes == {}


def test_customerid_alias_is_customer_id(tmp_path):
    batch = pa.RecordBatch.from_pydict({"CustomerID": ["x"], "updated_at": pa.array([datetime(2024, 1, 1)])})
    assert build_plan(_spec(tmp_path), batch.schema).identities == {"customer_id": "CustomerID"}


def test_column_static_and_ignore_mappings(tmp_path):
    spec = _spec(
        tmp_path,
        mapping=[
            {"type": "column", "column": "email", "field": "user_identities.email"},
            {"type": "column", "column": "plan", "field": "user_attributes.subscription"},
            {"type": "static", "value": "warehouse", "field": "user_attributes.source"},
            {"type": "static", "value": 2, "field": "user_attributes.tier"},
            {"type": "ignore", "column": "notes"},
        ],
    )
    rows, _ = _map(spec, _users_batch(notes=["secret", "x"]))
    assert json.loads(rows[0]["attribute.subscription"]) == "pro"
    assert json.loads(rows[0]["attribute.source"]) == "warehouse"
    assert json.loads(rows[0]["attribute.tier"]) == 2
    assert not any("notes" in key for key in rows[0])


def test_unmapped_maps_every_remaining_column_under_its_own_name(tmp_path):
    spec = _spec(
        tmp_path,
        mapping=[
            {"type": "column", "column": "plan", "field": "user_attributes.subscription"},
            {"type": "column", "column": "$unmapped", "field": "user_attributes.*"},
        ],
    )
    rows, _ = _map(spec, _users_batch(country=["DE", "FR"]))
    attributes = {k for k in rows[0] if k.startswith("attribute.")}
    assert attributes == {"attribute.subscription", "attribute.country"}


def test_a_selected_column_left_unmapped_is_an_error(tmp_path):
    spec = _spec(tmp_path, mapping=[{"type": "column", "column": "plan", "field": "user_attributes.plan"}])
    with pytest.raises(
        MappingError, match=r"s.yaml: mapping: column 'country' is selected by the data model but not mapped"
    ):
        build_plan(spec, _users_batch(country=["DE", "FR"]).schema)


def test_a_mapping_naming_a_missing_column_is_an_error(tmp_path):
    spec = _spec(
        tmp_path,
        mapping=[
            {"type": "column", "column": "planz", "field": "user_attributes.plan"},
            {"type": "column", "column": "$unmapped", "field": "*"},
        ],
    )
    with pytest.raises(
        MappingError,
        match=r"mapping\[0\].column: column 'planz' is not returned by the data model; "
        r"it returns customer_id, email, plan, updated_at",
    ):
        build_plan(spec, _users_batch().schema)


def test_a_missing_iterator_column_is_an_error(tmp_path):
    spec = _spec(tmp_path, sync={"iterator": "modified_at"})
    with pytest.raises(MappingError, match=r"sync.iterator: column 'modified_at' is not returned"):
        build_plan(spec, _users_batch().schema)


def test_iterator_type_must_fit_the_column(tmp_path):
    spec = _spec(tmp_path, sync={"iterator_type": "timestamp_unixtime_ms"})
    with pytest.raises(
        MappingError,
        match=r"timestamp_unixtime_ms needs an integer of epoch milliseconds column, "
        r"but 'updated_at' is timestamp",
    ):
        build_plan(spec, _users_batch().schema)


def test_row_without_any_identity_is_rejected_with_a_reason(tmp_path):
    rows, rejects = _map(_spec(tmp_path), _users_batch(customer_id=[None, " "], email=["a@x", None]))
    assert [r["identity.email"] for r in rows] == ["a@x"]
    assert rejects[0]["reason"] == "no identity: customer_id, email all empty (customer_id is blank)"
    assert json.loads(rejects[0]["row"])["plan"] is None


def test_over_size_and_non_finite_values_are_rejected(tmp_path):
    batch = _users_batch(plan=["x" * 5000, "ok"], score=[1.0, float("nan")])
    rows, rejects = _map(_spec(tmp_path), batch)
    assert rows == []
    assert [r["reason"] for r in rejects] == [
        "attribute plan is longer than 4096 characters",
        "attribute score is NaN or infinite, which is not a number in JSON",
    ]


def test_version_is_the_iterator_in_microseconds(tmp_path):
    rows, _ = _map(_spec(tmp_path), _users_batch())
    assert rows[0]["_version"] == int(datetime(2024, 1, 1, 10, tzinfo=UTC).timestamp()) * 1_000_000


def _event_spec(tmp_path, mapping) -> SyncSpec:
    return _spec(tmp_path, data_type="event", mapping=mapping, sync={"iterator": "event_ts"})


EVENT_MAPPING = [
    {"type": "column", "column": "user", "field": "user_identities.customer_id"},
    {"type": "column", "column": "name", "field": "events.data.event_name"},
    {"type": "column", "column": "event_ts", "field": "events.data.timestamp_unixtime_ms"},
    {"type": "column", "column": "$unmapped", "field": "events.data.custom_attributes.*"},
]


def _events_batch(**columns) -> pa.RecordBatch:
    base = {
        "user": ["C001", "C002"],
        "name": ["purchase", "page_view"],
        "event_ts": pa.array([datetime(2024, 1, 1, 10), datetime(2024, 1, 2)], pa.timestamp("us")),
        "amount": [9.5, None],
    }
    return pa.RecordBatch.from_pydict({**base, **columns})


def test_events_use_the_mparticle_event_shape(tmp_path):
    rows, _ = _map(_event_spec(tmp_path, EVENT_MAPPING), _events_batch())
    data = json.loads(rows[0]["event.data"])
    assert rows[0]["event.type"] == "custom_event"
    assert data["event_name"] == "purchase"
    assert data["custom_event_type"] == "other"
    assert data["custom_attributes"] == {"amount": 9.5}
    assert data["timestamp_unixtime_ms"] == int(datetime(2024, 1, 1, 10, tzinfo=UTC).timestamp() * 1000)


def test_a_date_column_mapped_to_a_timestamp_is_converted_to_utc_milliseconds(tmp_path):
    mapping = [
        *EVENT_MAPPING[:2],
        {"type": "column", "column": "day", "field": "events.data.timestamp_unixtime_ms"},
        {"type": "ignore", "column": "amount"},
    ]
    batch = _events_batch(day=pa.array([datetime(2024, 3, 1).date(), None], pa.date32()))
    rows, _ = _map(_event_spec(tmp_path, mapping), batch)
    assert rows[0]["event.timestamp_ms"] == int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)


def test_event_id_is_the_source_message_id_else_a_stable_row_hash(tmp_path):
    mapping = [
        *EVENT_MAPPING[:3],
        {"type": "column", "column": "mid", "field": "events.data.source_message_id"},
        {"type": "ignore", "column": "amount"},
    ]
    rows, _ = _map(_event_spec(tmp_path, mapping), _events_batch(mid=["m-1", None]))
    again, _ = _map(_event_spec(tmp_path, mapping), _events_batch(mid=["m-1", None]))
    assert rows[0]["event.id"] == "m-1"
    assert len(rows[1]["event.id"]) == 32 and rows[1]["event.id"] == again[1]["event.id"]


def test_event_with_an_unknown_event_type_is_rejected(tmp_path):
    mapping = [*EVENT_MAPPING, {"type": "column", "column": "kind", "field": "events.event_type"}]
    rows, rejects = _map(_event_spec(tmp_path, mapping), _events_batch(kind=["screen_view", "click"]))
    assert [r["event.type"] for r in rows] == ["screen_view"]
    assert rejects[0]["reason"].startswith("event_type 'click' is not one of custom_event")


def test_event_mapping_requires_an_event_name(tmp_path):
    with pytest.raises(MappingError, match=r"events.data.event_name is required"):
        build_plan(_event_spec(tmp_path, [EVENT_MAPPING[0], EVENT_MAPPING[3]]), _events_batch().schema)


def test_data_model_tables_are_found_without_cte_names():
    sql = "WITH recent AS (SELECT * FROM crm.users) SELECT * FROM recent JOIN analytics.events e USING (customer_id)"
    assert [t.path for t in source_tables(sql)] == [("analytics", "events"), ("crm", "users")]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "SELECT 1; SELECT 2",
        "CREATE TABLE x AS SELECT 1",
        "COPY t TO 'x.csv'",
        "ATTACH 'x.db'",
    ],
)
def test_only_one_read_only_select_is_a_data_model(sql):
    with pytest.raises(DataModelError):
        source_tables(sql)


def test_windowed_model_binds_bounds_as_parameters():
    """Run as the warehouse runs it: two parameters, the window's start included and its end excluded."""
    sql = windowed_sql("SELECT a, updated_at FROM t", "updated_at")
    start, end = datetime(2024, 1, 1), datetime(2024, 1, 2)
    with duckdb.connect() as connection:
        connection.execute(
            "CREATE TABLE t AS SELECT * FROM (VALUES (3, TIMESTAMP '2024-01-02 00:00'),"
            " (2, TIMESTAMP '2024-01-01 12:00'), (1, TIMESTAMP '2024-01-01 00:00')) AS v(a, updated_at)"
        )
        rows = connection.execute(sql, [start, end]).fetchall()
        for wrong in ([start], [start, end, end]):
            with pytest.raises(duckdb.InvalidInputException):
                connection.execute(sql, wrong)
    assert rows == [(1, start), (2, datetime(2024, 1, 1, 12))]


def test_check_mapping_probes_the_real_warehouse_columns(tmp_path, make_warehouse):
    spec = _spec(
        tmp_path,
        connection={"type": "duckdb", "path": str(make_warehouse(USERS_SQL))},
        mapping=[{"type": "column", "column": "email", "field": "user_identities.email"}],
    )
    with pytest.raises(
        MappingError, match=r"column 'first_name' is selected by the data model but not mapped"
    ):
        check_mapping(spec)
