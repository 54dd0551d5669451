"""One forward of a destination at a time, across processes and machines sharing the store.

Two forwards of one destination would read the same pending slice and both send it: the platforms' dedup
keys absorb most of it, but each request is paid twice and identifications land twice. The second forward
waits for the first instead, then sends what is still pending (what was delivered meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from wsync_dagster.destinations.sender import DestinationError
from wsync_dagster.durations import describe_duration
from wsync_dagster.progress import Progress, report
from wsync_dagster.store import ProfileStore

POLL_S = 0.25


def forward_lock_name(sync: str, destination: str, environment: str) -> str:
    """The store's named lock of one destination of a sync in an environment."""
    return f"forward|{environment}|{sync}|{destination}"


@contextmanager
def one_forward_at_a_time(
    store: ProfileStore,
    sync: str,
    destination: str,
    environment: str,
    limit: timedelta,
    progress: Progress | None,
) -> Iterator[None]:
    """Hold the destination's forward lock for the block; while another forward holds it, wait up to limit."""
    name = forward_lock_name(sync, destination, environment)
    if not store.try_hold(name):
        report(
            progress,
            f"{sync}: waiting for the forward to {destination} already under way to end; giving up after "
            f"{describe_duration(limit)} (WSYNC_LOCK_TIMEOUT)",
        )
        deadline = time.monotonic() + limit.total_seconds()
        while not store.try_hold(name):
            if time.monotonic() >= deadline:
                raise DestinationError(
                    f"{sync}: waited {describe_duration(limit)} for the forward to {destination} already "
                    "under way and gave up (WSYNC_LOCK_TIMEOUT); nothing was sent"
                )
            time.sleep(POLL_S)
    try:
        yield
    finally:
        store.release(name)
