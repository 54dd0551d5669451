"""Kill trials of the forwarder: `wsync forward` SIGKILLed at random moments, then run again, until done.

Every profile update and event reaches the loopback sink; what arrives twice is only what the platforms'
dedup keys absorb (a batch's source_request_id, an event's source_message_id / insert_id, each resent
byte for byte); and the sink's final view of every profile equals the store's, removals included.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from wsync_dagster.cli import main
from wsync_dagster.store import ProfileStore
from wsync_dagster_tests.engines.http_sink import HttpSink
from wsync_dagster_tests.test_forward import (
    AMP_KEY,
    MP_KEY,
    MP_SECRET,
    destinations,
    events_sync,
    full_sync,
    serve_sink,
    warehouse_sql,
)

REPO = Path(__file__).resolve().parents[1]
USERS = 300
EVENTS = 1500
KILLS_PER_FORWARD = 3
SLICE = 40  # profiles a forward acknowledges at a time: a kill finds some slices done and some not
FORWARD_TIMEOUT_S = 120.0

WAREHOUSE = f"""
CREATE TABLE users AS SELECT
    'cust-' || lpad(i::VARCHAR, 5, '0') AS customer_id,
    'u' || i || '@example.com' AS email,
    ['free', 'pro', 'team'][1 + i % 3] AS plan,
    CASE WHEN i % 7 = 0 THEN NULL ELSE 'city' || (i % 11) END AS city
FROM range(1, {USERS + 1}) AS t(i);
CREATE TABLE orders AS SELECT
    'o' || lpad(i::VARCHAR, 6, '0') AS order_id,
    'cust-' || lpad((1 + i % {USERS})::VARCHAR, 5, '0') AS customer_id,
    (i % 90) * 1.5 AS amount,
    now()::TIMESTAMP - INTERVAL (i % 1000) MINUTE AS ordered_at
FROM range({EVENTS}) AS t(i);
"""

# The second delivery: values change, some are removed (NULL), a customer leaves the mirror, events arrive.
CHANGES = f"""
UPDATE users SET plan = 'enterprise' WHERE customer_id LIKE '%3';
UPDATE users SET city = NULL WHERE customer_id LIKE '%5';
DELETE FROM users WHERE customer_id IN ('cust-00010', 'cust-00020');
INSERT INTO orders SELECT 'o' || lpad(i::VARCHAR, 6, '0'), 'cust-' || lpad((1 + i % 50)::VARCHAR, 5, '0'),
    1.0, now()::TIMESTAMP FROM range({EVENTS}, {EVENTS + 300}) AS t(i);
"""


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpSink]:
    """The loopback sink the killed forwarders send to."""
    yield from serve_sink(monkeypatch)


def deliver_without_forwarding(sync: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`wsync run` whose own forward fails (its keys unset): the delivery's changes wait in the outbox."""
    with monkeypatch.context() as keys_unset:
        for name in ("MP_API_KEY", "MP_API_SECRET", "AMP_API_KEY"):
            keys_unset.delenv(name)
        assert main(["run", sync]) == 1


def wsync_process(command: str, sync: str) -> subprocess.Popen:
    """`wsync COMMAND SYNC` (forward, or run: a delivery then its forwards) with the destinations' keys."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MP_API_KEY": MP_KEY,
        "MP_API_SECRET": MP_SECRET,
        "AMP_API_KEY": AMP_KEY,
        "WSYNC_FORWARD_SLICE": str(SLICE),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "wsync_dagster.cli", command, sync],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def kill_at_random_then_finish(
    sync: str, sink: HttpSink, rng: random.Random, command: str = "forward"
) -> list[str]:
    """Kill `wsync COMMAND SYNC` KILLS_PER_FORWARD times at random moments, then let it finish; where each
    landed. `wsync run` is killed while it forwards (after some requests reached the sink)."""
    landed = []
    for _ in range(KILLS_PER_FORWARD):
        before = len(sink.received)
        process = wsync_process(command, sync)
        # Half the kills of a forward after a random number of requests reached the sink, half after a
        # random time (which may land while it starts, reads the outbox or acknowledges).
        if command == "run" or rng.random() < 0.5:
            target = before + rng.randint(1, 12)
            deadline = time.monotonic() + FORWARD_TIMEOUT_S
            while len(sink.received) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
        else:
            time.sleep(rng.uniform(0.0, 2.5))
        finished = process.poll() is not None
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        landed.append("finished" if finished else f"after {len(sink.received) - before} requests")
        if finished:
            assert process.returncode == 0, output
    process = wsync_process(command, sync)
    output, _ = process.communicate(timeout=FORWARD_TIMEOUT_S)
    assert process.returncode == 0, output
    return landed


def assert_only_dedup_absorbs_repeats(sink: HttpSink) -> None:
    """Whatever arrived twice carries the same dedup key and the same bytes as the first time."""
    first: dict[str, dict] = {}
    for batch in sink.batches + sink.historical_batches:
        seen = first.setdefault(batch["source_request_id"], batch)
        assert seen == batch, "one source_request_id, two different batches"
    for event in sink.events:
        seen = first.setdefault("amp/" + event["insert_id"], event)
        assert seen == event, "one insert_id, two different events"


def assert_the_sink_shows_the_store(store: ProfileStore, sink: HttpSink, landed: list[str]) -> None:
    """Every customer's attributes at both platforms are the store's."""
    mparticle_view, amplitude_view = sink.mparticle_profiles(), sink.amplitude_profiles()
    for n in range(1, USERS + 1):
        customer = f"cust-{n:05d}"
        profile = store.profile("customer_id", customer)
        assert profile is not None
        assert mparticle_view[customer] == profile["attributes"], (customer, landed)
        assert amplitude_view[customer] == profile["attributes"], (customer, landed)


def sink_events(sink: HttpSink) -> tuple[set[str], set[str]]:
    mparticle = {
        e["data"]["source_message_id"]
        for b in sink.batches + sink.historical_batches
        for e in b.get("events", [])
    }
    return mparticle, {e["insert_id"] for e in sink.events}


def test_a_forward_killed_at_random_moments_then_run_again_delivers_everything_once_in_effect(
    cli_store: ProfileStore,
    write_sync: Callable,
    make_warehouse: Callable,
    sink: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(os.environ.get("WSYNC_KILL_SEED") or random.SystemRandom().randrange(1_000_000))
    warehouse = make_warehouse(WAREHOUSE)
    write_sync(full_sync(warehouse, destinations=destinations(sink, rate=600)))
    write_sync(events_sync(warehouse, sink, rate=600))
    landed: list[str] = []
    for round_ in (1, 2):
        if round_ == 2:
            warehouse_sql(warehouse, CHANGES)
        for sync in ("crm", "orders"):
            deliver_without_forwarding(sync, monkeypatch)
            landed += kill_at_random_then_finish(sync, sink, rng)
        assert cli_store.pending_profiles("crm", "mp") == cli_store.pending_profiles("crm", "amp") == 0
        assert cli_store.pending_profiles("orders", "mp") == cli_store.pending_profiles("orders", "amp") == 0

    assert sink.violations == []
    assert_only_dedup_absorbs_repeats(sink)
    mparticle_events, amplitude_events = sink_events(sink)
    expected_events = {f"o{i:06d}" for i in range(EVENTS + 300)}
    assert mparticle_events == expected_events
    assert amplitude_events == expected_events
    assert_the_sink_shows_the_store(cli_store, sink, landed)
    mparticle_view, amplitude_view = sink.mparticle_profiles(), sink.amplitude_profiles()
    # Removals arrived as removals: a NULL city, and a customer who left the mirror.
    assert mparticle_view["cust-00015"] == {"plan": "free"} == amplitude_view["cust-00015"]
    assert mparticle_view["cust-00010"] == {} == amplitude_view["cust-00010"]
    assert any("city" in b.get("deleted_user_attributes", []) for b in sink.batches)
    assert any("city" in i["user_properties"].get("$unset", {}) for i in sink.identifies)
    print(json.dumps(landed))


def test_a_wsync_run_killed_while_it_forwards_then_run_again_forwards_the_rest(
    cli_store: ProfileStore, write_sync: Callable, make_warehouse: Callable, sink: HttpSink
) -> None:
    rng = random.Random(os.environ.get("WSYNC_KILL_SEED") or random.SystemRandom().randrange(1_000_000))
    warehouse = make_warehouse(WAREHOUSE)
    write_sync(full_sync(warehouse, destinations=destinations(sink, rate=600)))
    landed = kill_at_random_then_finish("crm", sink, rng, command="run")
    warehouse_sql(warehouse, CHANGES)
    landed += kill_at_random_then_finish("crm", sink, rng, command="run")
    assert cli_store.pending_profiles("crm", "mp") == cli_store.pending_profiles("crm", "amp") == 0
    assert_only_dedup_absorbs_repeats(sink)
    assert_the_sink_shows_the_store(cli_store, sink, landed)
    assert sink.mparticle_profiles()["cust-00010"] == {} == sink.amplitude_profiles()["cust-00010"]
