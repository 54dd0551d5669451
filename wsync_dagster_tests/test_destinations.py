"""Destinations: mParticle and Amplitude encoders and the HTTP sender, against a strict local sink."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from wsync_dagster.destinations import amplitude, mparticle
from wsync_dagster.destinations.amplitude import Amplitude
from wsync_dagster.destinations.event_columns import events_table
from wsync_dagster.destinations.mparticle import MParticle
from wsync_dagster.destinations.profile_changes import Erasure, Event, ProfileChange, Reject
from wsync_dagster.destinations.sender import DestinationError, SendPolicy
from wsync_dagster_tests.engines import http_sink
from wsync_dagster_tests.engines.http_sink import Fault, HttpSink

MP_KEY = "mp-key-planted-7f3a"
MP_SECRET = "mp-secret-planted-91c2"
AMP_KEY = "amp-key-planted-55d0"
AMP_SECRET = "amp-secret-planted-2b8e"
DSR_KEY = "mp-workspace-key-planted-c41d"
DSR_SECRET = "mp-workspace-secret-planted-e07a"
FAST = SendPolicy(
    items_per_second=100_000,
    concurrency=4,
    timeout_seconds=0.5,
    max_attempts=4,
    backoff_seconds=0.05,
    max_backoff_seconds=0.2,
)
NOW = datetime.now(UTC)
RECENT_MS = int((NOW - timedelta(days=1)).timestamp() * 1000)
OLD_MS = int((NOW - timedelta(days=40)).timestamp() * 1000)
IDFV = "8d4e2f6a-3b1c-4a5d-9e7f-0a1b2c3d4e5f"


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    server = http_sink.start(MP_KEY, MP_SECRET, AMP_KEY, DSR_KEY, DSR_SECRET, AMP_SECRET)
    running = next(server)
    yield running
    server.close()
    assert running.violations == [], "the payloads broke an API contract"


def to_mparticle(sink: HttpSink, secret: str = MP_SECRET) -> MParticle:
    return MParticle("mp", MP_KEY, secret, base_url=sink.url, policy=FAST)


def to_amplitude(sink: HttpSink, key: str = AMP_KEY) -> Amplitude:
    return Amplitude("amp", key, base_url=sink.url, policy=FAST)


def change(n: int, **overrides: object) -> ProfileChange:
    fields: dict[str, object] = {
        "profile_id": f"p{n}",
        "identities": {"customer_id": f"cust-{n:05d}", "email": f"u{n}@example.com"},
        "attributes": {"tier": "gold", "orders": n, "vip": True, "tags": ["a", "b"]},
        "removed": ("old_plan",),
        "events": (
            Event(
                f"e{n}", "custom_event", "purchase", RECENT_MS, {"amount": 12.5, "sku": "X1"}, "transaction"
            ),
        ),
    }
    fields.update(overrides)
    return ProfileChange(**fields)  # type: ignore[arg-type]


def test_mparticle_batch_carries_identities_attributes_removals_and_events(sink: HttpSink) -> None:
    metrics = mparticle.forward(to_mparticle(sink), [change(1), change(2)], now=NOW)

    assert (metrics.items_sent, metrics.events_sent, metrics.rejects) == (2, 2, [])
    first = next(b for b in sink.batches if b["user_identities"]["customerid"] == "cust-00001")
    assert first["environment"] == "production"
    assert first["user_identities"] == {"customerid": "cust-00001", "email": "u1@example.com"}
    assert first["user_attributes"] == {"tier": "gold", "orders": 1, "vip": True, "tags": ["a", "b"]}
    assert first["deleted_user_attributes"] == ["old_plan"]
    assert first["events"] == [
        {
            "event_type": "custom_event",
            "data": {
                "event_name": "purchase",
                "custom_event_type": "transaction",
                "timestamp_unixtime_ms": RECENT_MS,
                "source_message_id": "e1",
                "custom_attributes": {"amount": "12.5", "sku": "X1"},
            },
        }
    ]


def test_mparticle_screen_views_and_device_identities_survive_the_official_models(sink: HttpSink) -> None:
    screen = Event("s1", "screen_view", "checkout", RECENT_MS, {"step": 2})
    person = change(
        3, identities={"customer_id": "cust-00003", "ios_idfv": IDFV, "mpid": "42"}, events=(screen,)
    )

    mparticle.forward(to_mparticle(sink), [person], now=NOW)

    (batch,) = sink.batches
    assert batch["device_info"] == {"ios_idfv": IDFV}
    assert batch["mpid"] == 42
    assert batch["events"][0]["data"]["screen_name"] == "checkout"


def test_a_key_the_mparticle_models_do_not_know_is_lost_on_the_way() -> None:
    batch = {
        "environment": "production",
        "source_request_id": "r",
        "user_identities": {"customerid": "cust-00001", "customer_id": "cust-00001"},
    }

    assert http_sink.round_trip(batch) != batch


def test_mparticle_removals_arrive_as_deleted_user_attributes(sink: HttpSink) -> None:
    destination = to_mparticle(sink)
    mparticle.forward(
        destination, [change(1, attributes={"plan": "pro", "tier": "gold"}, removed=())], now=NOW
    )
    mparticle.forward(destination, [change(1, attributes={}, removed=("plan",), events=())], now=NOW)

    assert sink.batches[-1]["deleted_user_attributes"] == ["plan"]
    assert sink.mparticle_profiles()["cust-00001"] == {"tier": "gold"}


def test_mparticle_requests_hold_at_most_100_batches_and_256_kb(sink: HttpSink) -> None:
    mparticle.forward(to_mparticle(sink), [change(n) for n in range(250)], now=NOW)
    big = {"essay": "x" * 20_000}
    mparticle.forward(to_mparticle(sink), [change(n, attributes=big) for n in range(300, 330)], now=NOW)

    requests = sink.requests_to("/v2/bulkevents")
    assert len(sink.batches) == 280
    assert len(requests) >= 3 + 3  # 250 batches by count; 30 x 20 KB by size
    assert all(r.status == 202 for r in requests)


def test_mparticle_events_older_than_30_days_go_to_historical(sink: HttpSink) -> None:
    old = Event("old", "custom_event", "signup", OLD_MS)
    new = Event("new", "custom_event", "login", RECENT_MS)

    mparticle.forward(to_mparticle(sink), [change(1, events=(old, new))], now=NOW)

    assert [e["data"]["source_message_id"] for b in sink.batches for e in b["events"]] == ["new"]
    (historical,) = sink.historical_batches
    assert [e["data"]["source_message_id"] for e in historical["events"]] == ["old"]
    assert "user_attributes" not in historical


def test_mparticle_source_request_id_is_the_same_for_the_same_change(sink: HttpSink) -> None:
    destination = to_mparticle(sink)
    mparticle.forward(destination, [change(1), change(2)], now=NOW)
    mparticle.forward(destination, [change(1)], now=NOW)

    ids = [b["source_request_id"] for b in sink.batches if b["user_identities"]["customerid"] == "cust-00001"]
    other = next(
        b["source_request_id"] for b in sink.batches if b["user_identities"]["customerid"] == "cust-00002"
    )
    assert len(ids) == 2 and ids[0] == ids[1] != other


def test_429_with_retry_after_and_500_are_retried_until_accepted(sink: HttpSink) -> None:
    sink.plan("/v2/bulkevents", Fault(status=429, retry_after="1"), Fault(status=500))

    started = time.monotonic()
    metrics = mparticle.forward(to_mparticle(sink), [change(1)], now=NOW)

    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert [r.status for r in sink.requests_to("/v2/bulkevents")] == [429, 500, 202]
    assert (metrics.retries, metrics.throttled_waits, metrics.requests, metrics.items_sent) == (2, 1, 3, 1)
    assert len(sink.batches) == 1


def test_a_dropped_connection_is_retried(sink: HttpSink) -> None:
    sink.plan("/2/httpapi", Fault(drop=True))

    metrics = amplitude.forward(to_amplitude(sink), [change(1)])

    assert metrics.retries == 1
    assert [e["insert_id"] for e in sink.events] == ["e1"]


def test_a_slow_response_times_out_and_the_retry_is_absorbed_by_insert_id(sink: HttpSink) -> None:
    sink.plan("/2/httpapi", Fault(delay=1.5))

    metrics = amplitude.forward(to_amplitude(sink), [change(1)])
    time.sleep(1.2)  # the slow answer lands after the retry

    assert metrics.retries == 1
    assert {e["insert_id"] for e in sink.events} == {"e1"}


def test_amplitude_throttled_users_are_waited_out_then_resent(sink: HttpSink) -> None:
    throttled = {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "throttled_users": {"cust-00001": 31},
    }
    sink.plan("/2/httpapi", Fault(status=429, answer=throttled))
    patient = Amplitude("amp", AMP_KEY, base_url=sink.url, policy=replace(FAST, max_retry_after_seconds=0.2))

    started = time.monotonic()
    metrics = amplitude.forward(patient, [change(1)])

    assert time.monotonic() - started >= 0.2  # Amplitude's 30 s pause, capped by the policy
    assert (metrics.throttled_waits, metrics.retries) == (1, 1)
    assert [e["insert_id"] for e in sink.events] == ["e1"]


def test_a_throttled_amplitude_identify_pauses_as_the_identify_api_asks(sink: HttpSink) -> None:
    sink.plan("/identify", Fault(status=429))
    patient = Amplitude("amp", AMP_KEY, base_url=sink.url, policy=replace(FAST, max_retry_after_seconds=0.3))

    started = time.monotonic()
    metrics = amplitude.forward(patient, [change(1, events=())])

    assert time.monotonic() - started >= 0.3  # its 15 s pause, capped by the policy; not a 50 ms backoff
    assert (metrics.throttled_waits, metrics.items_sent) == (1, 1)
    assert [i["user_id"] for i in sink.identifies] == ["cust-00001"]


def test_amplitude_users_over_their_daily_quota_become_rejects_and_the_rest_is_resent(sink: HttpSink) -> None:
    over_quota = {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "exceeded_daily_quota_users": {"cust-00001": 500001},
    }
    sink.plan("/2/httpapi", Fault(status=429, answer=over_quota))

    metrics = amplitude.forward(to_amplitude(sink), [change(n) for n in range(3)])

    assert metrics.rejects == [Reject("e1", "user_id over Amplitude's daily quota (500001 events today)")]
    assert sorted(e["insert_id"] for e in sink.events) == ["e0", "e2"]
    assert [r.status for r in sink.requests_to("/2/httpapi")] == [429, 200]


def test_a_request_that_is_never_acknowledged_marks_none_of_its_items_sent(sink: HttpSink) -> None:
    sink.plan("/v2/bulkevents/historical", *[Fault(status=503)] * FAST.max_attempts)
    old = Event("old", "custom_event", "signup", OLD_MS)
    acknowledged: list[str] = []

    with pytest.raises(DestinationError) as raised:
        mparticle.forward(
            to_mparticle(sink),
            [change(1), change(2, events=(old,))],
            now=NOW,
            on_acknowledged=lambda r: acknowledged.extend(f"{r.path} {i.key}" for i in r.items),
        )

    assert sorted(acknowledged) == ["/v2/bulkevents p1", "/v2/bulkevents p2"]
    assert raised.value.metrics.items_sent == 2 and sink.historical_batches == []


def test_requests_run_concurrently_up_to_the_policy(sink: HttpSink) -> None:
    sink.plan("/v2/bulkevents", *[Fault(delay=0.3)] * 6)
    three = MParticle("mp", MP_KEY, MP_SECRET, base_url=sink.url, policy=replace(FAST, concurrency=3))

    metrics = mparticle.forward(
        three, [change(n, attributes={"essay": "x" * 40_000}) for n in range(40)], now=NOW
    )

    assert metrics.requests >= 6 and len(sink.batches) == 40
    assert sink.max_in_flight == 3


def test_more_than_100_attributes_travel_in_several_mparticle_batches(sink: HttpSink) -> None:
    many = {f"a{n:03d}": n for n in range(150)}
    mparticle.forward(to_mparticle(sink), [change(1, attributes=many)], now=NOW)
    gone = tuple(f"a{n:03d}" for n in range(120))
    mparticle.forward(to_mparticle(sink), [change(1, attributes={}, removed=gone, events=())], now=NOW)

    assert sink.mparticle_profiles()["cust-00001"] == {f"a{n:03d}": n for n in range(120, 150)}
    assert all(len(b.get("deleted_user_attributes", [])) <= 100 for b in sink.batches)


def test_retries_that_never_succeed_stop_with_one_line(sink: HttpSink) -> None:
    sink.plan("/v2/bulkevents", *[Fault(status=503)] * FAST.max_attempts)

    with pytest.raises(DestinationError) as raised:
        mparticle.forward(to_mparticle(sink), [change(1)], now=NOW)

    message = str(raised.value)
    assert "\n" not in message and "destination mp" in message and "HTTP 503" in message
    assert sink.batches == []


def test_mparticle_400_splits_the_request_so_only_the_bad_batch_is_rejected(sink: HttpSink) -> None:
    changes = [change(n) for n in range(10)]
    changes[6] = change(6, attributes={"bad": "value"})
    acknowledged: list[str] = []

    metrics = mparticle.forward(
        to_mparticle(sink),
        changes,
        now=NOW,
        on_acknowledged=lambda r: acknowledged.extend(i.key for i in r.items),
    )

    assert metrics.rejects == [Reject("p6", 'user attribute "bad" is not allowed')]
    assert sorted(acknowledged) == sorted(f"p{n}" for n in range(10) if n != 6)
    assert sorted(b["user_identities"]["customerid"] for b in sink.batches) == [
        f"cust-{n:05d}" for n in range(10) if n != 6
    ]
    assert metrics.items_sent == 9


def test_amplitude_400_rejects_only_the_events_it_names(sink: HttpSink) -> None:
    events = tuple(Event(f"e{n}", "custom_event", "view", RECENT_MS, {"n": n}) for n in range(5))
    events = (*events[:2], Event("e-bad", "custom_event", "view", RECENT_MS, {"bad": 1}), *events[2:])

    metrics = amplitude.forward(to_amplitude(sink), [change(1, events=events)])

    assert metrics.rejects == [Reject("e-bad", "invalid field event_properties")]
    assert sorted(e["insert_id"] for e in sink.events) == ["e0", "e1", "e2", "e3", "e4"]


def test_mparticle_403_stops_with_one_line_naming_the_destination_never_the_key(
    sink: HttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    with pytest.raises(DestinationError) as raised:
        mparticle.forward(to_mparticle(sink, secret="wrong-secret"), [change(n) for n in range(5)], now=NOW)

    message = str(raised.value)
    assert message.startswith("destination mp: ") and "HTTP 403" in message and "\n" not in message
    basic = base64.b64encode(f"{MP_KEY}:wrong-secret".encode()).decode()
    for secret in (MP_KEY, "wrong-secret", basic):
        assert secret not in message and secret not in caplog.text
        assert secret not in repr(to_mparticle(sink, secret=secret))
    assert sink.batches == []


def test_an_unexpected_answer_stops_with_one_line_and_rejects_nothing(sink: HttpSink) -> None:
    nowhere = MParticle("mp", MP_KEY, MP_SECRET, base_url=f"{sink.url}/nowhere", policy=FAST)

    with pytest.raises(DestinationError) as raised:
        mparticle.forward(nowhere, [change(n) for n in range(3)], now=NOW)

    assert str(raised.value) == (
        "destination mp: the platform answered HTTP 404 at /v2/bulkevents; check its base_url"
    )
    assert raised.value.metrics.rejects == [] and len(sink.received) == 1


def test_amplitude_refused_key_stops_without_quoting_it(sink: HttpSink) -> None:
    with pytest.raises(DestinationError) as raised:
        amplitude.forward(to_amplitude(sink, key="amp-wrong-key-123"), [change(1)])

    assert "destination amp" in str(raised.value) and "amp-wrong-key-123" not in str(raised.value)
    assert sink.events == [] and sink.identifies == []


def test_amplitude_identify_sets_and_unsets_removed_properties(sink: HttpSink) -> None:
    destination = to_amplitude(sink)
    amplitude.forward(destination, [change(1, attributes={"plan": "pro", "tier": "gold"}, removed=())])
    amplitude.forward(destination, [change(1, attributes={}, removed=("plan",), events=())])

    assert sink.identifies[-1] == {"user_id": "cust-00001", "user_properties": {"$unset": {"plan": "-"}}}
    assert sink.amplitude_profiles()["cust-00001"] == {"tier": "gold"}


def test_amplitude_events_carry_insert_id_and_travel_gzipped(sink: HttpSink) -> None:
    metrics = amplitude.forward(to_amplitude(sink), [change(n) for n in range(50)])

    assert metrics.events_sent == 50 and metrics.rejects == []
    assert sorted(e["insert_id"] for e in sink.events) == sorted(f"e{n}" for n in range(50))
    assert sink.events[0]["event_type"] == "purchase" and sink.events[0]["time"] == RECENT_MS
    assert all(r.gzip for r in sink.requests_to("/2/httpapi"))
    assert metrics.bytes_sent == sum(len(r.body) for r in sink.received)


def test_amplitude_user_id_shorter_than_5_characters_is_a_reject_never_sent(sink: HttpSink) -> None:
    short = change(1, identities={"customer_id": "abc"})

    metrics = amplitude.forward(to_amplitude(sink), [short, change(2)])

    reason = "user_id shorter than 5 characters (Amplitude's minimum)"
    assert metrics.rejects == [Reject("p1", reason), Reject("e1", reason)]
    assert {i["user_id"] for i in sink.identifies} == {"cust-00002"}
    assert {e["user_id"] for e in sink.events} == {"cust-00002"}


def test_pods_and_regions_choose_the_platform_host() -> None:
    assert MParticle("mp", "k", "s", pod="EU1").base_url == "https://s2s.eu1.mparticle.com"
    assert Amplitude("amp", "k", region="eu").base_url == "https://api.eu.amplitude.com"
    with pytest.raises(
        ValueError, match=r"^destination mp: pod must be one of US1, US2, EU1, AU1 \(got 'EU2'\)$"
    ):
        MParticle("mp", "k", "s", pod="EU2")


ERASED_AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def to_mparticle_workspace(sink: HttpSink, secret: str = DSR_SECRET) -> MParticle:
    return MParticle(
        "mp", MP_KEY, MP_SECRET, base_url=sink.url, policy=FAST, dsr_api_key=DSR_KEY, dsr_api_secret=secret
    )


def to_amplitude_privacy(sink: HttpSink, secret: str | None = AMP_SECRET) -> Amplitude:
    return Amplitude("amp", AMP_KEY, base_url=sink.url, policy=FAST, secret_key=secret)


def erasure(n: int, **identities: str) -> Erasure:
    return Erasure(
        f"p{n}", identities or {"customer_id": f"cust-{n:05d}", "email": f"u{n}@example.com"}, ERASED_AT
    )


def test_mparticle_erasure_is_an_opendsr_request_naming_the_person(sink: HttpSink) -> None:
    request = mparticle.erasure_request(
        erasure(1, customer_id="cust-00001", email="u1@example.com", ios_idfv=IDFV)
    )
    assert not isinstance(request, Reject)

    acknowledged = mparticle.send_erasure(to_mparticle_workspace(sink), request, policy=FAST)

    (received,) = sink.erasures
    assert received["subject_request_type"] == "erasure" and received["regulation"] == "gdpr"
    assert received["submitted_time"] == "2026-12-01T09:30:00Z" and received["api_version"] == "3.0"
    assert received["subject_identities"] == {
        "controller_customer_id": {"value": "cust-00001", "encoding": "raw"},
        "email": {"value": "u1@example.com", "encoding": "raw"},
        "ios_vendor_id": {"value": IDFV, "encoding": "raw"},
    }
    assert acknowledged.subject_request_id == received["subject_request_id"]
    assert acknowledged.expected_completion_time and not acknowledged.already_requested


def test_a_resent_mparticle_erasure_is_the_same_request_and_counts_as_acknowledged(sink: HttpSink) -> None:
    destination = to_mparticle_workspace(sink)
    first = mparticle.erasure_request(erasure(1))
    again = mparticle.erasure_request(erasure(1))  # after a crash between the send and its record
    assert not isinstance(first, Reject) and not isinstance(again, Reject)

    mparticle.send_erasure(destination, first, policy=FAST)
    acknowledged = mparticle.send_erasure(destination, again, policy=FAST)

    assert acknowledged.already_requested and acknowledged.subject_request_id == first.subject_request_id
    assert len(sink.erasures) == 1


def test_an_mparticle_erasure_by_mpid_names_only_the_mpid(sink: HttpSink) -> None:
    request = mparticle.erasure_request(erasure(2, mpid="8675309", email="u2@example.com", other_id_3="x-2"))
    assert not isinstance(request, Reject)

    mparticle.send_erasure(to_mparticle_workspace(sink), request, policy=FAST)

    (received,) = sink.erasures
    assert "subject_identities" not in received
    assert received["extensions"] == {
        "opendsr.mparticle.com": {"subject_identities": {"mpid": {"value": "8675309", "encoding": "raw"}}}
    }


def test_an_mparticle_erasure_without_an_erasable_identity_is_a_reject() -> None:
    assert mparticle.erasure_request(erasure(3, push_token="tok-3")) == Reject(
        "p3", "no identity mParticle's Data Subject Request API can erase by"
    )


def test_a_throttled_mparticle_erasure_waits_and_is_retried(sink: HttpSink) -> None:
    sink.plan("/v3/requests", Fault(status=429, retry_after="0"), Fault(drop=True))
    request = mparticle.erasure_request(erasure(4))
    assert not isinstance(request, Reject)

    mparticle.send_erasure(to_mparticle_workspace(sink), request, policy=FAST)

    assert [r.status for r in sink.requests_to("/v3/requests")] == [429, 0, 201]
    assert len(sink.erasures) == 1


def test_a_refused_mparticle_workspace_key_stops_with_one_line_never_the_key(sink: HttpSink) -> None:
    request = mparticle.erasure_request(erasure(5))
    assert not isinstance(request, Reject)

    with pytest.raises(DestinationError) as raised:
        mparticle.send_erasure(to_mparticle_workspace(sink, secret="wrong-dsr-secret"), request, policy=FAST)

    message = str(raised.value)
    assert message.startswith("destination mp: ") and "HTTP 401" in message and "\n" not in message
    assert all(secret not in message for secret in (DSR_KEY, "wrong-dsr-secret", MP_KEY))
    assert sink.erasures == []


def test_amplitude_deletion_sends_user_ids_100_a_request_with_basic_auth(sink: HttpSink) -> None:
    people = [erasure(n) for n in range(250)]
    acknowledged_batches: list[tuple[str, ...]] = []

    request = amplitude.deletion_request(people, requester="wsync")
    done = amplitude.send_deletion(
        to_amplitude_privacy(sink), request, policy=FAST, on_acknowledged=acknowledged_batches.append
    )

    assert [len(d["user_ids"]) for d in sink.deletions] == [100, 100, 50]
    assert {d["requester"] for d in sink.deletions} == {"wsync"}
    assert [u for d in sink.deletions for u in d["user_ids"]] == [f"cust-{n:05d}" for n in range(250)]
    assert done.profile_ids == [f"p{n}" for n in range(250)] and len(done.jobs) == 3
    assert [len(batch) for batch in acknowledged_batches] == [100, 100, 50]
    basic = base64.b64encode(f"{AMP_KEY}:{AMP_SECRET}".encode()).decode()
    assert {r.authorization for r in sink.requests_to("/api/2/deletions/users")} == {f"Basic {basic}"}


def test_amplitude_deletion_of_short_or_missing_user_ids_is_a_reject_never_sent(sink: HttpSink) -> None:
    people = [erasure(1), erasure(2, customer_id="abc"), erasure(3, email="u3@example.com")]

    done = amplitude.send_deletion(
        to_amplitude_privacy(sink), amplitude.deletion_request(people, requester="wsync"), policy=FAST
    )

    assert done.rejects == [
        Reject("p2", "user_id shorter than 5 characters: never sent to Amplitude"),
        Reject("p3", "no customer_id identity to delete by in Amplitude"),
    ]
    assert [d["user_ids"] for d in sink.deletions] == [["cust-00001"]] and done.profile_ids == ["p1"]


def test_amplitude_deletion_without_a_secret_key_or_with_a_wrong_one_stops_with_one_line(
    sink: HttpSink,
) -> None:
    request = amplitude.deletion_request([erasure(1)], requester="wsync")

    with pytest.raises(DestinationError, match=r"^destination amp: deletions need its secret_key$"):
        amplitude.send_deletion(to_amplitude_privacy(sink, secret=None), request, policy=FAST)
    with pytest.raises(DestinationError) as raised:
        amplitude.send_deletion(to_amplitude_privacy(sink, secret="amp-wrong-secret"), request, policy=FAST)

    message = str(raised.value)
    assert message.startswith("destination amp: ") and "HTTP 401" in message
    assert "amp-wrong-secret" not in message and AMP_KEY not in message
    assert sink.deletions == []


def test_privacy_hosts_follow_the_region_and_the_dsr_host_is_mparticles_one() -> None:
    assert Amplitude("amp", "k", region="eu").privacy_url == "https://analytics.eu.amplitude.com"
    assert Amplitude("amp", "k").privacy_url == "https://amplitude.com"
    assert MParticle("mp", "k", "s", pod="EU1").dsr_base_url == "https://opendsr.mparticle.com"


# Attribute values and texts the column encoders write themselves, and ones they hand to json's escaping.
ODD_ATTRIBUTES = {
    "plain": "x",
    "count": -3,
    "ratio": 0.25,
    "big": 1e20,
    "flag": False,
    "colon": 'a:1,"b":2',
    "nested": {"k": [1, "two"]},
    "nothing": None,
}
ODD_EVENTS = (
    Event('say "hi"\n', "custom_event", "naïve \\ name", RECENT_MS, ODD_ATTRIBUTES, "other"),
    Event("plain-1", "custom_event", "view", RECENT_MS, {"n": 1, "s": "ok"}, "navigation"),
    Event("screen-1", "screen_view", "home", RECENT_MS, {"n": 2}),
    Event("old-1", "custom_event", "signup", OLD_MS, {"n": 3}),
)


def test_mparticle_events_from_columns_arrive_as_the_official_models_read_them(sink: HttpSink) -> None:
    odd = change(1, attributes={}, removed=(), events=ODD_EVENTS)
    plain = change(2, attributes={}, removed=(), events=ODD_EVENTS[1:2])
    table = events_table([odd, plain])
    changes = [replace(odd, events=()), replace(plain, events=())]

    metrics = mparticle.forward(to_mparticle(sink), changes, now=NOW, events=table)

    assert metrics.rejects == [] and metrics.events_sent == 5
    recent = {e["data"]["source_message_id"]: e for b in sink.batches for e in b["events"]}
    assert recent['say "hi"\n']["data"]["event_name"] == "naïve \\ name"
    assert recent['say "hi"\n']["data"]["custom_attributes"] == {
        "plain": "x",
        "count": "-3",
        "ratio": "0.25",
        "big": "1e+20",
        "flag": "false",
        "colon": 'a:1,"b":2',
        "nested": '{"k": [1, "two"]}',
    }
    assert recent["plain-1"]["data"]["custom_attributes"] == {"n": "1", "s": "ok"}
    assert recent["screen-1"]["event_type"] == "screen_view"
    assert recent["screen-1"]["data"]["screen_name"] == "home"
    [historical] = sink.historical_batches
    assert [e["data"]["source_message_id"] for e in historical["events"]] == ["old-1"]
    assert historical["user_identities"]["customerid"] == "cust-00001"


def test_amplitude_events_from_columns_keep_their_properties_and_texts(sink: HttpSink) -> None:
    odd = change(1, attributes={}, removed=(), events=ODD_EVENTS)
    metrics = amplitude.forward(to_amplitude(sink), [replace(odd, events=())], events=events_table([odd]))

    assert metrics.rejects == [] and metrics.events_sent == 4
    sent = {e["insert_id"]: e for e in sink.events}
    assert sent['say "hi"\n']["event_type"] == "naïve \\ name"
    assert sent['say "hi"\n']["event_properties"] == ODD_ATTRIBUTES
    assert sent['say "hi"\n']["user_id"] == "cust-00001"
    assert sent["old-1"]["event_properties"] == {"n": 3}


def test_amplitude_identifications_go_2000_a_request_within_1_mb(sink: HttpSink) -> None:
    many = [change(n, events=()) for n in range(2100)]  # more than one request's 2,000
    large = [change(n, attributes={"bio": "x" * 60_000}, events=()) for n in range(3000, 3030)]  # 1.8 MB

    metrics = amplitude.forward(to_amplitude(sink), many + large)

    assert metrics.items_sent == 2130 and metrics.rejects == []
    assert sorted(i["user_id"] for i in sink.identifies) == sorted(
        c.identities["customer_id"] for c in many + large
    )
    requests = sink.requests_to("/identify")
    assert all(len(r.body) <= amplitude.MAX_REQUEST_BYTES for r in requests)
    assert max(len(json.loads(_form_field(r.body, b"identification"))) for r in requests) == 2000


def _form_field(body: bytes, name: bytes) -> bytes:
    """One field of a multipart/form-data body."""
    part = body.split(b'name="' + name + b'"\r\n\r\n', 1)[1]
    return part.split(b"\r\n--", 1)[0]
