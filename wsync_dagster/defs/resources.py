"""The profile store as a Dagster resource, chosen per deployment by an environment variable."""

from __future__ import annotations

import os
import re
from typing import Any

from dagster import ConfigurableResource, EnvVar

from wsync_dagster.settings import profile_store_url
from wsync_dagster.store import ProfileStore, ProfileStoreError, open_profile_store

_PASSWORD_PARAMETER = re.compile(r"[?&]password=", re.IGNORECASE)


class ProfileStoreResource(ConfigurableResource):
    """Opens the profile store named by an environment variable: `url_env`, else WSYNC_PROFILE_STORE.

    `url=EnvVar("NAME")` is the same as `url_env="NAME"`. A plain `url` is for URLs without a password
    (a SQLite file): Dagster keeps resource config in its runs and shows it in the UI.
    """

    url: str | None = None
    url_env: str | None = None

    def __init__(self, **config: Any):
        url = config.get("url")
        if isinstance(url, EnvVar):
            # Only the name goes into Dagster's config; the URL is read from the environment when a run opens the store.
            config = {**config, "url": None, "url_env": url.env_var_name}
        elif url is not None:
            _refuse_password(url)
        super().__init__(**config)

    def open(self) -> ProfileStore:
        """A connection to the store; close it when done."""
        return open_profile_store(self._store_url())

    def _store_url(self) -> str:
        if self.url is not None:
            return self.url
        if self.url_env is None:
            return profile_store_url()
        value = os.environ.get(self.url_env)
        if not value:
            raise ProfileStoreError(
                f"profile_store resource: the environment variable {self.url_env} (url_env) is not set; "
                "it holds the profile store URL"
            )
        return value


def _refuse_password(url: str) -> None:
    """Refuse a store URL with a password as plain Dagster config, in one line that shows none of it."""
    if url.startswith("sqlite:"):
        return
    # Up to the last @: a password holding an unencoded / ? # or @ still counts as one.
    userinfo = url.split("://", 1)[-1].rpartition("@")[0]
    if ":" in userinfo or _PASSWORD_PARAMETER.search(url):
        raise ProfileStoreError(
            "profile_store resource: url holds a password, which Dagster would keep in its runs and show in "
            'its UI; pass url=EnvVar("WSYNC_PROFILE_STORE") or url_env="WSYNC_PROFILE_STORE" and set that '
            "variable to the URL"
        )
