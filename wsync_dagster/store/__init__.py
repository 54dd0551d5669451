"""The profile store: where deliveries land and where profiles are read back.

Rules (README "Profile rules"): every value carries the time it describes; each sync keeps one register
per attribute and compares its own versions; a profile shows the newest value of any sync, ties to the
later delivery; identities change only for a newer row, and never onto another profile's identity.
"""

from __future__ import annotations

import re
from pathlib import Path

from wsync_dagster.store.counts import DeliveryCounts
from wsync_dagster.store.sqlite import Delivery, ProfileStore

__all__ = ["Delivery", "DeliveryCounts", "ProfileStore", "open_profile_store"]

_SQLITE_PREFIX = "sqlite:///"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def open_profile_store(url: str) -> ProfileStore:
    """Open the store at a URL: sqlite:///relative/path or sqlite:////absolute/path."""
    if url.startswith(_SQLITE_PREFIX) and len(url) > len(_SQLITE_PREFIX):
        return ProfileStore(Path(url[len(_SQLITE_PREFIX) :]).expanduser())
    # Only the scheme is named: the rest of a URL may carry credentials.
    match = _SCHEME.match(url)
    scheme = match.group(1) if match else ""
    if scheme == "sqlite":
        raise ValueError("a sqlite profile store URL needs a path: sqlite:///PATH")
    raise ValueError(
        f"unsupported profile store URL scheme {scheme!r}: only sqlite:///PATH is supported"
        if scheme
        else "the profile store URL has no scheme: only sqlite:///PATH is supported"
    )
