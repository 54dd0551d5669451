"""Forwarding: what a sync's deliveries left in a destination's outbox, sent and then acknowledged.

Slice by slice: the pending profiles are read as they are now (one change each, newest values, removals as
`removed`), sent, and only once the platform took every request of the slice are their outbox rows removed,
with the platform's rejects stored, in one store transaction. A crash before that sends the slice again:
events carry the platforms' dedup keys (source_message_id, insert_id), batches a content-derived
source_request_id, and identifications set the same values again. Then the deletions of erased people
the destination received go out (destinations/erasures.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

from wsync_dagster.destinations import amplitude, mparticle
from wsync_dagster.destinations.amplitude import Amplitude
from wsync_dagster.destinations.config import AmplitudeDestination, MParticleDestination
from wsync_dagster.destinations.erasures import send_erasures
from wsync_dagster.destinations.forward_lock import one_forward_at_a_time
from wsync_dagster.destinations.profile_changes import ProfileChange
from wsync_dagster.destinations.sender import SendMetrics
from wsync_dagster.progress import Progress, report
from wsync_dagster.settings import forward_slice, lock_timeout
from wsync_dagster.spec import SyncSpec
from wsync_dagster.store import ProfileStore


@dataclass
class ForwardReport:
    """What one forward to a destination did."""

    destination: str
    profiles: int = 0  # profiles whose change was sent (or rejected)
    seeded: int = 0  # outbox rows a seed marked
    deletions_sent: int = 0  # deletions of erased people the platform acknowledged
    deletion_rejects: int = 0  # deletions it refused or that could not be sent (kept as rejects)
    erasures_pending: int = 0  # deletion requests of erased people the destination has yet to receive
    metrics: SendMetrics = field(default_factory=SendMetrics)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # one line each, never a value

    def as_metadata(self) -> dict[str, int | float]:
        """The figures as Dagster metadata and the CLI's totals show them: counts and seconds, no value."""
        m = self.metrics
        return {
            "profiles": self.profiles,
            "events": m.events_sent,
            "requests": m.requests,
            "bytes": m.bytes_sent,
            "retries": m.retries,
            "throttled_waits": m.throttled_waits,
            "rejects": len(m.rejects) + self.deletion_rejects,
            "deletions_sent": self.deletions_sent,
            "encode_seconds": round(m.encode_seconds, 3),
            "wait_seconds": round(m.wait_seconds, 3),
        }

    def line(self) -> str:
        """One line of totals."""
        figures = self.as_metadata()
        return f"{self.destination}: " + ", ".join(
            f"{name}={value:,.3f}" if isinstance(value, float) else f"{name}={value:,}"
            for name, value in figures.items()
        )


def destination_of(spec: SyncSpec, name: str) -> MParticleDestination | AmplitudeDestination:
    """The sync's destination of that name; an unknown name lists the sync's destinations."""
    for destination in spec.destinations:
        if destination.name == name:
            return destination
    names = ", ".join(d.name for d in spec.destinations) or "none"
    raise ValueError(f"{spec.name}: no destination named {name!r}; its destinations: {names}")


def forward(
    spec: SyncSpec,
    destination: MParticleDestination | AmplitudeDestination,
    store: ProfileStore,
    *,
    seed: bool = False,
    seed_partitions: list[str] | None = None,
    progress: Progress | None = None,
    slice_profiles: int | None = None,
) -> ForwardReport:
    """Send what is pending for the destination (after seeding it, if asked); raises DestinationError on a
    refusal the run cannot go past (credentials, retries exhausted), with what was acknowledged kept.
    A forward of the same destination under way elsewhere is waited for first (forward_lock.py)."""
    started = time.perf_counter()
    environment = spec.sync.environment
    result = ForwardReport(destination.name)
    platform = destination.platform(environment)  # secrets read now: an unset variable stops here
    with one_forward_at_a_time(store, spec.name, destination.name, environment, lock_timeout(), progress):
        if seed or seed_partitions is not None:
            result.seeded = store.seed_destination(spec.name, destination.name, environment, seed_partitions)
        _send_pending(
            spec, destination.name, platform, store, result, slice_profiles or forward_slice(), progress
        )
        _send_deletions(spec, destination, platform, store, result)
    result.seconds = time.perf_counter() - started
    return result


def _send_pending(
    spec: SyncSpec,
    destination: str,
    platform: mparticle.MParticle | Amplitude,
    store: ProfileStore,
    result: ForwardReport,
    slice_profiles: int,
    progress: Progress | None,
) -> None:
    """The outbox a slice at a time: read, sent, acknowledged."""
    environment = spec.sync.environment
    after: str | None = None
    while True:
        pending = store.pending_forward(spec.name, destination, environment, after, slice_profiles)
        if pending.last_profile_id is None:
            break
        after = pending.last_profile_id
        metrics = _send(platform, pending.changes, pending.event_table)
        refused = {reject.item for reject in metrics.rejects}
        received = [change for change in pending.changes if change.profile_id not in refused]
        store.acknowledge_forward(
            spec.name, destination, environment, pending.rows, metrics.rejects, received
        )
        result.profiles += len(pending.changes)
        result.metrics.add(metrics)
        report(progress, f"{spec.name}: forwarded {result.profiles:,} profiles to {destination}")


def _send_deletions(
    spec: SyncSpec,
    destination: MParticleDestination | AmplitudeDestination,
    platform: mparticle.MParticle | Amplitude,
    store: ProfileStore,
    result: ForwardReport,
) -> None:
    """The deletions of erased people the destination received, and what stays queued."""
    erasures = send_erasures(
        spec.name, spec.sync.environment, platform, store, requester=f"wsync {spec.name}"
    )
    result.deletions_sent = erasures.sent
    result.deletion_rejects = len(erasures.rejects)
    result.metrics.add(erasures.metrics)  # their requests, bytes and waits count with the profiles'
    if erasures.waiting and isinstance(destination, AmplitudeDestination):
        n = erasures.waiting
        requests = (
            f"{n:,} deletion request of erased people stays"
            if n == 1
            else (f"{n:,} deletion requests of erased people stay")
        )
        result.warnings.append(
            f"destination {destination.name}: {requests} queued: {destination.missing_secret_key()}"
        )
    result.erasures_pending = store.pending_erasures(spec.name, destination.name)


def _send(
    platform: mparticle.MParticle | Amplitude, changes: list[ProfileChange], events: pa.Table
) -> SendMetrics:
    if not changes:
        return SendMetrics()
    if isinstance(platform, Amplitude):
        return amplitude.forward(platform, changes, events=events)
    return mparticle.forward(platform, changes, events=events)
