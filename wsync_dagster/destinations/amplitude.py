"""Amplitude: profile changes through the Identify API, events through the HTTP V2 API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster.destinations import event_columns as ec
from wsync_dagster.destinations.event_columns import events_table
from wsync_dagster.destinations.json_encoding import compact_json, native_json
from wsync_dagster.destinations.profile_changes import Erasure, ProfileChange, Reject
from wsync_dagster.destinations.sender import (
    Acknowledged,
    DestinationError,
    Item,
    ItemColumns,
    JsonRequests,
    Request,
    SendMetrics,
    SendPolicy,
    column_requests,
    exchange,
    joined_bodies,
    send_encoded,
)

REGIONS: dict[str, str] = {"us": "https://api2.amplitude.com", "eu": "https://api.eu.amplitude.com"}
# The User Privacy API (v1) lives on other hosts than ingestion.
PRIVACY_REGIONS: dict[str, str] = {"us": "https://amplitude.com", "eu": "https://analytics.eu.amplitude.com"}
DELETIONS_PATH = "/api/2/deletions/users"
MAX_DELETIONS_PER_REQUEST = 100  # user ids per deletion request, as the User Privacy API allows
DELETION_POLICY = SendPolicy(items_per_second=100, concurrency=1)  # about one request a second
EVENTS_PATH = "/2/httpapi"
IDENTIFY_PATH = "/identify"

# HTTP V2's documented limits; identifications are kept to the same.
MAX_ITEMS_PER_REQUEST = 2000
MAX_REQUEST_BYTES = 1_000_000
THROTTLED_USER_PAUSE_SECONDS = 30.0  # Amplitude asks to pause a throttled user or device this long
THROTTLED_IDENTIFY_PAUSE_SECONDS = 15.0  # and this long after a 429 from the Identify API
MIN_ID_LENGTH = 5  # Amplitude drops shorter user ids, so they are rejects here and never sent
DEFAULT_POLICY = SendPolicy(items_per_second=1000)  # the Starter plan's events per second
# Events Arrow encodes at once, while the last chunk's requests go out (whole requests of 2,000 events).
CHUNK_EVENTS = 16 * MAX_ITEMS_PER_REQUEST


class Amplitude:
    """One Amplitude destination: where its identifies and events go, under which user id."""

    def __init__(
        self,
        destination: str,
        api_key: str,
        region: str = "us",
        base_url: str | None = None,
        user_id: str = "customer_id",
        policy: SendPolicy = DEFAULT_POLICY,
        secret_key: str | None = None,
    ) -> None:
        if region not in REGIONS:
            raise ValueError(f"destination {destination}: region must be us or eu (got {region!r})")
        self.destination = destination
        self.base_url = base_url or REGIONS[region]
        self.user_id = user_id
        self.policy = policy
        self._api_key = api_key
        self.privacy_url = base_url or PRIVACY_REGIONS[region]
        self._secret_key = secret_key  # only deletions need it

    def __repr__(self) -> str:
        return f"Amplitude({self.destination!r}, base_url={self.base_url!r})"  # never the key

    def accepts_gzip(self, request: Request) -> bool:
        """HTTP V2 takes gzip bodies (its limits count events after decompression); Identify is a form."""
        return request.path == EVENTS_PATH

    def refuses_credentials(self, response: httpx.Response) -> bool:
        """Amplitude answers a wrong API key with a 400 saying so."""
        if response.status_code != 400:
            return False
        error = str(_json_body(response).get("error", "")).lower()
        return "api key" in error or "api_key" in error

    def throttle_seconds(self, response: httpx.Response) -> float | None:
        """A 429 naming throttled users or devices: pause them as Amplitude asks (the retry resends all)."""
        if response.status_code != 429:
            return None
        if response.request.url.path.endswith(IDENTIFY_PATH):
            return THROTTLED_IDENTIFY_PAUSE_SECONDS
        answer = _json_body(response)
        throttled = answer.get("throttled_users") or answer.get("throttled_devices")
        return THROTTLED_USER_PAUSE_SECONDS if throttled else None

    def auth(self) -> None:
        """The API key travels in the body."""
        return None

    def body(self, request: Request) -> tuple[bytes, str]:
        """HTTP V2: a JSON object with the key and events; Identify: a form with the key and identifications."""
        items = joined_bodies(request.items)  # each body written once more, by one join: they are large
        if request.path == EVENTS_PATH:
            head = b'{"api_key":' + compact_json(self._api_key) + b',"events":['
            return b"".join((head, items, b"]}")), "application/json"
        # multipart/form-data, which the Identify API takes beside urlencoded: no percent-encoding of the JSON
        boundary = _boundary(items)
        field = b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n'
        parts = (
            field % (boundary, b"api_key"),
            self._api_key.encode(),
            b"\r\n" + field % (boundary, b"identification") + b"[",
            items,
            b"]\r\n--%s--\r\n" % boundary,
        )
        return b"".join(parts), f"multipart/form-data; boundary={boundary.decode()}"

    def item_reasons(self, request: Request, response: httpx.Response) -> dict[int, str]:
        """The events a 400 names, with what was wrong with each; a 429's users over their daily quota."""
        answer = _json_body(response)
        if response.status_code == 429:
            return _over_daily_quota(request, answer)
        reasons: dict[int, str] = {}
        for key, what in (
            ("events_with_invalid_fields", "invalid field"),
            ("events_with_missing_fields", "missing field"),
            ("events_with_invalid_id_lengths", "too short"),
        ):
            fields = answer.get(key)
            if not isinstance(fields, dict):
                continue
            for name, indexes in fields.items():
                for index in indexes if isinstance(indexes, list) else []:
                    if isinstance(index, int) and 0 <= index < len(request.items):
                        reasons[index] = f"{name} {what}" if what == "too short" else f"{what} {name}"
        for index in answer.get("silenced_events") or []:
            if isinstance(index, int) and 0 <= index < len(request.items):
                reasons[index] = "the device is silenced in Amplitude"
        return reasons

    def reason(self, response: httpx.Response) -> str:
        """Amplitude's error for a rejected request, with the key blanked should it quote it."""
        error = str(_json_body(response).get("error") or f"Amplitude answered HTTP {response.status_code}")
        return error.replace(self._api_key, "***") if self._api_key else error


def forward(
    destination: Amplitude,
    changes: Iterable[ProfileChange],
    on_acknowledged: Acknowledged | None = None,
    events: pa.Table | None = None,
) -> SendMetrics:
    """Sends the changes as identifies and events, waiting for Amplitude's acknowledgement of each request;
    their events come from `events` (event_columns.EVENT_SCHEMA) or else from the changes."""
    rejects: list[Reject] = []
    requests = encode_requests(changes, destination.user_id, rejects, events)
    return send_encoded(destination, requests, destination.policy, rejects, 0.0, on_acknowledged)


def encode_requests(
    changes: Iterable[ProfileChange], user_id_type: str, rejects: list[Reject], events: pa.Table | None = None
) -> Iterator[Request]:
    """The changes' identifies packed into requests as they are encoded, then their events, encoded for the
    whole table at once; rejects gets what cannot be sent."""
    changes = list(changes)
    users: dict[str, str] = {}  # profile id → its user id
    # More of them, as columns (profile ids, user ids): made into the dict only when there are events.
    usual_users: list[tuple[list[str], list[str]]] = []
    refused: dict[str, str] = {}  # profile id → why its events cannot be sent
    pending = _Identifications()
    for start in range(0, len(changes), MAX_ITEMS_PER_REQUEST):
        chunk = changes[start : start + MAX_ITEMS_PER_REQUEST]
        if (usual := _usual_parts(chunk, user_id_type)) is not None:
            usual_users.append((usual[0], usual[1]))
            pending.extend(*usual)
        else:
            for change in chunk:
                user_id = change.identities.get(user_id_type)
                if not user_id or len(user_id) < MIN_ID_LENGTH:
                    why = _user_id_problem(change, user_id_type) or "no user id"
                    refused[change.profile_id] = why
                    if change.attributes or change.removed:
                        rejects.append(Reject(change.profile_id, why))
                    continue
                users[change.profile_id] = user_id
                values, removed = change.attributes, change.removed
                if type(values) is not dict:
                    values, removed = _nulls_removed(values, removed)
                if values or removed:  # else nothing to identify
                    pending.add(change.profile_id, user_id, values, removed)
        for items in pending.requests_worth():  # out they go while the next are gathered
            yield from _identify_requests(items)
    for items in pending.requests_worth(last=True):
        yield from _identify_requests(items)
    table = events_table(changes) if events is None else events
    if table.num_rows == 0:
        return
    for keys, user_ids in usual_users:
        users.update(zip(keys, user_ids, strict=True))
    profiles = list(users)
    where = pc.index_in(table.column("profile_id"), value_set=pa.array(profiles, pa.string()))
    where = where.combine_chunks() if isinstance(where, pa.ChunkedArray) else where
    user_ids = ec.quoted(pa.array([users[p] for p in profiles], pa.string()))
    for start in range(0, table.num_rows, CHUNK_EVENTS):
        chunk = table.slice(start, CHUNK_EVENTS)
        items = event_items(chunk, where.slice(start, CHUNK_EVENTS), user_ids, refused, rejects)
        yield from column_requests(EVENTS_PATH, items, MAX_ITEMS_PER_REQUEST, MAX_REQUEST_BYTES, overhead=128)


def _usual_parts(
    chunk: list[ProfileChange], user_id_type: str
) -> tuple[list[str], list[str], list[dict[str, Any]], list[tuple[str, ...]]] | None:
    """The chunk's profile ids, user ids, attributes and removed names when every change is the usual one (a
    user id Amplitude takes, attributes a dict, something set; or else none of them identifies anything),
    gathered a column at a time; None when a change needs a look of its own."""
    user_ids = [change.identities.get(user_id_type) for change in chunk]
    if None in user_ids or min(map(len, user_ids), default=MIN_ID_LENGTH) < MIN_ID_LENGTH:
        return None
    sets = [change.attributes for change in chunk]
    if not {dict}.issuperset(map(type, sets)):
        return None
    keys = [change.profile_id for change in chunk]
    if all(sets):
        return keys, user_ids, sets, [change.removed for change in chunk]  # type: ignore[return-value]
    if any(sets) or any(change.removed for change in chunk):
        return None  # some to identify, some not
    return keys, user_ids, [], []  # nothing to identify (events only): their user ids for the events


class _Identifications:
    """Identifications gathered as their parts (profile id, user id, "$set" values, removed names), a
    request's worth written at a time (identification_items): no Python objects of their own."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.user_ids: list[str] = []
        self.sets: list[dict[str, Any]] = []  # a null among them is looked for in their JSON: rare
        self.removals: list[tuple[str, ...]] = []

    def add(self, key: str, user_id: str, values: dict[str, Any], removed: tuple[str, ...]) -> None:
        """One identification."""
        self.keys.append(key)
        self.user_ids.append(user_id)
        self.sets.append(values)
        self.removals.append(removed)

    def extend(
        self,
        keys: list[str],
        user_ids: list[str],
        sets: list[dict[str, Any]],
        removals: list[tuple[str, ...]],
    ) -> None:
        """Identifications from their columns (none when sets is empty)."""
        if sets:
            self.keys += keys
            self.user_ids += user_ids
            self.sets += sets
            self.removals += removals

    def requests_worth(self, last: bool = False) -> Iterator[ItemColumns]:
        """Items of the identifications gathered, MAX_ITEMS_PER_REQUEST at a time; unless last, fewer are
        kept for the next."""
        size = MAX_ITEMS_PER_REQUEST
        while len(self.keys) >= size or (last and self.keys):
            parts = (self.keys, self.user_ids, self.sets, self.removals)
            yield identification_items(*(part[:size] for part in parts))
            for part in parts:
                del part[:size]


def _identify_requests(items: ItemColumns) -> Iterator[Request]:
    """The identifications as Identify API requests within its limits."""
    return column_requests(IDENTIFY_PATH, items, MAX_ITEMS_PER_REQUEST, MAX_REQUEST_BYTES, overhead=512)


def identification_items(
    keys: list[str], user_ids: list[str], sets: list[dict[str, Any]], removals: list[tuple[str, ...]]
) -> ItemColumns:
    """Identifications as items, from each one's user id, attributes to set (a null one removed) and names
    removed: one encoder call for all their "$set"s, Arrow joining the rest around them."""
    present = [values for values in sets if values]
    text = native_json(present)
    if b'":null' in text:  # a null value (a removal), or only its look in a nested value: each one checked
        sets, removals = map(list, zip(*map(_nulls_removed, sets, removals), strict=True))
        present = [values for values in sets if values]
        text = native_json(present)
    insides = _object_insides(text, present)
    unsets = {
        removed: '"$unset":' + native_json(dict.fromkeys(sorted(set(removed)), "-")).decode()
        for removed in set(removals)
        if removed
    }
    if len(present) == len(sets) and len(set(removals)) == 1:
        # The usual: every one sets something, and all remove the same names (or none).
        unset = "," + unsets[removals[0]] if removals[0] else ""
        properties = ['"$set":{"', insides, "}" + unset]
    else:
        set_pieces = pc.binary_join_element_wise('"$set":{"', insides, "}", "")
        if len(present) < len(sets):  # some only remove: no "$set" for them
            has_set = pa.array([bool(values) for values in sets], pa.bool_())
            set_pieces = pc.replace_with_mask(pa.nulls(len(sets), pa.string()), has_set, set_pieces)
        unset_pieces = pa.array([unsets.get(removed) for removed in removals], pa.string())
        both = pc.binary_join_element_wise(set_pieces, unset_pieces, ",")  # null unless both are there
        properties = [pc.coalesce(both, set_pieces, unset_pieces)]
    bodies = ec.joined(
        [
            '{"user_id":',
            *ec.quoted_pieces(pa.array(user_ids, pa.string())),
            ',"user_properties":{',
            *properties,
            "}},",
        ]
    )
    return ItemColumns(keys, bodies.view(pa.binary()), 0)


def _nulls_removed(
    values: Mapping[str, Any], removed: tuple[str, ...]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The attributes without their nulls, and the names removed with the nulls' (a null is a removal)."""
    if type(values) is dict and None not in values.values():
        return values, removed
    kept = {name: value for name, value in values.items() if value is not None}
    return kept, (*removed, *(name for name, value in values.items() if value is None))


def _object_insides(text: bytes, objects: list[dict[str, Any]]) -> pa.Array:
    """Each non-empty object's JSON without its opening '{"' and its closing '}', cut from text, the JSON of
    the list of them: '},{"' appears nowhere else unless a nested value holds it, and then the pieces
    outnumber the objects: each one is encoded alone instead."""
    if not objects:
        return pa.array([], pa.string())
    pieces = text[3:-2].split(b'},{"')
    if len(pieces) != len(objects):
        pieces = [native_json(values)[2:-1] for values in objects]
    return pa.array(pieces, pa.binary()).view(pa.string())


def event_items(
    events: pa.Table, where: pa.Array, user_ids: pa.Array, refused: dict[str, str], rejects: list[Reject]
) -> ItemColumns:
    """HTTP V2 events as items, where[i] the index of event i's user id in user_ids (JSON strings); events
    of a refused profile land in rejects, those of other profiles without one (erased since) are left out."""
    if where.null_count:
        for i in np.flatnonzero(pc.is_null(where).to_numpy(zero_copy_only=False)):
            why = refused.get(events.column("profile_id")[int(i)].as_py())
            if why is not None:
                rejects.append(Reject(events.column("event_id")[int(i)].as_py(), why))
        events = events.filter(pc.is_valid(where))
        where = pc.drop_null(where)
    attributes = events.column("attributes").combine_chunks()
    bodies = ec.joined(
        [
            '{"user_id":',
            pc.take(user_ids, where),
            ',"event_type":',
            *ec.quoted_pieces(events.column("name")),
            ',"time":',
            ec.numbers(events.column("timestamp_ms")),
            ',"insert_id":',
            *ec.quoted_pieces(events.column("event_id")),
            *ec.optional(',"event_properties":', attributes, pc.fill_null(pc.equal(attributes, "{}"), True)),
            "},",
        ]
    )
    return ItemColumns(events.column("event_id").combine_chunks(), bodies.cast(pa.binary()), 1)


def _user_id_problem(change: ProfileChange, user_id_type: str) -> str | None:
    """Why the change's user id cannot be Amplitude's, or None."""
    user_id = change.identities.get(user_id_type)
    if not user_id:
        return f"no {user_id_type} identity to send as Amplitude's user_id"
    if len(user_id) < MIN_ID_LENGTH:
        return f"user_id shorter than {MIN_ID_LENGTH} characters (Amplitude's minimum)"
    return None


@dataclass(frozen=True)
class DeletionRequest:
    """The User Privacy API deletion of some people, by Amplitude user id; who cannot be deleted that way."""

    requester: str
    user_ids: tuple[str, ...]
    profile_ids: tuple[str, ...]  # the profile each user id belongs to, in the same order
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class DeletionAcknowledgement:
    """What Amplitude took: the profiles whose deletion it scheduled and the jobs it answered with."""

    profile_ids: list[str] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def deletion_request(
    erasures: Iterable[Erasure], requester: str, user_id_type: str = "customer_id"
) -> DeletionRequest:
    """A deletion request for the people's user ids; those without one Amplitude took are rejects."""
    user_ids: list[str] = []
    profile_ids: list[str] = []
    rejects: list[Reject] = []
    for erasure in erasures:
        user_id = erasure.identities.get(user_id_type)
        if not user_id:
            rejects.append(
                Reject(erasure.profile_id, f"no {user_id_type} identity to delete by in Amplitude")
            )
        elif len(user_id) < MIN_ID_LENGTH:
            rejects.append(
                Reject(erasure.profile_id, "user_id shorter than 5 characters: never sent to Amplitude")
            )
        else:
            user_ids.append(user_id)
            profile_ids.append(erasure.profile_id)
    return DeletionRequest(requester, tuple(user_ids), tuple(profile_ids), rejects)


def send_deletion(
    destination: Amplitude,
    request: DeletionRequest,
    policy: SendPolicy = DELETION_POLICY,
    on_acknowledged: Callable[[tuple[str, ...]], None] | None = None,
    metrics: SendMetrics | None = None,
) -> DeletionAcknowledgement:
    """Sends the deletion 100 user ids a request, each retried like any send, their requests and bytes added
    to metrics; on_acknowledged gets profile ids."""
    if destination._secret_key is None:
        raise DestinationError(f"destination {destination.destination}: deletions need its secret_key")
    credentials = (destination._api_key, destination._secret_key)
    platform = JsonRequests(destination.destination, destination.privacy_url, credentials, destination.reason)
    done = DeletionAcknowledgement(rejects=list(request.rejects))
    for start in range(0, len(request.user_ids), MAX_DELETIONS_PER_REQUEST):
        chunk = slice(start, start + MAX_DELETIONS_PER_REQUEST)
        body = compact_json(
            {"user_ids": request.user_ids[chunk], "requester": request.requester, "ignore_invalid_id": True}
        )
        response, sent = exchange(
            platform, Request(DELETIONS_PATH, (Item("deletion", body),)), policy, frozenset({400})
        )
        if metrics is not None:
            metrics.add(sent)
        if not response.is_success:
            raise DestinationError(
                f"destination {destination.destination}: Amplitude refused a deletion request: "
                f"{destination.reason(response)}"
            )
        answer = _json_answer(response)
        done.jobs.extend(answer if isinstance(answer, list) else [answer] if answer is not None else [])
        done.profile_ids.extend(request.profile_ids[chunk])
        if on_acknowledged is not None:
            on_acknowledged(request.profile_ids[chunk])
    return done


def _boundary(content: bytes) -> bytes:
    """A multipart boundary the content does not hold."""
    while True:
        boundary = b"wsync-" + uuid.uuid4().hex.encode()
        if boundary not in content:
            return boundary


def _over_daily_quota(request: Request, answer: dict[str, Any]) -> dict[int, str]:
    """The items of users or devices a 429 says are over their daily quota: a retry today cannot help."""
    over = {
        key: answer.get(f"exceeded_daily_quota_{kind}s") or {}
        for key, kind in (("user_id", "user"), ("device_id", "device"))
    }
    if not any(over.values()):
        return {}
    reasons: dict[int, str] = {}
    for index, item in enumerate(request.items):
        sent = json.loads(item.body)  # only on this rare answer
        for key, counts in over.items():
            if isinstance(counts, dict) and sent.get(key) in counts:
                reasons[index] = f"{key} over Amplitude's daily quota ({counts[sent[key]]} events today)"
    return reasons


def _json_body(response: httpx.Response) -> dict[str, Any]:
    answer = _json_answer(response)
    return answer if isinstance(answer, dict) else {}


def _json_answer(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
