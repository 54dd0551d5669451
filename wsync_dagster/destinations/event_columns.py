"""Events as Arrow columns, and their JSON for a whole slice at once: Python work per request, not per event.

A column batch of events becomes one JSON text per event through Arrow compute (literal pieces joined around
escaped string columns and numbers cast to text); the few rows Arrow cannot write the platform's way (a
string to escape, an attribute value that is not a plain string, number or boolean, further `data` keys) are
written by the platform's own Python encoder instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster.destinations.json_encoding import compact_json, json_string
from wsync_dagster.destinations.profile_changes import Event, ProfileChange

EVENT_SCHEMA = pa.schema(
    [
        ("profile_id", pa.string()),
        ("event_id", pa.string()),  # source_message_id / insert_id
        ("event_type", pa.string()),
        ("name", pa.string()),
        ("timestamp_ms", pa.int64()),
        ("custom_event_type", pa.string()),
        ("attributes", pa.string()),  # the custom attributes as a compact JSON object, or null
        ("data", pa.string()),  # further mParticle `data` keys as a compact JSON object, or null
    ]
)

# A JSON string Arrow can quote as is: nothing to escape (and no colon, so a flat object's colons all
# separate a key from its value).
_PLAIN = r'"[^"\\:\x00-\x1f]*"'
_SCALAR = r"(?:" + _PLAIN + r"|-?[0-9][0-9.eE+-]*|true|false)"
# A flat object of plain strings, numbers and booleans: its values become strings by quoting the others.
_FLAT_OBJECT = r"^\{(?:" + _PLAIN + ":" + _SCALAR + "(?:," + _PLAIN + ":" + _SCALAR + r")*)?\}$"
_UNQUOTED_VALUE = r":(-?[0-9][0-9.eE+-]*|true|false)([,}])"
# A flat object whose strings hold no comma or brace either: its every colon, comma and closing brace is the
# object's own, so numpy finds where its unquoted values start and end without reading it as JSON.
_SIMPLE = r'"[^"\\:,{}\x00-\x1f]*"'
_SIMPLE_SCALAR = r"(?:" + _SIMPLE + r"|-?[0-9][0-9.eE+-]*|true|false)"
_SIMPLE_OBJECT = (
    r"^\{(?:" + _SIMPLE + ":" + _SIMPLE_SCALAR + "(?:," + _SIMPLE + ":" + _SIMPLE_SCALAR + r")*)?\}$"
)
_QUOTE, _COLON, _COMMA, _OPEN, _CLOSE = map(ord, '":,{}')
_TO_ESCAPE = r'[\x00-\x1f"\\]'
# Every byte but those JSON escapes in a string: deleting them from a column's text leaves what to escape.
_NOT_ESCAPED = bytes(sorted(set(range(256)) - set(range(0x20)) - {ord('"'), ord("\\")}))


def events_table(changes: Iterable[ProfileChange]) -> pa.Table:
    """The changes' events as one table, in order (each profile's events together)."""
    rows: list[tuple[str, Event]] = [(c.profile_id, e) for c in changes for e in c.events]
    return pa.table(
        {
            "profile_id": [p for p, _ in rows],
            "event_id": [e.event_id for _, e in rows],
            "event_type": [e.event_type for _, e in rows],
            "name": [e.name for _, e in rows],
            "timestamp_ms": [int(e.timestamp_ms) for _, e in rows],
            "custom_event_type": [e.custom_event_type for _, e in rows],
            "attributes": [
                compact_json(dict(e.attributes)).decode() if e.attributes else None for _, e in rows
            ],
            "data": [compact_json(dict(e.data)).decode() if e.data else None for _, e in rows],
        },
        schema=EVENT_SCHEMA,
    )


def row_event(table: pa.Table, index: int) -> Event:
    """One row as an Event, for the rows the platform's Python encoder writes."""
    row = {name: table.column(name)[index].as_py() for name in EVENT_SCHEMA.names}
    return Event(
        event_id=row["event_id"],
        event_type=row["event_type"],
        name=row["name"],
        timestamp_ms=row["timestamp_ms"],
        attributes=_loads(row["attributes"]),
        custom_event_type=row["custom_event_type"] or "other",
        data=_loads(row["data"]),
    )


def _loads(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def quoted(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A string column as JSON string literals; rows with characters to escape go through json's escaping."""
    column = _combined(column)
    text = pc.binary_join_element_wise('"', column, '"', "")
    if not to_escape(column):
        return text
    needs = pc.fill_null(pc.match_substring_regex(column, _TO_ESCAPE), False)
    if not pc.any(needs).as_py():
        return text
    indexes = np.flatnonzero(needs.to_numpy(zero_copy_only=False))
    escaped = pa.array([json_string(column[int(i)].as_py()) for i in indexes], pa.string())
    return pc.replace_with_mask(text, needs, escaped)


def quoted_pieces(column: pa.ChunkedArray | pa.Array) -> list[pa.Array | str]:
    """A string column's JSON string literals as pieces for joined(): the column as it is between literal
    quotes when no row is null or has a character to escape (the usual: no column written for the quoting),
    else quoted()."""
    column = _combined(column)
    if column.null_count == 0 and not to_escape(column):
        return ['"', column, '"']
    return [quoted(column)]


def to_escape(column: pa.Array) -> bool:
    """True when a value of the string column holds a character JSON escapes: one pass over its text (bytes'
    translate, some ten times faster than a regular expression's search)."""
    return bool(concatenated(column).translate(None, _NOT_ESCAPED))


def numbers(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """An integer column as JSON numbers."""
    return pc.cast(_combined(column), pa.string())


def string_valued(attributes: pa.ChunkedArray | pa.Array, fallback: Callable[[str], str]) -> pa.Array:
    """JSON objects with every value as a string (mParticle's custom attributes); flat objects of plain
    values are rewritten by numpy (or Arrow's regular expressions where a string holds a comma or a
    brace), the rest by fallback(text)."""
    attributes = _combined(attributes)
    simple = pc.fill_null(pc.match_substring_regex(attributes, _SIMPLE_OBJECT), True)
    rewritten = _values_quoted(attributes)
    if pc.all(simple).as_py():
        return rewritten
    other = pc.invert(simple)
    rest = attributes.filter(other)
    flat = pc.match_substring_regex(rest, _FLAT_OBJECT).to_pylist()
    regexed = pc.replace_substring_regex(rest, _UNQUOTED_VALUE, r':"\1"\2').to_pylist()
    written = [
        text if is_flat else fallback(original)
        for original, is_flat, text in zip(rest.to_pylist(), flat, regexed, strict=True)
    ]
    return pc.replace_with_mask(rewritten, other, pa.array(written, pa.string()))


def _values_quoted(objects: pa.Array) -> pa.Array:
    """String objects with their unquoted values quoted, right for each flat object whose strings hold no
    colon, comma or brace (_SIMPLE_OBJECT; the others' rows are left to the caller): a quote after each
    colon not followed by one, and before each comma or closing brace not preceded by one (nor by `{`)."""
    at = offsets(objects)
    text = np.frombuffer(data_view(objects), np.uint8)
    quote = text == _QUOTE
    before = np.zeros(len(text), np.bool_)  # where a quote goes before the byte
    before[1:] = (text[:-1] == _COLON) & ~quote[1:]
    before[1:] |= ((text[1:] == _COMMA) | (text[1:] == _CLOSE)) & ~quote[:-1] & (text[:-1] != _OPEN)
    before[at[:-1][at[:-1] < len(text)]] = False  # never at a row's start: a quote there is another row's
    where = np.flatnonzero(before)
    quoted_text = np.full(len(text) + len(where), _QUOTE, np.uint8)
    kept = np.ones(len(quoted_text), np.bool_)
    kept[where + np.arange(len(where))] = False
    quoted_text[kept] = text
    ends_at = (at + np.searchsorted(where, at, side="left")).astype(np.int32)
    if len(quoted_text) >= 2**31:  # beyond a string array's offsets: Arrow's regular expression instead
        return pc.replace_substring_regex(objects, _UNQUOTED_VALUE, r':"\1"\2')
    array = pa.Array.from_buffers(
        pa.string(), len(objects), [None, pa.py_buffer(ends_at), pa.py_buffer(quoted_text)]
    )
    if objects.null_count:
        array = pc.if_else(pc.is_valid(objects), array, pa.scalar(None, pa.string()))
    return array


def joined(pieces: Sequence[pa.Array | pa.ChunkedArray | str]) -> pa.Array:
    """The pieces (columns and literal text) concatenated row by row; a null column piece reads as empty."""
    columns: list[pa.Array | str] = []
    for piece in pieces:
        if isinstance(piece, str):
            if columns and isinstance(columns[-1], str):
                columns[-1] += piece  # adjacent literal text: one piece fewer to join
            else:
                columns.append(piece)
        else:
            piece = _combined(piece)
            columns.append(pc.fill_null(piece, "") if piece.null_count else piece)
    return _combined(pc.binary_join_element_wise(*columns, ""))


def optional(prefix: str, column: pa.Array | pa.ChunkedArray, omit: pa.Array) -> list[pa.Array | str]:
    """Pieces for joined(): prefix + value where a value is wanted, empty text where omit is true or the
    value null; when every row has its value, the prefix as literal text before the column as it is."""
    column = _combined(column)
    if not column.null_count and not pc.any(omit).as_py():
        return [prefix, column]
    piece = pc.binary_join_element_wise(prefix, column, "")
    return [pc.fill_null(pc.if_else(omit, pa.scalar("", pa.string()), piece), "")]


def by_profile(events: pa.Table, profile_ids: Sequence[str]) -> tuple[pa.Table, np.ndarray]:
    """The events of these profiles in the profiles' order (each profile's in their own order), and for
    each row the index of its profile; events of other profiles (erased since) are left out."""
    where = pc.index_in(events.column("profile_id"), value_set=pa.array(profile_ids, pa.string()))
    where = _combined(where)
    if where.null_count:
        events = events.filter(pc.is_valid(where))
        where = pc.drop_null(where)
    positions = where.to_numpy(zero_copy_only=False).astype(np.int64)
    if len(positions) > 1 and bool(np.any(positions[1:] < positions[:-1])):
        order = np.argsort(positions, kind="stable")
        events, positions = events.take(pa.array(order)), positions[order]
    return events, positions


def offsets(values: pa.Array) -> np.ndarray:
    """Where each value of a string or binary array starts in its data (and where the last ends)."""
    if len(values) == 0:
        return np.zeros(1, np.int32)
    every = np.frombuffer(values.buffers()[1], dtype=np.int32)
    return every[values.offset : values.offset + len(values) + 1] - every[values.offset]


def concatenated(values: pa.Array) -> bytes:
    """The values of a string or binary array back to back, as its data holds them."""
    data = values.buffers()[2] if len(values) else None
    if data is None:
        return b""
    start = int(np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset])
    return data[start : start + int(offsets(values)[-1])].to_pybytes()


def data_view(values: pa.Array) -> memoryview:
    """The values of a string or binary array back to back: a view of its data, nothing copied."""
    data = values.buffers()[2] if len(values) else None
    if data is None:
        return memoryview(b"")
    start = int(np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset])
    return memoryview(data)[start : start + int(offsets(values)[-1])]


def _combined(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
