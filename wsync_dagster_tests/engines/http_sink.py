"""A local HTTP sink playing mParticle's Events and Data Subject Request APIs and Amplitude's HTTP V2,
Identify and User Privacy APIs, strictly.

It enforces each API's contract (auth, sizes, item counts, required fields), passes every mParticle
batch through the official `mparticle` package's models (a key they do not know is lost, and the
batch counts as a contract violation), and answers chosen requests with 429 + Retry-After, 500, a
slow response or a dropped connection. `violations` lists every breach of a contract it saw.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import gzip
import json
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mparticle import ApiClient, Configuration, models

MP_MAX_REQUEST_BYTES = 256 * 1024
MP_MAX_BATCH_BYTES = 128 * 1024
MP_MAX_BATCHES = 100
MP_MAX_ATTRIBUTES = 100
AMP_MAX_EVENTS = 2000
AMP_MAX_BYTES = 1_000_000
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000
DSR_IDENTITIES = frozenset(
    {
        "controller_customer_id",
        "email",
        "android_advertising_id",
        "android_id",
        "fire_advertising_id",
        "ios_advertising_id",
        "ios_vendor_id",
        "microsoft_advertising_id",
        "microsoft_publisher_id",
        "roku_advertising_id",
        "roku_publisher_id",
    }
)
DSR_EXTENSION_IDENTITIES = frozenset(
    {
        "mpid",
        "other",
        *(f"other{n}" for n in range(2, 11)),
        "mobile_number",
        "phone_number_2",
        "phone_number_3",
    }
)
AMP_MAX_DELETIONS = 100
PLANTED_INVALID = "bad"  # a user attribute or event property of this name makes the API answer 400

# mParticle's event_type → the model its `data` must survive.
EVENT_MODELS: dict[str, Any] = {
    "custom_event": models.AppEvent,
    "screen_view": models.ScreenViewEvent,
    "commerce_event": models.CommerceEvent,
}
_MODELS_CLIENT = ApiClient(configuration=Configuration())  # only its model reader is used, never its HTTP


@dataclass(frozen=True)
class Fault:
    """How to answer one chosen request instead of normally."""

    status: int | None = None  # answer this status (nothing is ingested)
    retry_after: str | None = None
    delay: float = 0.0  # wait this long first (then answer as planned or normally)
    drop: bool = False  # close the connection without answering (nothing is ingested)
    answer: Any = None  # the body of a planned status (default: a generic error)


@dataclass
class Received:
    """One request as the sink saw it."""

    path: str
    status: int
    gzip: bool
    authorization: str
    body: bytes


@dataclass
class HttpSink:
    """The server's state: credentials, planned faults, what was ingested, contract violations."""

    mparticle_key: str
    mparticle_secret: str
    amplitude_key: str
    dsr_key: str = ""  # the mParticle workspace's credentials (the Events API key's when empty)
    dsr_secret: str = ""
    amplitude_secret: str = ""
    url: str = ""
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    received: list[Received] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)  # accepted by /v2/bulkevents
    historical_batches: list[dict[str, Any]] = field(default_factory=list)
    identifies: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    erasures: list[dict[str, Any]] = field(default_factory=list)  # accepted OpenDSR erasure requests
    deletions: list[dict[str, Any]] = field(default_factory=list)  # accepted Amplitude deletion requests
    violations: list[str] = field(default_factory=list)
    in_flight: int = 0  # requests being answered now
    max_in_flight: int = 0  # the most requests answered at once
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, path: str, *faults: Fault) -> None:
        """The next requests to path get these faults, one each, in order."""
        with self.lock:
            self.faults[path].extend(faults)

    def requests_to(self, path: str) -> list[Received]:
        """The requests made to path, in arrival order."""
        return [r for r in self.received if r.path == path]

    def mparticle_profiles(self) -> dict[str, dict[str, Any]]:
        """customerid → user attributes after every accepted batch, in arrival order."""
        profiles: dict[str, dict[str, Any]] = defaultdict(dict)
        for batch in self.batches + self.historical_batches:
            attributes = profiles[batch["user_identities"]["customerid"]]
            attributes.update(batch.get("user_attributes", {}))
            for name in batch.get("deleted_user_attributes", []):
                attributes.pop(name, None)
        return dict(profiles)

    def amplitude_profiles(self) -> dict[str, dict[str, Any]]:
        """user_id → user properties after every accepted identification, in arrival order."""
        profiles: dict[str, dict[str, Any]] = defaultdict(dict)
        for identify in self.identifies:
            properties = profiles[identify["user_id"]]
            properties.update(identify["user_properties"].get("$set", {}))
            for name in identify["user_properties"].get("$unset", {}):
                properties.pop(name, None)
        return dict(profiles)


def round_trip(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch after passing through the mparticle package's models: unknown keys are lost."""
    deserialize = _MODELS_CLIENT._ApiClient__deserialize  # the package's own JSON → model reader
    model = deserialize({k: v for k, v in batch.items() if k != "events"}, "Batch")
    out = ApiClient.sanitize_for_serialization(model)
    if "events" in batch:
        out["events"] = [_round_trip_event(event) for event in batch["events"]]
    return out


def _round_trip_event(event: dict[str, Any]) -> dict[str, Any]:
    klass = EVENT_MODELS.get(event.get("event_type"))
    if klass is None:
        return {}
    prototype = klass("x") if klass is models.AppEvent else klass()
    data = event.get("data", {})
    deserialize = _MODELS_CLIENT._ApiClient__deserialize
    kwargs = {
        attr: deserialize(data[prototype.attribute_map[attr]], kind)
        for attr, kind in prototype.swagger_types.items()
        if prototype.attribute_map[attr] in data
    }
    return {"event_type": event["event_type"], "data": ApiClient.sanitize_for_serialization(klass(**kwargs))}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the platforms
    sink: HttpSink

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        with self.sink.lock:
            self.sink.in_flight += 1
            self.sink.max_in_flight = max(self.sink.max_in_flight, self.sink.in_flight)
        try:
            self._post()
        finally:
            with self.sink.lock:
                self.sink.in_flight -= 1

    def _post(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = urllib.parse.urlsplit(self.path).path
        with self.sink.lock:
            fault = self.sink.faults[path].popleft() if self.sink.faults[path] else None
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.drop:
            self._record(path, 0, body)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            answer = fault.answer if fault.answer is not None else {"errors": [{"code": "PLANNED"}]}
            return self._answer(path, fault.status, answer, body, headers)
        body_plain = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        try:
            status, answer = self._serve(path, body_plain)
        except Exception as error:  # a payload the sink cannot even read breaks the contract
            self._violation(f"unreadable request: {error!r}")
            status, answer = 400, {"error": "unreadable"}
        self._answer(path, status, answer, body)

    def _serve(self, path: str, body: bytes) -> tuple[int, Any]:
        if path in ("/v2/bulkevents", "/v2/bulkevents/historical"):
            return self._mparticle(path, body)
        if path == "/2/httpapi":
            return self._amplitude_events(body)
        if path == "/identify":
            return self._amplitude_identify(body)
        if path == "/v3/requests":
            return self._mparticle_dsr(body)
        if path == "/api/2/deletions/users":
            return self._amplitude_deletion(body)
        return 404, {"error": "no such endpoint"}

    def _violation(self, what: str) -> None:
        with self.sink.lock:
            self.sink.violations.append(f"{self.path}: {what}")

    def _mparticle(self, path: str, body: bytes) -> tuple[int, Any]:
        if "Authorization" not in self.headers:  # mParticle: 401 without the header, 403 with a wrong one
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "missing credentials"}]}
        if not self._basic(self.sink.mparticle_key, self.sink.mparticle_secret):
            return 403, {"errors": [{"code": "FORBIDDEN", "message": "invalid credentials"}]}
        if len(body) > MP_MAX_REQUEST_BYTES:
            self._violation(f"request of {len(body)} bytes")
            return 413, {"errors": [{"code": "TOO_LARGE"}]}
        batches = json.loads(body)
        if not isinstance(batches, list) or not 1 <= len(batches) <= MP_MAX_BATCHES:
            self._violation("not an array of 1 to 100 batches")
            return 400, {"errors": [{"code": "BAD_REQUEST", "message": "1 to 100 batches"}]}
        now_ms = time.time() * 1000
        for batch in batches:
            problem = _batch_problem(batch, path, now_ms)
            if problem:
                self._violation(problem)
                return 400, {"errors": [{"code": "BAD_REQUEST", "message": problem}]}
            if PLANTED_INVALID in batch.get("user_attributes", {}):
                message = f'user attribute "{PLANTED_INVALID}" is not allowed'
                return 400, {"errors": [{"code": "BAD_REQUEST", "message": message}]}
        with self.sink.lock:
            target = self.sink.historical_batches if path.endswith("historical") else self.sink.batches
            target.extend(batches)
        return 202, None

    def _basic(self, key: str, secret: str) -> bool:
        expected = base64.b64encode(f"{key}:{secret}".encode()).decode()
        return self.headers.get("Authorization") == f"Basic {expected}"

    def _mparticle_dsr(self, body: bytes) -> tuple[int, Any]:
        if not self._basic(
            self.sink.dsr_key or self.sink.mparticle_key, self.sink.dsr_secret or self.sink.mparticle_secret
        ):
            return 401, {"code": 401, "message": "The credentials provided in the request are not valid."}
        if self.headers.get("Content-Type") != "application/json":
            self._violation("a DSR without Content-Type: application/json")
        request = json.loads(body)
        problem = _dsr_problem(request)
        if problem:
            self._violation(problem)
            return 400, {
                "code": 400,
                "message": "Invalid data was detected",
                "errors": [{"message": problem}],
            }
        with self.sink.lock:
            if any(r["subject_request_id"] == request["subject_request_id"] for r in self.sink.erasures):
                message = "Subject request already exists."
                return 400, {
                    "code": 400,
                    "message": message,
                    "errors": [{"domain": "Validation", "message": message}],
                }
            self.sink.erasures.append(request)
        return 201, {
            "expected_completion_time": "2026-12-20T00:00:00Z",
            "received_time": "2026-12-06T00:00:00Z",
            "encoded_request": base64.b64encode(body).decode(),
            "subject_request_id": request["subject_request_id"],
            "controller_id": "3622",
        }

    def _amplitude_deletion(self, body: bytes) -> tuple[int, Any]:
        if not self._basic(self.sink.amplitude_key, self.sink.amplitude_secret):
            return 401, {"error": "Invalid credentials"}
        request = json.loads(body)
        ids = request.get("user_ids", []) + request.get("amplitude_ids", [])
        if not isinstance(request, dict) or not 1 <= len(ids) <= AMP_MAX_DELETIONS:
            self._violation(f"a deletion of {len(ids)} ids (1 to {AMP_MAX_DELETIONS})")
            return 400, {"error": "between 1 and 100 ids"}
        if not all(isinstance(i, str) and len(i) >= 5 for i in request.get("user_ids", [])):
            self._violation(f"a deletion with user ids that are not strings of 5 characters or more: {ids}")
            return 400, {"error": "invalid user ids"}
        if not isinstance(request.get("requester"), str) or not request["requester"]:
            self._violation("a deletion without requester")
        with self.sink.lock:
            self.sink.deletions.append(request)
        requested = [
            {"user_id": i, "requested_on_day": "2026-12-06", "requester": request.get("requester")}
            for i in ids
        ]
        return 200, [{"day": "2026-12-20", "amplitude_ids": requested, "status": "staging"}]

    def _amplitude_events(self, body: bytes) -> tuple[int, Any]:
        if len(body) > AMP_MAX_BYTES:
            self._violation(f"request of {len(body)} bytes")
            return 413, {"code": 413, "error": "Payload too large"}
        request = json.loads(body)
        if request.get("api_key") != self.sink.amplitude_key:
            return 400, {"code": 400, "error": f"Invalid API key: {request.get('api_key')}"}
        events = request.get("events")
        if not isinstance(events, list) or not 1 <= len(events) <= AMP_MAX_EVENTS:
            self._violation("not 1 to 2000 events")
            return 400, {"code": 400, "error": "events"}
        missing: dict[str, list[int]] = defaultdict(list)
        invalid: dict[str, list[int]] = defaultdict(list)
        short: dict[str, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            for name in ("event_type", "user_id", "insert_id", "time"):
                if not event.get(name):
                    missing[name].append(index)
            if len(str(event.get("user_id", ""))) < 5:
                short["user_id"].append(index)
            if not isinstance(event.get("time"), int):
                invalid["time"].append(index)
            if PLANTED_INVALID in event.get("event_properties", {}):
                invalid["event_properties"].append(index)
        if missing or short or set(invalid) - {"event_properties"}:
            self._violation(
                f"events missing {dict(missing)}, short ids {dict(short)}, invalid {dict(invalid)}"
            )
        if missing or short or invalid:
            return 400, {
                "code": 400,
                "error": "Request missing required field"
                if missing
                else "Invalid field values on some events",
                "events_with_missing_fields": missing,
                "events_with_invalid_fields": invalid,
                "events_with_invalid_id_lengths": short,
            }
        with self.sink.lock:
            self.sink.events.extend(events)
        return 200, {"code": 200, "events_ingested": len(events), "payload_size_bytes": len(body)}

    def _amplitude_identify(self, body: bytes) -> tuple[int, Any]:
        form = self._form(body)
        if form.get("api_key") != [self.sink.amplitude_key]:
            return 400, {"code": 400, "error": "Invalid API key"}
        identifications = json.loads(form["identification"][0])
        for identify in identifications:
            operations = set(identify.get("user_properties", {}))
            if len(str(identify.get("user_id", ""))) < 5 or not operations or operations - {"$set", "$unset"}:
                self._violation(f"identification {identify}")
                return 400, {"code": 400, "error": "invalid identification"}
        with self.sink.lock:
            self.sink.identifies.extend(identifications)
        return 200, "success"

    def _form(self, body: bytes) -> dict[str, list[str]]:
        """A form body, x-www-form-urlencoded or multipart/form-data (the two the Identify API takes)."""
        content_type = self.headers.get("Content-Type", "")
        if content_type == "application/x-www-form-urlencoded":
            return urllib.parse.parse_qs(body.decode())
        if not content_type.startswith("multipart/form-data; boundary="):
            self._violation(f"a form of Content-Type {content_type!r}")
            return {}
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        form: dict[str, list[str]] = defaultdict(list)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            form[str(name)].append(part.get_payload(decode=True).decode())
        return dict(form)

    def _record(self, path: str, status: int, body: bytes) -> None:
        with self.sink.lock:
            self.sink.received.append(
                Received(
                    path,
                    status,
                    self.headers.get("Content-Encoding") == "gzip",
                    self.headers.get("Authorization", ""),
                    body,
                )
            )

    def _answer(
        self, path: str, status: int, answer: Any, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self._record(path, status, body)
        payload = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _batch_problem(batch: Any, path: str, now_ms: float) -> str | None:
    """What breaks mParticle's batch contract, or None."""
    if not isinstance(batch, dict):
        return "a batch is not an object"
    if len(json.dumps(batch)) > MP_MAX_BATCH_BYTES:
        return "a batch over 128 KB"
    if batch.get("environment") not in ("production", "development"):
        return "environment missing or not production/development"
    if not (batch.get("user_identities") or batch.get("mpid") or batch.get("device_info")):
        return "a batch names no user"
    if not batch.get("source_request_id"):
        return "no source_request_id"
    if len(batch.get("user_attributes", {})) > MP_MAX_ATTRIBUTES:
        return "more than 100 user attributes"
    for event in batch.get("events", []):
        data = event.get("data", {})
        if event.get("event_type") not in EVENT_MODELS or "timestamp_unixtime_ms" not in data:
            return f"event without a known event_type or a timestamp: {event}"
        if event["event_type"] == "custom_event" and not (
            data.get("event_name") and data.get("custom_event_type")
        ):
            return "custom_event without event_name or custom_event_type"
        old = data["timestamp_unixtime_ms"] < now_ms - THIRTY_DAYS_MS
        if old != path.endswith("historical"):
            return f"event of {data['timestamp_unixtime_ms']} sent to {path}"
    if path.endswith("historical") and not batch.get("events"):
        return "a historical batch without events"
    survived = round_trip(batch)
    if survived != batch:
        return f"lost in the mparticle models: {_difference(batch, survived)}"
    return None


def _dsr_problem(request: Any) -> str | None:
    """What breaks mParticle's OpenDSR v3 request contract, or None."""
    if not isinstance(request, dict):
        return "a DSR is not an object"
    if request.get("regulation") not in ("gdpr", "ccpa"):
        return "regulation missing or not gdpr/ccpa"
    try:
        if uuid.UUID(str(request.get("subject_request_id"))).version != 4:
            return "subject_request_id is not a UUID v4"
    except ValueError:
        return "subject_request_id is not a UUID"
    if request.get("subject_request_type") not in ("access", "portability", "erasure"):
        return "subject_request_type missing or unknown"
    try:
        time.strptime(str(request.get("submitted_time")), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return "submitted_time is not an ISO 8601 UTC time"
    if request.get("api_version", "3.0") != "3.0":
        return "api_version is not 3.0"
    subject = request.get("subject_identities", {})
    extension = request.get("extensions", {}).get("opendsr.mparticle.com", {}).get("subject_identities", {})
    for identities, allowed in ((subject, DSR_IDENTITIES), (extension, DSR_EXTENSION_IDENTITIES)):
        for kind, identity in identities.items():
            if kind not in allowed or set(identity) != {"value", "encoding"} or identity["encoding"] != "raw":
                return f"identity {kind}: {identity}"
    if not subject and not extension:
        return "a DSR names no identity"
    if "mpid" in extension and (subject or len(extension) > 1):
        return "If an mpid is provided, it must be the only identity in the request."
    return None


def _difference(sent: Any, survived: Any, where: str = "") -> str:
    """The first place a batch and its round trip differ."""
    if isinstance(sent, dict) and isinstance(survived, dict):
        for key in sent:
            if key not in survived:
                return f"{where}.{key} dropped"
            found = _difference(sent[key], survived[key], f"{where}.{key}")
            if found:
                return found
        return ""
    if isinstance(sent, list) and isinstance(survived, list) and len(sent) == len(survived):
        for index, (a, b) in enumerate(zip(sent, survived, strict=True)):
            found = _difference(a, b, f"{where}[{index}]")
            if found:
                return found
        return ""
    return "" if sent == survived else f"{where}: {sent!r} became {survived!r}"


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up before its slow answer is what those faults are for: no traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def start(
    mparticle_key: str,
    mparticle_secret: str,
    amplitude_key: str,
    dsr_key: str = "",
    dsr_secret: str = "",
    amplitude_secret: str = "",
) -> Iterator[HttpSink]:
    """Runs the sink on a free loopback port until the generator is closed."""
    sink = HttpSink(mparticle_key, mparticle_secret, amplitude_key, dsr_key, dsr_secret, amplitude_secret)
    handler = type("Handler", (_Handler,), {"sink": sink})
    server = _Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sink.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
