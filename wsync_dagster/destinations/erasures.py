"""Erasures at the platforms: the deletions `wsync erase` queued for a destination, sent and then removed.

A chunk of queued requests is read with the identities the person was forwarded under, sent, and only once
the platform acknowledged (or refused) each one is it removed from the queue, with its identities and the
platform's refusals kept as rejects (`store.erasures_sent`). A crash before that sends the chunk again, as
the same requests: mParticle's subject_request_id is derived from the erasure, and a resend it answers
"already exists" counts as acknowledged; Amplitude's deletion of a user already being deleted is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from wsync_dagster.destinations import amplitude, mparticle
from wsync_dagster.destinations.amplitude import Amplitude
from wsync_dagster.destinations.mparticle import MParticle
from wsync_dagster.destinations.profile_changes import Erasure, Reject
from wsync_dagster.destinations.sender import SendMetrics
from wsync_dagster.store import ProfileStore

CHUNK = amplitude.MAX_DELETIONS_PER_REQUEST  # queued requests read, sent and removed at a time


@dataclass
class ErasuresSent:
    """What sending a destination's queued deletions did."""

    sent: int = 0  # deletions the platform acknowledged
    rejects: list[Reject] = field(default_factory=list)  # deletions it refused or that cannot be sent
    waiting: int = 0  # deletions left queued (Amplitude without its secret key)
    metrics: SendMetrics = field(default_factory=SendMetrics)  # their requests, bytes, retries and waits


def send_erasures(
    sync: str, environment: str, platform: MParticle | Amplitude, store: ProfileStore, requester: str
) -> ErasuresSent:
    """Send every deletion queued for the destination; each chunk leaves the queue once acknowledged."""
    result = ErasuresSent()
    destination = platform.destination
    if isinstance(platform, Amplitude) and platform._secret_key is None:
        result.waiting = store.pending_erasures(sync, destination)
        return result
    while queued := store.erasure_requests(sync, destination, CHUNK):
        erasures = [
            Erasure(request.profile_id, request.identities, datetime.fromisoformat(request.requested_at))
            for request in queued
        ]
        if isinstance(platform, Amplitude):
            done, rejects = _amplitude(platform, erasures, requester, result.metrics)
        else:
            done, rejects = _mparticle(platform, erasures, result.metrics)
        if not store.erasures_sent(sync, destination, environment, done, rejects):
            break  # nothing left the queue: reading it again would send the same chunk forever
        result.sent += len(done)
        result.rejects.extend(rejects)
    return result


def _mparticle(
    platform: MParticle, erasures: list[Erasure], metrics: SendMetrics
) -> tuple[list[str], list[Reject]]:
    """One OpenDSR erasure request per person; a request mParticle finds invalid is that person's reject."""
    done: list[str] = []
    rejects: list[Reject] = []
    for erasure in erasures:
        request = mparticle.erasure_request(erasure, platform.regulation)
        if isinstance(request, Reject):
            rejects.append(request)
            continue
        try:
            mparticle.send_erasure(platform, request, metrics=metrics)
        except mparticle.ErasureRefused as refused:
            rejects.append(refused.reject)
            continue
        done.append(erasure.profile_id)
    return done, rejects


def _amplitude(
    platform: Amplitude, erasures: list[Erasure], requester: str, metrics: SendMetrics
) -> tuple[list[str], list[Reject]]:
    """One User Privacy API deletion for the chunk's user ids; people without a usable one are rejects."""
    request = amplitude.deletion_request(erasures, requester, user_id_type=platform.user_id)
    if not request.user_ids:
        return [], list(request.rejects)
    acknowledged = amplitude.send_deletion(platform, request, metrics=metrics)
    return acknowledged.profile_ids, acknowledged.rejects
