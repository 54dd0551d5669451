"""One `wsync run` of a sync at a time per state folder: a second one waits for the first, saying so.

Two runs of one sync share its batch files (a partition's mapped rows): one run's delivery would remove
the files the other just mapped. An exclusive lock on a file of the state folder (flock, released by the
kernel when its process ends, however it ends) keeps them apart.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from wsync_dagster.durations import describe_duration
from wsync_dagster.settings import state_dir

POLL_S = 0.5


class RunLockTimeout(RuntimeError):
    """The run of the same sync under way did not end within WSYNC_LOCK_TIMEOUT."""


class RunLockInterrupted(KeyboardInterrupt):
    """Interrupted while waiting for the run of the same sync under way."""


@contextmanager
def one_run_at_a_time(
    sync: str, environment: str, limit: timedelta, say: Callable[[str], None]
) -> Iterator[None]:
    """Hold the sync's run lock for the block; while another process holds it, wait up to `limit`."""
    path = state_dir() / "runs" / environment / f"{sync}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as file:
        if not _locked(file):
            holder = _holder(file)
            say(
                f"waiting for the run of {sync} already under way ({holder}) to end; giving up after "
                f"{describe_duration(limit)} (WSYNC_LOCK_TIMEOUT)"
            )
            deadline = time.monotonic() + limit.total_seconds()
            try:
                while not _locked(file):
                    if time.monotonic() >= deadline:
                        raise RunLockTimeout(
                            f"{sync}: waited {describe_duration(limit)} for the run already under way ({holder}) "
                            "and gave up (WSYNC_LOCK_TIMEOUT); nothing ran"
                        )
                    time.sleep(POLL_S)
            except KeyboardInterrupt:
                raise RunLockInterrupted(
                    f"{sync}: interrupted while waiting for the run already under way ({holder}); nothing ran"
                ) from None
        file.seek(0)
        file.truncate()
        file.write(
            f"pid {os.getpid()} on {socket.gethostname()}, started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
        )
        file.flush()
        try:
            yield
        finally:
            file.truncate(0)
            fcntl.flock(file, fcntl.LOCK_UN)


def _locked(file) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(file) -> str:
    """Who holds the lock, as its holder wrote it."""
    file.seek(0)
    return file.read().strip() or "another process"
