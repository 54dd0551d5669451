"""The profile store as a Dagster resource, chosen per deployment by its URL."""

from __future__ import annotations

from dagster import ConfigurableResource

from wsync_dagster.settings import profile_store_url
from wsync_dagster.store import ProfileStore, open_profile_store


class ProfileStoreResource(ConfigurableResource):
    """Opens the profile store: the `url` given, else WSYNC_PROFILE_STORE, else the embedded default."""

    url: str | None = None

    def open(self) -> ProfileStore:
        """A connection to the store; close it when done."""
        return open_profile_store(self.url or profile_store_url())
