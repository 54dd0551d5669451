"""The mapping: warehouse columns → identities, attributes and events, vectorized over Arrow batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster import batches as b
from wsync_dagster.identities import IDENTITY_PRIORITY, identity_for_column
from wsync_dagster.iterators import check_iterator_column, version_sql
from wsync_dagster.spec import CUSTOM_EVENT_TYPES, EVENT_TYPES, UNMAPPED, SyncSpec

MAX_IDENTITY_LENGTH = 255
# Trimmed from both ends of every identity value: every character str.isspace() knows (tab, newline,
# NBSP, the U+2000 spaces, ideographic space, …) and the invisible zero-width space, word joiner and
# byte-order mark that copy-paste and CSV exports leave behind. What is left empty is no identity.
BLANK_CHARACTERS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
    "\u200b\u2060\ufeff"
)
MAX_ATTRIBUTE_LENGTH = 4096
# PostgreSQL text cannot hold a NUL character, and destinations cut strings at one: a row with one is rejected.
NUL_PROBLEM = "holds a NUL character (\\0), which no profile store or destination takes"
# The times an iterator may hold: years 1 to 9999, as Python and the destinations read them. PostgreSQL and
# DuckDB also hold infinity, -infinity, BC years and years past 9999: such rows are read and rejected.
TIME_RANGE_PROBLEM = "a row needs a time from year 1 to 9999 to be read in order"
_RAW = "__row"  # the row's place in the read
MAPPER_MEMORY_LIMIT = "128MB"


class MappingError(ValueError):
    """A mapping that does not fit the data model's columns."""


@dataclass(frozen=True)
class Source:
    """Where a mapped value comes from: a column, or a static value."""

    column: str | None = None
    value: bool | int | float | str | None = None


@dataclass(frozen=True)
class MappingPlan:
    """Every target of a sync and its source, checked against the data model's real columns."""

    data_type: str
    schema: pa.Schema
    identities: dict[str, str]
    attributes: dict[str, Source]
    event_fields: dict[str, Source] = field(default_factory=dict)
    custom_attributes: dict[str, Source] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    iterator: str | None = None
    iterator_type: str | None = None
    full_mode: bool = False
    # Rows carry a row key and a fingerprint, so the store skips those it holds already: every full-mode
    # row, and an incremental sync's user rows, which the lookback reads again.
    fingerprinted: bool = False
    delete_column: str | None = None  # cdc: the column that flags a delete (see batches.DELETE)


def build_plan(spec: SyncSpec, schema: pa.Schema) -> MappingPlan:
    """Resolve the mapping against the model's columns; every problem is reported, with file and field."""
    if clash := _case_clash(schema.names):
        raise MappingError(
            f"{spec.source_file}: data_model.sql: the columns {' and '.join(clash)} differ only in case, which "
            f"wsync cannot tell apart; rename one in the data model (e.g. {_ident(clash[-1])} AS "
            f"{clash[-1].lower()}_2)"
        )
    problems: list[str] = []
    by_name = {name: name for name in schema.names}
    by_lower = {name.lower(): name for name in schema.names}

    def column_of(name: str, where: str) -> str | None:
        found = by_name.get(name) or by_lower.get(name.lower())
        if found is None:
            problems.append(
                f"{where}: column '{name}' is not returned by the data model; "
                f"it returns {', '.join(schema.names)}"
            )
        return found

    identities: dict[str, str] = {}
    attributes: dict[str, Source] = {}
    event_fields: dict[str, Source] = {}
    custom: dict[str, Source] = {}
    named: set[str] = set()
    ignored: list[str] = []
    unmapped_field: str | None = None

    identity_origin: dict[str, str] = {}

    def assign(target: str, source: Source, where: str) -> None:
        if target.startswith("user_identities."):
            kind = target.removeprefix("user_identities.")
            if kind in identities:
                problems.append(f"{where}: identity {kind} is already mapped from '{identities[kind]}'")
            identities[kind] = source.column  # type: ignore[assignment]
            identity_origin[kind] = f"{where}.column: column '{source.column}'"
            return
        group, name = (
            (attributes, target.removeprefix("user_attributes."))
            if target.startswith("user_attributes.")
            else (custom, target.removeprefix("events.data.custom_attributes."))
            if target.startswith("events.data.custom_attributes.")
            else (event_fields, target.rsplit(".", 1)[1])
        )
        if name in group:
            problems.append(f"{where}: field {target} is mapped twice")
        group[name] = source

    for index, entry in enumerate(spec.mapping or []):
        where = f"mapping[{index}]"
        if entry.type == "object":
            continue
        if entry.type == "ignore":
            if found := column_of(entry.column, f"{where}.column"):
                named.add(found)
                ignored.append(found)
            continue
        if entry.type == "column" and entry.column == UNMAPPED:
            unmapped_field = entry.field
            continue
        if entry.type == "column":
            found = column_of(entry.column, f"{where}.column")
            if found is None:
                continue
            named.add(found)
            assign(entry.field, Source(column=found), where)
        else:
            assign(entry.field, Source(value=entry.value), where)

    for name in schema.names:
        kind = identity_for_column(name)
        if name in named or kind is None:
            continue
        if kind in identities:
            problems.append(
                f"mapping: column '{name}' is the reserved identity {kind}, which is already mapped "
                f"from '{identities[kind]}'; add {{type: ignore, column: {name}}}"
            )
            continue
        identities[kind] = name
        identity_origin[kind] = f"mapping: column '{name}' (a reserved identity name)"
        named.add(name)

    iterator = None
    if spec.sync.mode == "incremental":
        if problem := check_iterator_column(spec.sync, schema):
            problems.append(problem)
        else:
            iterator = spec.sync.iterator
            named.add(iterator)  # type: ignore[arg-type]

    remaining = [name for name in schema.names if name not in named]
    if spec.mapping is None:
        target_group = attributes
    elif unmapped_field is not None:
        to_custom = unmapped_field == "events.data.custom_attributes.*" or (
            unmapped_field == "*" and spec.data_type == "event"
        )
        target_group = custom if to_custom else attributes
    else:
        target_group = None
        problems.extend(
            f"mapping: column '{name}' is selected by the data model but not mapped; map it, ignore it "
            f"({{type: ignore, column: {name}}}) or add {{type: column, column: $unmapped, field: ...}}"
            for name in remaining
        )
    if target_group is not None:
        for name in remaining:
            if name in target_group:
                problems.append(
                    f"mapping: column '{name}' falls under $unmapped but {name} is already mapped"
                )
            target_group[name] = Source(column=name)

    if not identities:
        problems.append(
            "mapping: no identity; map a column to user_identities.<type> or select a reserved "
            "identity column (customer_id, email, …)"
        )
    if (email := identities.get("email")) and not _is_text(email_type := schema.field(email).type):
        problems.append(
            f"{identity_origin['email']} is {email_type}, but an email identity takes a text column; "
            "cast it to text in the data model or map it to another identity (customer_id, other, …)"
        )
    if spec.data_type == "event" and "event_name" not in event_fields:
        problems.append("mapping: events.data.event_name is required for events")
    if spec.data_type == "event" and "timestamp_unixtime_ms" not in event_fields:
        problems.append(
            "mapping: events.data.timestamp_unixtime_ms is required for events (every event needs its "
            "time); map a TIMESTAMP, DATE or epoch-milliseconds column to it"
        )
    if problems:
        raise MappingError("\n".join(f"{spec.source_file}: {p}" for p in problems))
    return MappingPlan(
        data_type=spec.data_type,
        schema=schema,
        identities={kind: identities[kind] for kind in IDENTITY_PRIORITY if kind in identities},
        attributes=attributes,
        event_fields=event_fields,
        custom_attributes=custom,
        ignored=tuple(ignored),
        iterator=iterator,
        iterator_type=spec.sync.iterator_type if iterator else None,
        full_mode=spec.sync.mode == "full",
        fingerprinted=spec.sync.mode == "full"
        or (spec.sync.mode == "incremental" and spec.data_type == "user"),
    )


def identity_sql(column: str) -> str:
    """DuckDB SQL: the identity value of the source row `src`'s column, trimmed; NULL when empty."""
    value = f"CAST(src.{_ident(column)} AS VARCHAR)"
    blanks = _literal(BLANK_CHARACTERS)
    # trim() with a character set is several times slower than a look at both ends: only
    # values that start or end with a blank character pay for it.
    trimmed = (
        f"CASE WHEN contains({blanks}, left({value}, 1)) OR contains({blanks}, right({value}, 1)) "
        f"THEN trim({value}, {blanks}) ELSE {value} END"
    )
    return f"NULLIF({trimmed}, '')"


def _time_range_problem(column: str) -> str:
    """DuckDB SQL: what is wrong with a time or date outside years 1 to 9999 (infinity, BC, …), else NULL."""
    return (
        f"CASE WHEN NOT isfinite({column}) THEN CAST({column} AS VARCHAR) "
        f"WHEN year({column}) < 1 THEN 'before year 1' WHEN year({column}) > 9999 THEN 'after year 9999' END"
    )


def _case_clash(names: list[str]) -> tuple[str, ...]:
    """The first set of column names that differ only in case (the mapping runs in DuckDB, which folds case)."""
    seen: dict[str, list[str]] = {}
    for name in names:
        seen.setdefault(name.lower(), []).append(name)
    return next((tuple(group) for group in seen.values() if len(group) > 1), ())


def _may_hold_text(column_type: pa.DataType) -> bool:
    """False for types whose values hold no characters (numbers, booleans, times): no NUL to look for."""
    return not (
        pa.types.is_integer(column_type)
        or pa.types.is_floating(column_type)
        or pa.types.is_decimal(column_type)
        or pa.types.is_boolean(column_type)
        or pa.types.is_temporal(column_type)
        or pa.types.is_null(column_type)
    )


def _is_text(column_type: pa.DataType) -> bool:
    """True for string columns, dictionary-encoded ones (DuckDB's ENUM) and all-NULL ones."""
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    return (
        pa.types.is_string(column_type)
        or pa.types.is_large_string(column_type)
        or pa.types.is_string_view(column_type)
        or pa.types.is_null(column_type)
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_object(pairs: dict[str, str]) -> str:
    """DuckDB SQL for a JSON object of name → SQL expression."""
    return "json_object(" + ", ".join(f"{_literal(name)}, {expr}" for name, expr in pairs.items()) + ")"


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


class BatchMapper:
    """Maps warehouse record batches into mapped batches and rejects, in one DuckDB query per batch."""

    def __init__(self, plan: MappingPlan, *, run_version: int = 0):
        self.plan = plan
        # One batch at a time: what it holds beyond that would be the buffer cache it keeps.
        self._connection = duckdb.connect(config={"memory_limit": MAPPER_MEMORY_LIMIT})
        self._connection.execute("SET TimeZone = 'UTC'")
        self._sql = self._build_sql(run_version)
        self._next_row = 0

    def map(self, batch: pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
        """(mapped rows, rejected rows with their reason) of one warehouse batch."""
        if _RAW not in batch.schema.names:
            rows = pa.array(range(self._next_row, self._next_row + batch.num_rows), pa.int64())
            batch = batch.append_column(_RAW, rows)
        # Else the rows come numbered by their place in the whole read (unchanged_rows.py left some out).
        self._next_row += batch.num_rows
        self._connection.register("source_batch", pa.Table.from_batches([batch]))
        try:
            result = self._connection.sql(self._sql).to_arrow_table()
        finally:
            self._connection.unregister("source_batch")
        rejected = pc.is_valid(result["_reject"])
        mapped = result.filter(pc.invert(rejected)).drop_columns(["_reject", "_raw"])
        rejects = (
            result.filter(rejected)
            .select([b.ROW, b.VERSION, "_reject", "_raw"])
            .rename_columns([b.ROW, b.VERSION, "reason", "row"])
        )
        return mapped, rejects.cast(b.REJECT_SCHEMA)

    def close(self) -> None:
        """Close its DuckDB, so what it cached is freed before a delivery in the same process."""
        self._connection.close()

    def empty(self) -> pa.Table:
        """A mapped table with no rows, for the schema."""
        return self.map(pa.RecordBatch.from_pylist([], schema=self.plan.schema))[0]

    def _row_json(self) -> str:
        """The warehouse row as a JSON object: kept with a reject, and hashed into an event id."""
        return _json_object({name: f"src.{_ident(name)}" for name in self.plan.schema.names})

    def _value(self, source: Source) -> str:
        return f"src.{_ident(source.column)}" if source.column is not None else _literal(source.value)

    def row_sql(self, run_version: int) -> str:
        """The mapping of `source_batch` (numbered in its column __row), each row with its source row as a
        struct, `__source`, and in no particular order: for a query over the whole model."""
        return self._build_sql(run_version, keep_source=True)

    def _build_sql(self, run_version: int, *, keep_source: bool = False) -> str:
        plan = self.plan
        select: list[str] = [f"src.{_ident(_RAW)} AS {_ident(b.ROW)}"]
        if keep_source:
            select.append("src AS __source")
        if plan.iterator:
            column_type = plan.schema.field(plan.iterator).type
            version = version_sql(plan.iterator_type, f"src.{_ident(plan.iterator)}", column_type)  # type: ignore[arg-type]
            select.append(f"CAST({version} AS BIGINT) AS {_ident(b.VERSION)}")
            if plan.iterator_type in ("timestamp", "date"):
                select.append(f"{_time_range_problem(f'src.{_ident(plan.iterator)}')} AS _iterator_range")
        else:
            select.append(f"CAST({int(run_version)} AS BIGINT) AS {_ident(b.VERSION)}")
        for index, (kind, column) in enumerate(plan.identities.items()):
            select.append(f"{identity_sql(column)} AS {_ident(b.IDENTITY_PREFIX + kind)}")
            select.append(f"CAST(src.{_ident(column)} AS VARCHAR) IS NOT NULL AS _present_{index}")
        for name, source in plan.attributes.items():
            select.append(
                f"CAST(to_json({self._value(source)}) AS VARCHAR) AS {_ident(b.ATTRIBUTE_PREFIX + name)}"
            )
        if plan.delete_column:
            select.append(f"COALESCE(src.{_ident(plan.delete_column)}, FALSE) AS {_ident(b.DELETE)}")
        select.append(f"CAST({self._row_json()} AS VARCHAR) AS _raw_json")
        checks = {**self._float_checks(), **self._nul_checks()}
        if plan.data_type == "event":
            select.extend(self._event_select())
        inner = ", ".join(select + [f"{expr} AS {_ident(name)}" for name, expr in checks.items()])

        mapped = [b.ROW, b.VERSION, *(b.IDENTITY_PREFIX + k for k in plan.identities)]
        mapped += [b.ATTRIBUTE_PREFIX + n for n in plan.attributes]
        identity_json = _json_object({k: _ident(b.IDENTITY_PREFIX + k) for k in plan.identities})
        outer = [_ident(c) for c in mapped] + (["__source"] if keep_source else [])
        outer.append(f"CAST({identity_json} AS VARCHAR) AS {_ident(b.IDENTITY_KEY)}")
        if plan.delete_column:
            outer.append(_ident(b.DELETE))
        if plan.data_type == "event":
            outer += [
                _ident(c)
                for c in (b.EVENT_ID, b.EVENT_TYPE, b.EVENT_NAME, b.EVENT_TIMESTAMP_MS, b.EVENT_DATA)
            ]
        if plan.fingerprinted:
            key = _ident(b.EVENT_ID) if plan.data_type == "event" else identity_json
            # A full-mode row's version is its run's; an incremental row's is its own, part of what it says.
            versioned = [] if plan.full_mode else [f"CAST({_ident(b.VERSION)} AS VARCHAR)"]
            content = ", ".join(
                versioned
                + [
                    _ident(c)
                    for c in [
                        *mapped[2:],
                        *([b.EVENT_DATA, b.EVENT_TYPE] if plan.data_type == "event" else []),
                    ]
                ]
            )
            # The row key is a stored key, stable forever (md5). The fingerprint only says "unchanged": DuckDB's
            # 64-bit hash of the values, a fifth of an md5 of their JSON's cost; a DuckDB whose hash differs
            # makes every row look changed once, and applying an unchanged row changes nothing.
            fingerprint = f"hash({content})"
            outer.append(f"md5(CAST({key} AS VARCHAR)) AS {_ident(b.ROW_KEY)}")
            outer.append(f"format('{{:016x}}', {fingerprint}) AS {_ident(b.FINGERPRINT)}")
            if keep_source:
                # As a number, as the store's are read to compare (ProfileStore.fingerprints).
                outer.append(f"{fingerprint} AS {_ident(b.FINGERPRINT + '_64')}")
        reason = self._reject_reason(checks)
        outer.append(f"{reason} AS _reject")
        outer.append(f"CASE WHEN ({reason}) IS NOT NULL THEN _raw_json END AS _raw")
        order = "" if keep_source else f" ORDER BY {_ident(b.ROW)}"
        return f"SELECT {', '.join(outer)} FROM (SELECT {inner} FROM source_batch AS src){order}"

    def _float_checks(self) -> dict[str, str]:
        """Per float column mapped to an attribute, a flag for NaN/infinity, which JSON cannot hold."""
        checks = {}
        sources = {**self.plan.attributes, **self.plan.custom_attributes}
        for name, source in sources.items():
            if source.column is not None and pa.types.is_floating(self.plan.schema.field(source.column).type):
                column = f"src.{_ident(source.column)}"
                checks[f"_nonfinite_{len(checks)}"] = (
                    f"CASE WHEN isnan({column}) OR isinf({column}) THEN {_literal(name)} END"
                )
        return checks

    def _nul_checks(self) -> dict[str, str]:
        """Per attribute column that may hold text, its name when the row's value holds a NUL character."""
        checks = {}
        sources = {**self.plan.attributes, **self.plan.custom_attributes}
        for name, source in sources.items():
            if source.column is not None and _may_hold_text(self.plan.schema.field(source.column).type):
                value = f"CAST(src.{_ident(source.column)} AS VARCHAR)"
                checks[f"_nul_{len(checks)}"] = (
                    f"CASE WHEN contains({value}, chr(0)) THEN {_literal(name)} END"
                )
        return checks

    def _event_select(self) -> list[str]:
        fields = self.plan.event_fields
        event_type = self._value(fields.get("event_type", Source(value="custom_event")))
        custom_event_type = self._value(fields.get("custom_event_type", Source(value="other")))
        name = self._value(fields["event_name"])
        timestamp_source = fields["timestamp_unixtime_ms"]
        timestamp = self._timestamp_ms(timestamp_source)
        message_id = fields.get("source_message_id")
        row_hash = f"md5(CAST({self._row_json()} AS VARCHAR))"
        event_id = (
            f"COALESCE(NULLIF(CAST({self._value(message_id)} AS VARCHAR), ''), {row_hash})"
            if message_id
            else row_hash
        )
        custom = _json_object({k: self._value(v) for k, v in self.plan.custom_attributes.items()})
        data = (
            f"json_object('event_name', CAST({name} AS VARCHAR), 'custom_event_type', "
            f"CAST({custom_event_type} AS VARCHAR), 'timestamp_unixtime_ms', {timestamp}, "
            f"'source_message_id', {event_id}, 'custom_attributes', {custom})"
        )
        return [
            f"{event_id} AS {_ident(b.EVENT_ID)}",
            f"CAST({event_type} AS VARCHAR) AS {_ident(b.EVENT_TYPE)}",
            f"NULLIF(CAST({name} AS VARCHAR), '') AS {_ident(b.EVENT_NAME)}",
            f"{timestamp} AS {_ident(b.EVENT_TIMESTAMP_MS)}",
            f"CAST({data} AS VARCHAR) AS {_ident(b.EVENT_DATA)}",
            f"CAST({custom_event_type} AS VARCHAR) AS _custom_event_type",
            f"{self._value(timestamp_source)} IS NOT NULL AND {timestamp} IS NULL AS _bad_timestamp",
        ]

    def _timestamp_ms(self, source: Source) -> str:
        """A column or value as UTC epoch milliseconds: times and dates converted, numbers taken as ms."""
        value = self._value(source)
        if source.column is None:
            return (
                f"CAST({value} AS BIGINT)"
                if isinstance(source.value, int | float)
                else (f"epoch_ms(TRY_CAST({value} AS TIMESTAMPTZ))")
            )
        column_type = self.plan.schema.field(source.column).type
        if pa.types.is_timestamp(column_type):
            return f"epoch_ms({value})"
        if pa.types.is_date(column_type):
            return f"epoch_ms(CAST({value} AS TIMESTAMP))"
        if pa.types.is_integer(column_type) or pa.types.is_floating(column_type):
            return f"CAST({value} AS BIGINT)"
        return f"epoch_ms(TRY_CAST({value} AS TIMESTAMPTZ))"

    def _reject_reason(self, checks: dict[str, str]) -> str:
        plan = self.plan
        kinds = ", ".join(plan.identities)
        present = [f"_present_{i}" for i in range(len(plan.identities))]
        # When every identity is empty, those present in the warehouse were blank: name them.
        blank = ", ".join(
            f"CASE WHEN {present[i]} THEN {_literal(kind)} END" for i, kind in enumerate(plan.identities)
        )
        blank_count = " + ".join(f"CAST({p} AS INTEGER)" for p in present)
        detail = (
            f"CASE {blank_count} WHEN 0 THEN '' WHEN 1 THEN ' (' || concat_ws(', ', {blank}) || ' is blank)' "
            f"ELSE ' (' || concat_ws(', ', {blank}) || ' are blank)' END"
        )
        ranged = plan.iterator and plan.iterator_type in ("timestamp", "date")
        cases = (
            [
                f"WHEN _iterator_range IS NOT NULL THEN 'iterator ' || {_literal(plan.iterator)} || ' is ' || "
                f"_iterator_range || {_literal(': ' + TIME_RANGE_PROBLEM)}"
            ]
            if ranged
            else []
        )
        cases += (
            [
                f"WHEN {_ident(b.VERSION)} IS NULL THEN {_literal(f'iterator {plan.iterator} is empty: a row needs one to be read in order')}"
            ]
            if plan.iterator
            else []
        )
        cases += [
            f"WHEN {' AND '.join(f'{_ident(b.IDENTITY_PREFIX + k)} IS NULL' for k in plan.identities)} "
            f"THEN 'no identity: {kinds} all empty' || {detail}"
        ]
        cases += [
            f"WHEN length({_ident(b.IDENTITY_PREFIX + k)}) > {MAX_IDENTITY_LENGTH} "
            f"THEN 'identity {k} is longer than {MAX_IDENTITY_LENGTH} characters'"
            for k in plan.identities
        ]
        cases += [
            f"WHEN contains({_ident(b.IDENTITY_PREFIX + k)}, chr(0)) THEN {_literal(f'identity {k} {NUL_PROBLEM}')}"
            for k in plan.identities
        ]
        cases += [
            f"WHEN {_ident(name)} IS NOT NULL THEN 'attribute ' || {_ident(name)} || "
            + (
                _literal(f" {NUL_PROBLEM}")
                if name.startswith("_nul_")
                else "' is NaN or infinite, which is not a number in JSON'"
            )
            for name in checks
        ]
        cases += [
            f"WHEN length({_ident(b.ATTRIBUTE_PREFIX + n)}) > {MAX_ATTRIBUTE_LENGTH} "
            f"THEN {_literal(f'attribute {n} is longer than {MAX_ATTRIBUTE_LENGTH} characters')}"
            for n in plan.attributes
        ]
        if plan.data_type == "event":
            allowed = ", ".join(_literal(t) for t in EVENT_TYPES)
            allowed_custom = ", ".join(_literal(t) for t in CUSTOM_EVENT_TYPES)
            cases += [
                f"WHEN {_ident(b.EVENT_TYPE)} IS NULL OR {_ident(b.EVENT_TYPE)} NOT IN ({allowed}) "
                f"THEN 'event_type ' || COALESCE('''' || {_ident(b.EVENT_TYPE)} || '''', 'NULL') || "
                f"' is not one of {', '.join(EVENT_TYPES)}'",
                f"WHEN {_ident(b.EVENT_NAME)} IS NULL THEN 'event_name is empty'",
                f"WHEN contains({_ident(b.EVENT_NAME)}, chr(0)) THEN {_literal(f'event_name {NUL_PROBLEM}')}",
                f"WHEN contains({_ident(b.EVENT_ID)}, chr(0)) THEN "
                f"{_literal(f'source_message_id {NUL_PROBLEM}')}",
                f"WHEN {_ident(b.EVENT_TYPE)} = 'custom_event' AND (_custom_event_type IS NULL OR "
                f"_custom_event_type NOT IN ({allowed_custom})) THEN 'custom_event_type ' || "
                f"COALESCE('''' || _custom_event_type || '''', 'NULL') || ' is not one of "
                f"{', '.join(CUSTOM_EVENT_TYPES)}'",
                "WHEN _bad_timestamp THEN 'timestamp_unixtime_ms cannot be read as a time'",
                f"WHEN {_ident(b.EVENT_TIMESTAMP_MS)} IS NULL THEN 'timestamp_unixtime_ms is empty'",
                f"WHEN length({_ident(b.EVENT_DATA)}) > {MAX_ATTRIBUTE_LENGTH * 8} THEN "
                f"'event data is larger than {MAX_ATTRIBUTE_LENGTH * 8} characters'",
            ]
        # A reason may quote a value (an unknown event_type): a NUL in it is written out, never stored.
        return "replace(CASE " + " ".join(cases) + " END, chr(0), '\\0')"
