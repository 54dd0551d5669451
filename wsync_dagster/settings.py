"""Where wsync finds sync files and keeps its state, from the environment."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from wsync_dagster.durations import parse_duration

DEFAULT_LOCK_TIMEOUT = "30m"


def syncs_dir() -> Path:
    """The folder of sync files: WSYNC_SYNCS_DIR, else ./syncs."""
    return Path(os.environ.get("WSYNC_SYNCS_DIR", "syncs")).resolve()


def state_dir() -> Path:
    """wsync's own state (default store, batch files): WSYNC_STATE_DIR, else ./.wsync."""
    return Path(os.environ.get("WSYNC_STATE_DIR", ".wsync")).resolve()


def profile_store_url() -> str:
    """The profile store URL: WSYNC_PROFILE_STORE, else a SQLite file in the state folder."""
    return os.environ.get("WSYNC_PROFILE_STORE") or f"sqlite:///{state_dir() / 'profiles.sqlite'}"


def profile_store_kind(url: str | None = None) -> str:
    """Which backend the store URL names, as the UI shows it on the delivery asset: sqlite or postgresql."""
    return "postgresql" if (url or profile_store_url()).startswith(("postgresql", "postgres:")) else "sqlite"


def batches_dir(sync: str, environment: str) -> Path:
    """Where the mapped batch files of one sync and environment live."""
    return state_dir() / "batches" / environment / sync


def lock_timeout() -> timedelta:
    """How long a run waits for a lock (the same sync's run under way, a lock on a PostgreSQL store):
    WSYNC_LOCK_TIMEOUT, else 30m."""
    text = os.environ.get("WSYNC_LOCK_TIMEOUT", "").strip() or DEFAULT_LOCK_TIMEOUT
    try:
        span = parse_duration(text)
    except ValueError:
        span = timedelta(0)
    if span <= timedelta(0):
        raise ValueError(
            f"WSYNC_LOCK_TIMEOUT: {text!r} is not a duration above 0s such as 30s, 30m or 2h "
            f"(default {DEFAULT_LOCK_TIMEOUT})"
        )
    return span


DEFAULT_FORWARD_SLICE = 5000


def forward_slice() -> int:
    """Profiles a forward reads, sends and acknowledges at a time (what a crash may send again):
    WSYNC_FORWARD_SLICE, else 5000."""
    text = os.environ.get("WSYNC_FORWARD_SLICE", "").strip() or str(DEFAULT_FORWARD_SLICE)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"WSYNC_FORWARD_SLICE: {text!r} is not a whole number of profiles above 0")
    return int(text)
