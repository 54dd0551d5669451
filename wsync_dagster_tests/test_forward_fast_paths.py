"""The destinations' fast paths give what their general encoders give, on random profile changes."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from wsync_dagster.destinations import amplitude, mparticle
from wsync_dagster.destinations import event_columns as ec
from wsync_dagster.destinations.json_encoding import compact_json, native_json
from wsync_dagster.destinations.profile_changes import Event, ProfileChange, Reject
from wsync_dagster.destinations.sender import Request

NOW = datetime(2026, 12, 6, tzinfo=UTC)
RECENT_MS = int((NOW - timedelta(days=1)).timestamp() * 1000)
OLD_MS = int((NOW - timedelta(days=40)).timestamp() * 1000)
IDENTITY_KINDS = (
    "customer_id",
    "email",
    "other",
    "other_id_3",
    "mobile_number",
    "mpid",
    "mp_deviceid",
    "ios_idfv",
)
TEXTS = ("a", "plan", "é", 'quo"te', "back\\slash", "new\nline", "", "x" * 30, "colon: yes", "comma, yes")


def random_value(rng: random.Random, plain: bool) -> object:
    """An attribute value of any kind a profile holds: scalars, null, lists, objects (plain: scalars)."""
    kind = rng.choice((1, 2, 3, 6)) if plain else rng.randrange(9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return rng.randint(-(10**12), 10**12)
    if kind == 3:
        return rng.uniform(-1e6, 1e6)
    if kind == 4:
        return [rng.choice(TEXTS), rng.randint(0, 9), None]
    if kind == 5:
        return {"nested": rng.choice(TEXTS)}
    return rng.choice(TEXTS) + str(rng.randrange(1000))


def random_change(rng: random.Random, n: int) -> ProfileChange:
    """A change with random identities (some empty or odd), attributes, removals and events."""
    identities = {}
    for kind in rng.sample(IDENTITY_KINDS, rng.randint(0, 4)):
        value = rng.choice(TEXTS) + f"-{n}" if kind not in ("mpid",) else rng.choice(("123", "-45", "abc"))
        identities[kind] = value if rng.random() > 0.1 else ""
    if rng.random() < 0.6:
        identities["customer_id"] = f"cust-{n:06d}"
    many = rng.random() < 0.03  # more than one batch's 100 attributes
    names = [f"attr_{rng.randrange(300 if many else 12)}" for _ in range(rng.randint(0, 150 if many else 6))]
    plain = rng.random() < 0.5  # the usual change: scalar attributes only
    attributes = {name: random_value(rng, plain) for name in names}
    removed = tuple(f"gone_{rng.randrange(5)}" for _ in range(rng.randint(0, 2)))
    events = tuple(
        Event(
            f"e{n}-{e}",
            rng.choice(("custom_event", "custom_event", "screen_view")),
            rng.choice(TEXTS) or "view",
            rng.choice((RECENT_MS, RECENT_MS, OLD_MS)) + e,
            {"amount": rng.randint(0, 99), "sku": rng.choice(TEXTS)} if rng.random() < 0.7 else {},
        )
        for e in range(rng.choice((0, 0, 1, 3)))
    )
    return ProfileChange(f"p{n}", identities, attributes, removed, events)


def items_by_path(requests: list[Request]) -> dict[str, list[tuple[str, bytes, int]]]:
    """Each path's items (key, body, events) in the order they were sent."""
    found: dict[str, list[tuple[str, bytes, int]]] = {}
    for request in requests:
        for i in range(len(request.items)):
            item = request.items[i]
            found.setdefault(request.path, []).append((item.key, item.body, item.events))
    return found


@pytest.mark.parametrize("population", ["with events", "without events", "usual only"])
def test_mparticle_batches_are_encode_changes_byte_for_byte_on_random_changes(population: str) -> None:
    rng = random.Random(19)
    count = {"with events": 3000, "without events": 9000, "usual only": 40000}[population]
    changes = [random_change(rng, n) for n in range(count)]
    if population != "with events":  # chunks of profile changes alone, most of them usual, a few not
        changes = [replace(change, events=()) for change in changes]
    if population == "usual only":  # chunks of usual changes only (the bench's)
        changes = [change for change in changes if mparticle._usual_head(change, "production", None)]
        assert len(changes) > 2 * mparticle.CHUNK_PROFILES
    rejects: list[Reject] = []
    sent = items_by_path(list(mparticle.encode_requests(changes, "production", NOW, rejects)))
    expected: dict[str, list[tuple[str, bytes, int]]] = {}
    expected_rejects: list[Reject] = []
    for change in changes:  # the general encoder, one change at a time, its events encoded on their own
        recent, historical, change_rejects = mparticle.encode_change(change, "production", NOW)
        for path, items in ((mparticle.BULK_PATH, recent), (mparticle.HISTORICAL_PATH, historical)):
            expected.setdefault(path, []).extend((item.key, item.body, item.events) for item in items)
        expected_rejects.extend(change_rejects)
    assert sent == {path: items for path, items in expected.items() if items}
    assert sorted(rejects, key=repr) == sorted(expected_rejects, key=repr)


def test_amplitude_identifications_set_and_unset_what_the_changes_say_on_random_changes() -> None:
    rng = random.Random(19)
    changes = [random_change(rng, n) for n in range(3000)]
    rejects: list[Reject] = []
    sent = items_by_path(list(amplitude.encode_requests(changes, "customer_id", rejects)))
    identified = {key: json.loads(body) for key, body, _ in sent.get(amplitude.IDENTIFY_PATH, [])}
    for change in changes:
        user_id = change.identities.get("customer_id")
        values = {name: value for name, value in change.attributes.items() if value is not None}
        removed = sorted({*change.removed, *(n for n, v in change.attributes.items() if v is None)})
        if not user_id or len(user_id) < amplitude.MIN_ID_LENGTH or not (values or removed):
            assert change.profile_id not in identified
            continue
        expected: dict[str, object] = {}
        if values:
            expected["$set"] = json.loads(json.dumps(values, default=str))
        if removed:
            expected["$unset"] = dict.fromkeys(removed, "-")
        assert identified[change.profile_id] == {"user_id": user_id, "user_properties": expected}


# Values that look like the cut between two objects' JSON, or like a null, inside strings and nested values.
LOOKALIKES: tuple[object, ...] = (
    '},{"',
    '"},{"x":1',
    '":null',
    "a:null",
    [{"a": 1}, {"b": 2}],
    {"nested": None},
    [None, "x"],
    {"deep": [{"k": '},{"'}]},
)


def test_amplitude_identifications_are_each_ones_own_json_byte_for_byte_on_random_changes() -> None:
    rng = random.Random(23)
    changes = []
    for n in range(4000):
        change = random_change(rng, n)
        if rng.random() < 0.05:  # now and then a value whose JSON looks like the fast path's cues
            attributes = {**change.attributes, f"odd_{rng.randrange(3)}": rng.choice(LOOKALIKES)}
            change = ProfileChange(change.profile_id, change.identities, attributes, change.removed)
        changes.append(change)
    assert_identifications_are_their_own_json(changes)
    assert any(isinstance(value, list | dict) for c in changes for value in c.attributes.values())


@pytest.mark.parametrize(
    "removals",
    [((),), (("gone",),), ((), ("gone",)), (("gone",), ("gone", "left")), ((), ("gone",), ("left",))],
)
@pytest.mark.parametrize("without_attributes", [0.0, 0.1])
@pytest.mark.parametrize("odd_one_every", [0, 1500])
def test_amplitude_identifications_alike_but_for_their_removals(
    removals: tuple[tuple[str, ...], ...], without_attributes: float, odd_one_every: int
) -> None:
    rng = random.Random(29)
    changes = []
    for n in range(5000):  # the bench's changes: the same attributes, removals drawn from a few
        removed = rng.choice(removals)
        # Some without attributes: they only remove, or when they remove nothing either, identify nothing.
        attributes = {} if rng.random() < without_attributes else {"plan": "pro", "seats": n % 50}
        identities = {"customer_id": f"cust-{n:06d}"}
        if odd_one_every and n % odd_one_every == 7:  # now and then a user id Amplitude would drop
            identities = {"customer_id": "c-1"}
        changes.append(ProfileChange(f"p{n}", identities, attributes, removed))
    assert_identifications_are_their_own_json(changes)


@pytest.mark.parametrize("with_attributes", [True, False])
def test_amplitude_events_go_under_their_profiles_user_ids(with_attributes: bool) -> None:
    changes = []
    for n in range(5000):  # the usual changes (a request's worth at a time as columns), events for some
        events = (Event(f"e{n}", "custom_event", "buy", RECENT_MS),) if n % 3 == 0 else ()
        attributes = {"plan": "pro"} if with_attributes else {}
        changes.append(ProfileChange(f"p{n}", {"customer_id": f"cust-{n:06d}"}, attributes, (), events))
    changes.append(ProfileChange("p-odd", {"customer_id": "c-1"}, {}, (), (Event("e-odd", "x", "y", 1),)))
    rejects: list[Reject] = []
    sent = items_by_path(list(amplitude.encode_requests(changes, "customer_id", rejects)))
    users = {
        json.loads(body)["insert_id"]: json.loads(body)["user_id"]
        for _, body, _ in sent[amplitude.EVENTS_PATH]
    }
    assert users == {f"e{n}": f"cust-{n:06d}" for n in range(0, 5000, 3)}
    assert [reject.item for reject in rejects] == ["e-odd"]
    assert len(sent.get(amplitude.IDENTIFY_PATH, [])) == (5000 if with_attributes else 0)


def assert_identifications_are_their_own_json(changes: list[ProfileChange]) -> None:
    """Each change's identification as sent is what encoding it alone gives (the earlier, general way)."""
    sent = items_by_path(list(amplitude.encode_requests(changes, "customer_id", [])))
    bodies = {key: body for key, body, _ in sent.get(amplitude.IDENTIFY_PATH, [])}
    expected = {}
    for change in changes:
        user_id = change.identities.get("customer_id")
        values = {name: value for name, value in change.attributes.items() if value is not None}
        removed = {*change.removed, *(name for name, value in change.attributes.items() if value is None)}
        if not user_id or len(user_id) < amplitude.MIN_ID_LENGTH or not (values or removed):
            continue
        properties: dict[str, object] = {"$set": values} if values else {}
        if removed:
            properties["$unset"] = dict.fromkeys(sorted(removed), "-")
        expected[change.profile_id] = native_json({"user_id": user_id, "user_properties": properties})
    assert bodies == expected


# Custom attribute values as awkward as they come: what the structural bytes look like, inside strings too.
AWKWARD_TEXTS = ("a", "é", 'q"t', "b\\s", "n\nl", "", "c: y", "c, y", "{x}", "}", ",", "true", "1e5", "😀")


def random_attribute_value(rng: random.Random) -> object:
    """A custom attribute value of any kind: scalars, null, large and small numbers, nested values."""
    kind = rng.randrange(10)
    if kind < 3:
        return rng.choice(AWKWARD_TEXTS) + ("x" if kind else "")
    return (
        None,
        rng.choice((True, False)),
        rng.randint(-(10**20), 10**20),
        rng.choice((rng.uniform(-1e9, 1e9), 1e-7, -0.0, float("inf"))),
        [1, "a", None],
        {"n": rng.choice(AWKWARD_TEXTS)},
        rng.randint(-5, 5),
    )[kind - 3]


def test_custom_attributes_as_strings_are_the_regular_expressions_and_pythons_byte_for_byte() -> None:
    rng = random.Random(31)
    texts: list[str | None] = []
    for _ in range(20000):
        names = [rng.choice(AWKWARD_TEXTS) + str(rng.randrange(3)) for _ in range(rng.randrange(5))]
        attributes = {name: random_attribute_value(rng) for name in names}
        texts.append(None if rng.random() < 0.05 else compact_json(attributes).decode())
    column = pa.array(texts, pa.string())
    fallback = mparticle._custom_attributes_text
    for part in (column, column.slice(7, 5000)):  # a slice: its data starts past the buffer's start
        flat = pc.fill_null(pc.match_substring_regex(part, ec._FLAT_OBJECT), True).to_pylist()
        regexed = pc.replace_substring_regex(part, ec._UNQUOTED_VALUE, r':"\1"\2').to_pylist()
        expected = [r if f else fallback(t) for t, f, r in zip(part.to_pylist(), flat, regexed, strict=True)]
        assert ec.string_valued(part, fallback).to_pylist() == expected
    simple = pc.fill_null(pc.match_substring_regex(column, ec._SIMPLE_OBJECT), False)
    assert 0 < pc.sum(simple).as_py() < len(column)  # numpy's rows and the others


def events_only_change(rng: random.Random, n: int) -> ProfileChange:
    """The bench's change: recent events alone under a customer id and an email (unicode among them), the
    events' attributes as awkward as they come."""
    identities = {
        "customer_id": f"cust-{n:06d}",
        "email": rng.choice(("é", "😀", "a.b", "x" * 40)) + f"{n}@x",
    }
    events = tuple(
        Event(
            f"e{n}-{e}",
            "custom_event",
            rng.choice(AWKWARD_TEXTS) or "view",
            RECENT_MS + e,
            {rng.choice(AWKWARD_TEXTS): random_attribute_value(rng) for _ in range(rng.randrange(4))},
            rng.choice(("transaction", "other")),
        )
        for e in range(rng.randint(1, 4))
    )
    return ProfileChange(f"p{n}", identities, events=events)


@pytest.mark.parametrize("odd_one", ["none", "quote in an email", "empty email", "old event", "attributes"])
def test_mparticle_chunks_of_events_alone_are_encode_changes_byte_for_byte(
    odd_one: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mparticle, "CHUNK_PROFILES", 300)  # three chunks, quickly
    written: list[bool] = []  # which chunks were written whole by Arrow
    event_batches = mparticle._event_batches

    def noted(*args: object) -> object:
        batches = event_batches(*args)  # type: ignore[arg-type]
        written.append(batches is not None)
        return batches

    monkeypatch.setattr(mparticle, "_event_batches", noted)
    rng = random.Random(37)
    changes = [events_only_change(rng, n) for n in range(2 * mparticle.CHUNK_PROFILES + 50)]
    odd = changes[mparticle.CHUNK_PROFILES + 9]  # one change in the second chunk: that chunk the general way
    if odd_one == "quote in an email":
        odd = replace(odd, identities={**odd.identities, "email": 'q"t@x'})
    elif odd_one == "empty email":
        odd = replace(odd, identities={**odd.identities, "email": ""})
    elif odd_one == "old event":
        odd = replace(odd, events=(*odd.events, Event("e-old", "custom_event", "buy", OLD_MS)))
    elif odd_one == "attributes":
        odd = replace(odd, attributes={"plan": "pro"})
    changes[mparticle.CHUNK_PROFILES + 9] = odd
    rejects: list[Reject] = []
    sent = items_by_path(list(mparticle.encode_requests(changes, "production", NOW, rejects)))
    expected: dict[str, list[tuple[str, bytes, int]]] = {}
    for change in changes:  # the general encoder, one change at a time, its events encoded on their own
        recent, historical, change_rejects = mparticle.encode_change(change, "production", NOW)
        for path, items in ((mparticle.BULK_PATH, recent), (mparticle.HISTORICAL_PATH, historical)):
            expected.setdefault(path, []).extend((item.key, item.body, item.events) for item in items)
        assert not change_rejects
    assert sent == {path: items for path, items in expected.items() if items}
    assert not rejects
    assert written == [True, odd_one == "none", True]
