"""Where wsync finds sync files and keeps its state, from the environment."""

from __future__ import annotations

import os
from pathlib import Path


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
