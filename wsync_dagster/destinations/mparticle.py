"""mParticle's Events API: profile changes and events as batches for `POST /v2/bulkevents`."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import attrgetter, eq, itemgetter, methodcaller
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster.destinations import event_columns as ec
from wsync_dagster.destinations.event_columns import events_table
from wsync_dagster.destinations.json_encoding import compact_json, json_string, native_json
from wsync_dagster.destinations.profile_changes import Erasure, Event, ProfileChange, Reject
from wsync_dagster.destinations.sender import (
    Acknowledged,
    ColumnPacking,
    DestinationError,
    Item,
    JsonRequests,
    Packing,
    Request,
    SendMetrics,
    SendPolicy,
    exchange,
    joined_bodies,
    send_encoded,
)
from wsync_dagster.identities import DEVICE_IDENTITIES

PODS: dict[str, str] = {
    "US1": "https://s2s.us1.mparticle.com",
    "US2": "https://s2s.us2.mparticle.com",
    "EU1": "https://s2s.eu1.mparticle.com",
    "AU1": "https://s2s.au1.mparticle.com",
}
BULK_PATH = "/v2/bulkevents"
HISTORICAL_PATH = "/v2/bulkevents/historical"  # events older than 30 days must come this way
HISTORICAL_AFTER = timedelta(days=30)
# Profiles whose events Arrow encodes at once, while the last chunk's requests go out: a multiple of
# MAX_BATCHES_PER_REQUEST, so a chunk of small batches fills its requests, none kept back to copy into the next.
CHUNK_PROFILES = 4000

# mParticle's documented limits (Default Service Limits).
MAX_BATCHES_PER_REQUEST = 100
MAX_REQUEST_BYTES = 256 * 1024
MAX_BATCH_BYTES = 128 * 1024
MAX_ATTRIBUTES_PER_BATCH = 100
DEFAULT_POLICY = SendPolicy(items_per_second=270)  # the default account limit, in batches per second

# The Data Subject Request API (v3, mParticle's OpenDSR): one host for every pod, the workspace's credentials.
DSR_URL = "https://opendsr.mparticle.com"
DSR_PATH = "/v3/requests"
DSR_API_VERSION = "3.0"
DSR_POLICY = SendPolicy(items_per_second=5, concurrency=2)
REGULATIONS = ("gdpr", "ccpa")
# wsync identity type → OpenDSR identity type in `subject_identities` (mParticle's supported list).
OPENDSR_IDENTITIES: dict[str, str] = {
    "customer_id": "controller_customer_id",
    "email": "email",
    "android_advertising_id": "android_advertising_id",
    "android_uuid": "android_id",
    "fire_advertising_id": "fire_advertising_id",
    "ios_advertising_id": "ios_advertising_id",
    "ios_idfv": "ios_vendor_id",
    "microsoft_advertising_id": "microsoft_advertising_id",
    "microsoft_publisher_id": "microsoft_publisher_id",
    "roku_advertising_id": "roku_advertising_id",
    "roku_publisher_id": "roku_publisher_id",
}
# The identities mParticle takes only in its `opendsr.mparticle.com` extension; an mpid must stand alone.
OPENDSR_EXTENSION_IDENTITIES: dict[str, str] = {
    "other": "other",
    **{f"other_id_{n}": f"other{n}" for n in range(2, 11)},
    "mobile_number": "mobile_number",
    "phone_number_2": "phone_number_2",
    "phone_number_3": "phone_number_3",
}

# wsync identity type → mParticle's `user_identities` key.
USER_IDENTITY_NAMES: dict[str, str] = {
    "customer_id": "customerid",
    "email": "email",
    "facebook": "facebook",
    "twitter": "twitter",
    "google": "google",
    "microsoft": "microsoft",
    "yahoo": "yahoo",
    "facebook_custom_audience_id": "facebook_custom_audience_id",
    "other": "other",
    **{f"other_id_{n}": f"other_id_{n}" for n in range(2, 11)},
    "mobile_number": "mobile_number",
    "phone_number_2": "phone_number_2",
    "phone_number_3": "phone_number_3",
}
# Device identities travel in `device_info` under the same names.
# mp_deviceid is mParticle's own device id: it travels as the batch's `mp_deviceid`, not in `device_info`.
DEVICE_IDENTITY_NAMES: frozenset[str] = frozenset(DEVICE_IDENTITIES) - {"mp_deviceid"}
_SCALARS = (str, bool, int, float)  # what mParticle keeps as is
EVENT_TYPES = ("custom_event", "screen_view", "commerce_event")
_REQUEST_IDS = uuid.UUID("5b0f6f58-3d2c-4f7e-9a51-6d0c1f2e8a47")  # namespace of source_request_ids
_REQUEST_ID_HASH = hashlib.sha1(_REQUEST_IDS.bytes)  # uuid5's hash, its namespace hashed once


class MParticle:
    """One mParticle destination: where its batches go and how they authenticate."""

    def __init__(
        self,
        destination: str,
        api_key: str,
        api_secret: str,
        pod: str = "US1",
        base_url: str | None = None,
        environment: str = "production",
        policy: SendPolicy = DEFAULT_POLICY,
        gzip: bool = False,
        dsr_api_key: str | None = None,
        dsr_api_secret: str | None = None,
        dsr_base_url: str | None = None,
        regulation: str = "gdpr",
    ) -> None:
        if pod not in PODS:
            raise ValueError(f"destination {destination}: pod must be one of {', '.join(PODS)} (got {pod!r})")
        if environment not in ("production", "development"):
            raise ValueError(
                f"destination {destination}: environment must be production or development (got {environment!r})"
            )
        self.destination = destination
        self.base_url = base_url or PODS[pod]
        self.environment = environment
        self.policy = policy
        self.gzip = gzip
        self._credentials = (api_key, api_secret)
        # Erasures authenticate as the workspace; without its own key the feed's is tried.
        self.dsr_base_url = dsr_base_url or base_url or DSR_URL
        self._dsr_credentials = (dsr_api_key or api_key, dsr_api_secret or api_secret)
        self.regulation = regulation  # what erasures are requested under

    def __repr__(self) -> str:
        return f"MParticle({self.destination!r}, base_url={self.base_url!r})"  # never the key

    def accepts_gzip(self, request: Request) -> bool:
        """Only when asked: the Events API's documents we checked do not promise gzip bodies."""
        return self.gzip

    def refuses_credentials(self, response: httpx.Response) -> bool:
        """mParticle refuses credentials with 401/403 only."""
        return False

    def throttle_seconds(self, response: httpx.Response) -> float | None:
        """mParticle says how long to wait in Retry-After only."""
        return None

    def auth(self) -> httpx.Auth:
        """HTTP Basic with the API key and secret."""
        return httpx.BasicAuth(*self._credentials)

    def body(self, request: Request) -> tuple[bytes, str]:
        """The batches as one JSON array."""
        return b"".join((b"[", joined_bodies(request.items), b"]")), "application/json"  # one copy of them

    def item_reasons(self, request: Request, response: httpx.Response) -> dict[int, str]:
        """mParticle does not say which batch of a bulk request was invalid: the sender splits."""
        return {}

    def reason(self, response: httpx.Response) -> str:
        """mParticle's error messages for a rejected request."""
        try:
            errors = response.json().get("errors") or []
            messages = [str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict)]
        except (ValueError, AttributeError):
            messages = []
        return "; ".join(messages) or f"mParticle answered HTTP {response.status_code}"


class ErasureRefused(DestinationError):
    """mParticle refused one erasure request as invalid (400): that person's reject, the others still go."""

    def __init__(self, message: str, profile_id: str, reason: str) -> None:
        super().__init__(message)
        self.reject = Reject(profile_id, reason)


@dataclass(frozen=True)
class ErasureRequest:
    """One OpenDSR erasure request for mParticle's Data Subject Request API, ready to send."""

    profile_id: str
    subject_request_id: str  # derived from the erasure: a resend after a crash is the same request
    body: bytes


@dataclass(frozen=True)
class ErasureAcknowledgement:
    """mParticle took an erasure request: when it expects to be done, or that it had it already."""

    profile_id: str
    subject_request_id: str
    expected_completion_time: str | None
    already_requested: bool = False  # a resend mParticle answered with "already exists" or 409


def erasure_request(erasure: Erasure, regulation: str = "gdpr") -> ErasureRequest | Reject:
    """The person's OpenDSR erasure request, or a reject when no identity of theirs is one mParticle takes."""
    if regulation not in REGULATIONS:
        raise ValueError(f"regulation must be gdpr or ccpa (got {regulation!r})")
    values = {t: v for t, v in erasure.identities.items() if v}
    subject: dict[str, dict[str, str]] = {}
    extension: dict[str, dict[str, str]] = {}
    if values.get("mpid"):
        extension["mpid"] = {"value": values["mpid"], "encoding": "raw"}  # the one user, nothing else allowed
    else:
        for kind, value in sorted(values.items()):
            if kind in OPENDSR_IDENTITIES:
                subject[OPENDSR_IDENTITIES[kind]] = {"value": value, "encoding": "raw"}
            elif kind in OPENDSR_EXTENSION_IDENTITIES:
                extension[OPENDSR_EXTENSION_IDENTITIES[kind]] = {"value": value, "encoding": "raw"}
    if not subject and not extension:
        return Reject(erasure.profile_id, "no identity mParticle's Data Subject Request API can erase by")
    submitted = erasure.requested_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    request_id = _uuid4_from(f"{erasure.profile_id}\x00{erasure.requested_at.isoformat()}")
    body: dict[str, Any] = {
        "regulation": regulation,
        "subject_request_id": request_id,
        "subject_request_type": "erasure",
        "submitted_time": submitted,
        "api_version": DSR_API_VERSION,
    }
    if subject:
        body["subject_identities"] = subject
    if extension:
        body["extensions"] = {"opendsr.mparticle.com": {"subject_identities": extension}}
    return ErasureRequest(erasure.profile_id, request_id, compact_json(body))


def send_erasure(
    destination: MParticle,
    request: ErasureRequest,
    policy: SendPolicy = DSR_POLICY,
    metrics: SendMetrics | None = None,
) -> ErasureAcknowledgement:
    """Submits the erasure request, retried like any send, its requests and bytes added to metrics; raises
    ErasureRefused when mParticle finds it invalid, DestinationError when the send cannot go on
    (credentials, retries exhausted)."""
    platform = JsonRequests(
        destination.destination, destination.dsr_base_url, destination._dsr_credentials, _dsr_reason
    )
    response, sent = exchange(
        platform, Request(DSR_PATH, (Item(request.profile_id, request.body),)), policy, frozenset({400, 409})
    )
    if metrics is not None:
        metrics.add(sent)
    if response.is_success:
        answer = _answer(response)
        when = answer.get("expected_completion_time")
        return ErasureAcknowledgement(request.profile_id, request.subject_request_id, when)
    reason = platform.reason(response)
    if response.status_code == 409 or "already exists" in reason.lower():
        return ErasureAcknowledgement(
            request.profile_id, request.subject_request_id, None, already_requested=True
        )
    raise ErasureRefused(
        f"destination {destination.destination}: mParticle refused the erasure of {request.profile_id}: {reason}",
        request.profile_id,
        reason,
    )


def _dsr_reason(response: httpx.Response) -> str:
    """The Data Subject Request API's messages for a refused request."""
    answer = _answer(response)
    errors = answer.get("errors") or []
    messages = [str(e.get("message") or e.get("reason")) for e in errors if isinstance(e, dict)]
    return "; ".join(messages) or str(
        answer.get("message") or f"mParticle answered HTTP {response.status_code}"
    )


def _uuid4_from(text: str) -> str:
    """A UUID in version 4's format (what OpenDSR asks for) that the same text always gives."""
    return str(uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16], version=4))


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def forward(
    destination: MParticle,
    changes: Iterable[ProfileChange],
    now: datetime | None = None,
    on_acknowledged: Acknowledged | None = None,
    events: pa.Table | None = None,
) -> SendMetrics:
    """Sends the changes as batches, waiting for mParticle's acknowledgement of each request; their events
    come from `events` (event_columns.EVENT_SCHEMA, each profile's together) or else from the changes."""
    rejects: list[Reject] = []
    requests = encode_requests(changes, destination.environment, now, rejects, events)
    return send_encoded(destination, requests, destination.policy, rejects, 0.0, on_acknowledged)


def encode_requests(
    changes: Iterable[ProfileChange],
    environment: str,
    now: datetime | None,
    rejects: list[Reject],
    events: pa.Table | None = None,
) -> Iterator[Request]:
    """The changes' batches packed into requests as they are encoded; what cannot go lands in rejects."""
    changes = list(changes)
    table = events_table(changes) if events is None else events
    table, positions = ec.by_profile(table, [change.profile_id for change in changes])
    starts = np.searchsorted(positions, np.arange(len(changes) + 1))
    historical = Packing(HISTORICAL_PATH, MAX_BATCHES_PER_REQUEST, MAX_REQUEST_BYTES, overhead=2)
    # The bulk batches as columns, cut into requests a chunk at a time: a request's body is one slice.
    bulk = ColumnPacking(BULK_PATH, MAX_BATCHES_PER_REQUEST, MAX_REQUEST_BYTES, overhead=2)
    keys, bodies, counts = bulk.keys, bulk.bodies, bulk.events
    for first in range(0, len(changes), CHUNK_PROFILES):
        chunk = changes[first : first + CHUNK_PROFILES]
        low, high = int(starts[first]), int(starts[first + len(chunk)])
        runs = (
            EventRuns(table.slice(low, high - low), positions[low:high] - first, len(chunk), now, rejects)
            if high > low
            else None
        )
        # The usual changes' batches written first, their events attached and source_request_ids added for
        # all of them at once by Arrow; when every change is usual (as most often), they go in as columns,
        # without a loop over them. A chunk of events alone under the same identity types is written whole.
        heads: list[bytes | None] = []
        if (opened := _event_batches(chunk, environment, runs)) is not None:
            identified = _with_request_ids(opened, closed=False)
        else:
            heads = _usual_heads(chunk, environment, runs)
            identified = _with_request_ids(_with_events(heads, runs))
        events_of = np.asarray(runs.counts(0) if runs is not None else 0, np.int64)
        if len(identified) == len(chunk):
            bulk.add_columns(
                [change.profile_id for change in chunk],
                identified,
                np.broadcast_to(events_of, len(chunk)),
            )
            chunk = []
        usual = iter(identified.to_pylist() if chunk else ())
        for n, change in enumerate(chunk):
            if heads[n] is not None:
                # The usual change, written already: no per-change lists, rejects or second look at it.
                keys.append(change.profile_id)
                bodies.append(next(usual))
                counts.append(int(events_of[n]) if events_of.ndim else 0)
                continue
            recent, old = runs.of(n) if runs is not None else (None, None)
            batches, old_batches, change_rejects = encode_change(change, environment, now, (recent, old))
            rejects.extend(change_rejects)
            for item in batches:
                keys.append(item.key)
                bodies.append(item.body + b",")
                counts.append(item.events)
            for item in old_batches:
                if (closed := historical.add(item)) is not None:
                    yield closed
        yield from bulk.requests(last=first + CHUNK_PROFILES >= len(changes))
    if (rest := historical.rest()) is not None:
        yield rest


@dataclass(slots=True)
class EventRun:
    """One profile's events bound for one path, already JSON: joined for a batch, or one by one to split."""

    joined: bytes  # the events' JSON separated by commas
    count: int
    source: EventRuns
    path: int
    profile: int

    def pairs(self) -> list[tuple[str, bytes]]:
        """(event id, JSON) of each event, for the rare profile whose events exceed a batch."""
        return self.source.pairs(self.path, self.profile)


class EventRuns:
    """The events of some profiles encoded at once, by profile: recent ones and historical ones (older than
    30 days); events of a type mParticle does not take land in rejects."""

    def __init__(
        self,
        events: pa.Table,
        positions: np.ndarray,  # each row's profile: 0 … profiles - 1, ascending
        profiles: int,
        now: datetime | None,
        rejects: list[Reject],
    ) -> None:
        # Per path: the events' JSON, each followed by a comma, as one array; each profile's first event and
        # event count (numpy and lists); the event ids, to split; the events back to back as bytes, once asked.
        self._paths: list[tuple[pa.Array, np.ndarray, list[int], list[int], pa.Array]] = []
        self._texts: list[tuple[bytes, list[int]] | None] = [None, None]
        bodies, known = _event_bodies(events, rejects)
        if known.false_count:
            events, positions = events.filter(known), positions[known.to_numpy(zero_copy_only=False)]
        cutoff_ms = int(((now or datetime.now(UTC)) - HISTORICAL_AFTER).timestamp() * 1000)
        old = pc.less(events.column("timestamp_ms"), cutoff_ms).combine_chunks()
        ids = events.column("event_id").combine_chunks()
        for mask in (pc.invert(old), old):
            if mask.true_count == len(mask):
                part, part_ids, part_positions = bodies, ids, positions
            else:
                part, part_ids = bodies.filter(mask), ids.filter(mask)
                part_positions = positions[mask.to_numpy(zero_copy_only=False)]
            firsts = np.searchsorted(part_positions, np.arange(profiles + 1))
            self._paths.append((part, firsts, firsts.tolist(), np.diff(firsts).tolist(), part_ids))

    def counts(self, path: int) -> list[int]:
        """Each profile's events bound for the path (0 recent, 1 historical): how many."""
        return self._paths[path][3]

    def joined(self, path: int) -> pa.Array:
        """Each profile's events bound for the path as one binary value, their JSON each followed by a
        comma (empty where it has none): a view of the events' array, nothing copied."""
        part, firsts = self._paths[path][:2]
        every = np.frombuffer(part.buffers()[1], dtype=np.int32)[part.offset :] if len(part) else None
        ends = every[firsts] if every is not None else np.zeros(len(firsts), np.int32)
        data = part.buffers()[2] if len(part) else pa.py_buffer(b"")
        return pa.Array.from_buffers(pa.binary(), len(firsts) - 1, [None, pa.py_buffer(ends), data])

    def of(self, profile: int) -> tuple[EventRun | None, EventRun | None]:
        """The profile's recent and historical events, None where it has none."""
        return self._run(0, profile), self._run(1, profile)

    def _run(self, path: int, profile: int) -> EventRun | None:
        count = self._paths[path][3][profile]
        if not count:
            return None
        if (texts := self._texts[path]) is None:  # the rare profile encoded on its own: all joined once
            part, firsts = self._paths[path][:2]
            texts = self._texts[path] = (ec.concatenated(part), ec.offsets(part)[firsts].tolist())
        text, offsets = texts
        return EventRun(
            text[offsets[profile] : offsets[profile + 1] - 1], count, self, path, profile
        )  # no last comma

    def pairs(self, path: int, profile: int) -> list[tuple[str, bytes]]:
        """(event id, JSON) of the profile's events bound for the path."""
        bodies, _, firsts, counts, ids = self._paths[path]
        start, count = firsts[profile], counts[profile]
        texts = bodies.slice(start, count).cast(pa.binary()).to_pylist()
        return list(zip(ids.slice(start, count).to_pylist(), [t[:-1] for t in texts], strict=True))


def _event_bodies(events: pa.Table, rejects: list[Reject]) -> tuple[pa.Array, pa.Array]:
    """The JSON in mParticle's shape of each event of a type it takes, and which those are (the others land
    in rejects); a custom event without further data keys is written by Arrow, any other by _event_json."""
    known = pc.is_in(events.column("event_type"), pa.array(EVENT_TYPES)).combine_chunks()
    if not pc.all(known).as_py():
        for i in np.flatnonzero(~known.to_numpy(zero_copy_only=False)):
            refused = _event(ec.row_event(events, int(i)))
            rejects.append(refused if isinstance(refused, Reject) else Reject(str(i), "unknown event type"))
        events = events.filter(known)
    custom = ec.string_valued(events.column("attributes"), _custom_attributes_text)
    omit = pc.fill_null(pc.equal(custom, "{}"), True)
    bodies = ec.joined(
        [
            '{"event_type":"custom_event","data":{"timestamp_unixtime_ms":',
            ec.numbers(events.column("timestamp_ms")),
            ',"source_message_id":',
            *ec.quoted_pieces(events.column("event_id")),
            *ec.optional(',"custom_attributes":', custom, omit),
            ',"event_name":',
            *ec.quoted_pieces(events.column("name")),
            ',"custom_event_type":',
            *ec.quoted_pieces(pc.fill_null(events.column("custom_event_type"), "other")),
            "}},",  # the separator: a profile's events are one slice of the buffer
        ]
    )
    written = pc.and_(
        pc.equal(events.column("event_type"), "custom_event"), pc.is_null(events.column("data"))
    ).combine_chunks()
    if not pc.all(written).as_py():
        other = pc.invert(written)
        indexes = np.flatnonzero(other.to_numpy(zero_copy_only=False))
        texts = [_event_json(ec.row_event(events, int(i))).decode() + "," for i in indexes]  # type: ignore[union-attr]
        bodies = pc.replace_with_mask(bodies, other, pa.array(texts, pa.string()))
    return bodies, known


def _custom_attributes_text(text: str) -> str:
    """Custom attributes as mParticle keeps them (strings, no nulls), for what Arrow cannot rewrite."""
    values = json.loads(text)
    return compact_json(
        {k: v if type(v) is str else _text(v) for k, v in values.items() if v is not None}
    ).decode()


def encode_change(
    change: ProfileChange,
    environment: str,
    now: datetime | None = None,
    events: tuple[EventRun | None, EventRun | None] | None = None,
) -> tuple[list[Item], list[Item], list[Reject]]:
    """A change as batches for /v2/bulkevents, batches for /v2/bulkevents/historical, and rejects; its
    events encoded already (EventRuns) or else from the change."""
    mpid = change.identities.get("mpid")
    if mpid and not mpid.lstrip("-").isdigit():
        return [], [], [Reject(change.profile_id, "mpid is not a number, as mParticle's ids are")]
    identities = _identities(change.identities)
    if not identities:
        return [], [], [Reject(change.profile_id, "no identity mParticle can resolve a user by")]
    rejects: list[Reject] = []
    if events is None:
        table = events_table([change])
        events = EventRuns(table, np.zeros(table.num_rows, np.int64), 1, now, rejects).of(0)
    recent_events, old_events = events
    base = {"environment": environment, **identities}
    if recent_events is not None and old_events is None and not change.attributes and not change.removed:
        # The usual change of events only: one batch, written at once.
        head = native_json(base)[:-1] + b',"events":[' + recent_events.joined + b"]}"
        if len(head) <= MAX_BATCH_BYTES - 96:
            return [_identified(change.profile_id, head, recent_events.count)], [], rejects
    attributes: dict[str, Any] = {}
    nulls: list[str] = []  # an attribute set to null is a removal too
    for name, value in sorted(change.attributes.items()):
        if value is None:
            nulls.append(name)
        else:
            attributes[name] = value if type(value) in _SCALARS else _attribute_value(value)
    removed = sorted({*change.removed, *nulls}) if change.removed or nulls else []
    if old_events is None and len(attributes) <= MAX_ATTRIBUTES_PER_BATCH >= len(removed):
        single = _single_batch(change.profile_id, base, attributes, removed, recent_events)
        if single is not None:
            return single, [], rejects
    heads: list[dict[str, Any]] = []
    names = sorted(attributes)
    for start in range(0, max(len(names), len(removed), 1), MAX_ATTRIBUTES_PER_BATCH):
        head = dict(base)
        chunk = names[start : start + MAX_ATTRIBUTES_PER_BATCH]
        if chunk:
            head["user_attributes"] = {name: attributes[name] for name in chunk}
        if removed[start : start + MAX_ATTRIBUTES_PER_BATCH]:
            head["deleted_user_attributes"] = removed[start : start + MAX_ATTRIBUTES_PER_BATCH]
        heads.append(head)
    if any(len(native_json(head)) > MAX_BATCH_BYTES - 96 for head in heads):
        return [], [], [Reject(change.profile_id, "attributes larger than mParticle's 128 KB batch limit")]
    recent_pairs = recent_events.pairs() if recent_events is not None else []
    old_pairs = old_events.pairs() if old_events is not None else []
    recent, too_big = _batches(change.profile_id, heads, recent_pairs, base)
    historical, too_big_old = _batches(change.profile_id, [], old_pairs, base)
    rejects.extend(too_big + too_big_old)
    return recent, historical, rejects


_USER_IDENTITY_KINDS = frozenset(USER_IDENTITY_NAMES)
_REMOVALS: dict[tuple[str, ...], list[str]] = {}  # removed names → sorted, each once (a few sets recur)
# Identity types in a change's order → (type, user_identities key) sorted by type, or () when one is not a
# user identity; attribute names in a change's order → sorted, or None when they are already: a few recur.
_IDENTITY_KEYS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_SORTED_NAMES: dict[tuple[str, ...], tuple[str, ...] | None] = {}
_CACHED = 1000  # entries each of those keeps: many distinct ones start it over rather than grow without end
_SCALAR_TYPES = frozenset(_SCALARS)


def _usual_heads(chunk: list[ProfileChange], environment: str, runs: EventRuns | None) -> list[bytes | None]:
    """Each usual change's batch without its events (_usual_head), whether it has recent events from runs;
    None for the others (historical events among them)."""
    if runs is None:
        return [_usual_head(change, environment, False) for change in chunk]
    recent, old = runs.counts(0), runs.counts(1)
    return [
        None if old[n] else _usual_head(change, environment, recent[n] > 0) for n, change in enumerate(chunk)
    ]


def _usual_head(change: ProfileChange, environment: str, events: bool) -> bytes | None:
    """The usual change's one batch, without its events and source_request_id, exactly as encode_change
    writes it: user identities only, scalar attributes (none null) and removals within one batch's limits,
    recent events only (if any); None for any other change (encode_change's)."""
    identities = change.identities
    attributes = change.attributes
    removed = change.removed
    kinds = tuple(identities)
    if (keys := _IDENTITY_KEYS.get(kinds)) is None:
        keys = _cached(_IDENTITY_KEYS, kinds, _user_identity_keys(kinds))
    if (
        not keys
        or len(attributes) > MAX_ATTRIBUTES_PER_BATCH
        or len(removed) > MAX_ATTRIBUTES_PER_BATCH
        or (not events and not attributes and not removed)
    ):
        return None
    user: dict[str, str] = {}
    for kind, key in keys:  # a loop, not a comprehension: no function made a change
        if value := identities[kind]:
            user[key] = value
    if not user:
        return None
    batch: dict[str, Any] = {"environment": environment, "user_identities": user}
    if attributes:
        if not _SCALAR_TYPES.issuperset(map(type, attributes.values())):
            return None  # None (a removal) or a value to convert: encode_change's
        names = tuple(attributes)
        if (order := _SORTED_NAMES.get(names, names)) is names:
            order = _cached(_SORTED_NAMES, names, _sorted_names(names))
        if order is None and type(attributes) is dict:
            batch["user_attributes"] = attributes  # in name order already
        else:
            in_order: dict[str, Any] = {}
            for name in order or sorted(names):
                in_order[name] = attributes[name]
            batch["user_attributes"] = in_order
    if removed:
        if (gone := _REMOVALS.get(removed)) is None:
            gone = _cached(_REMOVALS, removed, sorted(set(removed)))
        batch["deleted_user_attributes"] = gone
    head = native_json(batch)
    if len(head) > MAX_BATCH_BYTES - 96:
        return None
    return head


_EVENTS_KEY = b',"events":['
_IDENTITIES_OF, _ATTRIBUTES_OF, _REMOVED_OF = map(attrgetter, ("identities", "attributes", "removed"))
_KEYS = methodcaller("keys")


def _event_batches(chunk: list[ProfileChange], environment: str, runs: EventRuns | None) -> pa.Array | None:
    """The chunk's batches without their source_request_ids nor their closing brace, by Arrow, when every
    change is the usual one of recent events alone under the same user identity types, whose values need no
    escaping (the bench's); None for any other chunk (_usual_heads' and _with_events'). Byte for byte what
    encode_change writes."""
    if runs is None or not chunk or 0 in runs.counts(0) or any(runs.counts(1)):
        return None
    kinds = chunk[0].identities.keys()
    identities = list(map(_IDENTITIES_OF, chunk))
    if (
        (keys := _user_identity_keys(tuple(kinds))) == ()
        or any(map(_ATTRIBUTES_OF, chunk))
        or any(map(_REMOVED_OF, chunk))
        or not all(map(eq, repeat(kinds), map(_KEYS, identities)))  # map, not a loop: 100k changes
    ):
        return None
    pieces: list[pa.Array | bytes] = [
        native_json({"environment": environment})[:-1] + b',"user_identities":{'
    ]
    for n, (kind, key) in enumerate(keys):
        try:
            values = pa.array(list(map(itemgetter(kind), identities)), pa.string())
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            return None  # not all strings: _usual_head's
        if values.null_count or not pc.all(pc.greater(pc.binary_length(values), 0)).as_py():
            return None  # an empty identity is left out: _usual_head's
        if ec.to_escape(values):
            return None  # json's escaping and pydantic_core's alike, not Arrow's
        pieces += [b'%b"%b":"' % (b"," if n else b"", key.encode()), values.cast(pa.binary()), b'"']
    events = pc.binary_slice(runs.joined(0), 0, -1)  # each profile's events without the last comma
    opened = pc.binary_join_element_wise(*pieces, b'},"events":[', events, b"]", b"")
    if pc.max(pc.binary_length(opened)).as_py() + 1 > MAX_BATCH_BYTES - 96:
        return None  # a batch to split: encode_change's
    return opened


def _with_events(heads: list[bytes | None], runs: EventRuns | None) -> pa.Array:
    """The usual changes' batches (the heads not None) with their recent events inside, as encode_change
    writes them, by Arrow; a batch that grows beyond the batch limit with them is left out, its head set to
    None in heads (encode_change's)."""
    if runs is None:
        return pa.array([head for head in heads if head is not None], pa.binary())
    usual = np.fromiter((head is not None for head in heads), np.bool_, len(heads))
    events = runs.joined(0)  # each profile's events with a comma after each
    sizes = np.diff(ec.offsets(events))
    lengths = np.fromiter((len(head) if head is not None else 0 for head in heads), np.int64, len(heads))
    # head[:-1] + ',"events":[' + the events without the last comma + ']}'
    too_big = usual & (lengths + np.where(sizes > 0, sizes + len(_EVENTS_KEY), 0) > MAX_BATCH_BYTES - 96)
    for n in np.flatnonzero(too_big):
        heads[n] = None
    usual &= ~too_big
    array = pa.array([head for head in heads if head is not None], pa.binary())
    if not usual.all():
        events, sizes = events.filter(pa.array(usual)), sizes[usual]
    if not sizes.any():
        return array
    inside = pc.binary_join_element_wise(_EVENTS_KEY, pc.binary_slice(events, 0, -1), b"]", b"")
    if not sizes.all():  # no events key where a change has no events
        inside = pc.if_else(pa.array(sizes > 0), inside, pa.scalar(b"", pa.binary()))
    return pc.binary_join_element_wise(pc.binary_slice(array, 0, -1), inside, b"}", b"")


def _cached(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """The value, kept in the cache under the key (the cache emptied first when full)."""
    if len(cache) >= _CACHED:
        cache.clear()
    cache[key] = value
    return value


def _user_identity_keys(kinds: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(identity type, user_identities key) sorted by type; () when a type is not a user identity."""
    if not _USER_IDENTITY_KINDS.issuperset(kinds):
        return ()
    return tuple((kind, USER_IDENTITY_NAMES[kind]) for kind in sorted(kinds))


def _sorted_names(names: tuple[str, ...]) -> tuple[str, ...] | None:
    """The names sorted, or None when they are already."""
    ordered = tuple(sorted(names))
    return None if ordered == names else ordered


def _single_batch(
    profile_id: str,
    base: dict[str, Any],
    attributes: dict[str, Any],
    removed: list[str],
    events: EventRun | None,
) -> list[Item] | None:
    """The usual change, one batch encoded at once: None when it needs the batch limit's splitting."""
    batch = dict(base)
    if attributes:
        batch["user_attributes"] = attributes  # sorted by name: the same change is the same batch
    if removed:
        batch["deleted_user_attributes"] = removed
    if not events and len(batch) == len(base):
        return []  # nothing to send
    head = native_json(batch)
    if events:
        head = head[:-1] + b',"events":[' + events.joined + b"]}"
    if len(head) > MAX_BATCH_BYTES - 96:
        return None
    return [_identified(profile_id, head, events.count if events else 0)]


def _batches(
    profile_id: str, heads: list[dict[str, Any]], events: list[tuple[str, bytes]], base: dict[str, Any]
) -> tuple[list[Item], list[Reject]]:
    """Batches of at most MAX_BATCH_BYTES: the attribute heads, then events filling them in order."""
    items: list[Item] = []
    rejects: list[Reject] = []
    heads = list(heads)
    room = MAX_BATCH_BYTES - 96  # for `"events":[]` and the source_request_id added at the end
    base_size = len(native_json(base))
    current: dict[str, Any] | None = None
    current_events: list[bytes] = []
    size = 0

    def start() -> None:
        nonlocal current, current_events, size
        current = heads.pop(0) if heads else dict(base)
        current_events, size = [], len(native_json(current))

    def close() -> None:
        if current is not None and (current_events or len(current) > len(base)):
            items.append(_item(profile_id, current, current_events))

    for event_id, event in events:
        if base_size + len(event) + 1 > room:
            rejects.append(Reject(event_id, "event larger than mParticle's 128 KB batch limit"))
            continue
        if current is None:
            start()
        elif size + len(event) + 1 > room:
            close()
            start()
        current_events.append(event)
        size += len(event) + 1
    close()
    items.extend(_item(profile_id, head, []) for head in heads if len(head) > len(base))
    return items, rejects


def _item(profile_id: str, batch: dict[str, Any], events: list[bytes]) -> Item:
    """A batch with its events and a source_request_id derived from its content."""
    head = native_json(batch)
    if events:
        head = head[:-1] + b',"events":[' + b",".join(events) + b"]}"
    return _identified(profile_id, head, len(events))


def _identified(profile_id: str, head: bytes, events: int) -> Item:
    """The batch with its source_request_id: uuid5 of its content, so a resend is the same request."""
    return Item(key=profile_id, body=_with_request_id(head), events=events)


def _with_request_id(head: bytes, end: bytes = b'"}') -> bytes:
    """The batch with its source_request_id: uuid5 of its content (as hex without dashes); end closes it."""
    digest = _REQUEST_ID_HASH.copy()
    digest.update(head)
    # uuid5's version and variant bits, as uuid.uuid5 sets them: the 13th digit 5, the 17th's top bits 10
    request_id = int.from_bytes(digest.digest()[:16]) & _UUID_KEPT | _UUID5_BITS
    return b'%b,"source_request_id":"%032x%b' % (memoryview(head)[:-1], request_id, end)


_UUID_KEPT = (1 << 128) - 1 - (0xF << 76) - (0x3 << 62)  # all but the version digit and the variant bits
_UUID5_BITS = (0x5 << 76) | (0x2 << 62)
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _with_request_ids(heads: pa.Array, closed: bool = True) -> pa.Array:
    """The batches (binary) with their source_request_id, each followed by a comma (what _with_request_id
    writes): each one hashed in turn from the array's data, their uuid5 bits, hex digits and bodies written
    for all at once by numpy and Arrow. Unless closed, the batches come without their closing brace (hashed
    all the same): no copy of them without it to make."""
    if not len(heads):
        return pa.array([], pa.binary())
    brace = b"" if closed else b"}"
    data = memoryview(heads.buffers()[2] or b"")
    ends = np.frombuffer(heads.buffers()[1], dtype=np.int32)[heads.offset : heads.offset + len(heads) + 1]
    digests = []
    for start, end in zip(ends[:-1].tolist(), ends[1:].tolist(), strict=True):
        digest = _REQUEST_ID_HASH.copy()
        digest.update(data[start:end])
        digest.update(brace)
        digests.append(digest.digest())
    ids = np.frombuffer(b"".join(digests), np.uint8).reshape(len(heads), 20)[:, :16].copy()
    ids[:, 6] = ids[:, 6] & 0x0F | 0x50  # uuid5's version, as uuid.uuid5 sets it
    ids[:, 8] = ids[:, 8] & 0x3F | 0x80  # and its variant
    digits = np.empty((len(heads), 32), np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[ids >> 4]
    digits[:, 1::2] = _HEX_DIGITS[ids & 0x0F]
    texts = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(heads), [None, pa.py_buffer(digits)])
    return pc.binary_join_element_wise(
        pc.binary_slice(heads, 0, -1) if closed else heads,
        b',"source_request_id":"',
        texts.cast(pa.binary()),
        b'"},',
        b"",
    )


def _identities(identities: Mapping[str, str]) -> dict[str, Any]:
    """The batch keys that say who the user is: user_identities, device_info, mpid, mp_deviceid."""
    found: dict[str, Any] = {}
    user: dict[str, str] = {}
    device: dict[str, str] = {}
    for kind, value in sorted(identities.items()):
        if not value:
            continue
        if kind in USER_IDENTITY_NAMES:
            user[USER_IDENTITY_NAMES[kind]] = value
        elif kind in DEVICE_IDENTITY_NAMES:
            device[kind] = value
    if user:
        found["user_identities"] = user
    if device:
        found["device_info"] = device
    if identities.get("mpid"):
        found["mpid"] = int(identities["mpid"])
    if identities.get("mp_deviceid"):
        found["mp_deviceid"] = identities["mp_deviceid"]
    return found


def _event_json(event: Event) -> bytes | Reject:
    """An event's JSON in mParticle's shape; a custom event without further data keys written directly."""
    if event.event_type != "custom_event" or event.data:
        encoded = _event(event)
        return encoded if isinstance(encoded, Reject) else compact_json(encoded)
    # The keys in _event's order, around json's escaping of the values: events are many and alike.
    pairs = [
        f"{json_string(str(k))}:{json_string(v if type(v) is str else _text(v))}"
        for k, v in event.attributes.items()
        if v is not None
    ]
    custom = ',"custom_attributes":{' + ",".join(pairs) + "}" if pairs else ""
    return (
        f'{{"event_type":"custom_event","data":{{"timestamp_unixtime_ms":{int(event.timestamp_ms)},'
        f'"source_message_id":{json_string(event.event_id)}{custom},"event_name":{json_string(event.name)},'
        f'"custom_event_type":{json_string(event.custom_event_type)}}}}}'
    ).encode()


def _event(event: Event) -> dict[str, Any] | Reject:
    """An event in mParticle's shape: event_type and data."""
    if event.event_type not in EVENT_TYPES:
        return Reject(
            event.event_id,
            f"event type {event.event_type!r} is not one mParticle takes ({', '.join(EVENT_TYPES)})",
        )
    data: dict[str, Any] = dict(event.data)
    data["timestamp_unixtime_ms"] = event.timestamp_ms
    data["source_message_id"] = event.event_id
    attributes = {k: v if type(v) is str else _text(v) for k, v in event.attributes.items() if v is not None}
    if attributes:
        data["custom_attributes"] = attributes
    if event.event_type == "custom_event":
        data["event_name"] = event.name
        data["custom_event_type"] = event.custom_event_type
    elif event.event_type == "screen_view":
        data["screen_name"] = event.name
    return {"event_type": event.event_type, "data": data}


def _attribute_value(value: Any) -> Any:
    """A user attribute as mParticle keeps it: a scalar, or a list of strings."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple):
        return [_text(v) for v in value if v is not None]
    return json.dumps(value, sort_keys=True, default=str)


def _text(value: Any) -> str:
    """An event attribute value: mParticle's custom attributes are strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)
