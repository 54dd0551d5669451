"""A sync file's `destinations`: one typed entry per platform, secrets only as `{env: VAR}`."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wsync_dagster.destinations import amplitude, mparticle
from wsync_dagster.destinations.amplitude import Amplitude
from wsync_dagster.destinations.mparticle import MParticle
from wsync_dagster.destinations.sender import DestinationError, SendPolicy
from wsync_dagster.identities import IDENTITY_PRIORITY
from wsync_dagster.warehouses.base import EnvValue

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_URL = re.compile(r"https?://[^\s/?#@]+(/[^\s?#@]*)?\Z")


class _Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    # Items a second (mParticle batches, Amplitude events and identifications); the platform's default if left out.
    rate: float | None = Field(None, gt=0)
    base_url: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name) or len(name) > 64:
            raise ValueError("lower-case letters, digits and _, starting with a letter ([a-z][a-z0-9_]*)")
        return name

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        # A URL with user:password@ would carry a secret in the file: refused, without repeating it.
        if url is not None and not _URL.match(url):
            raise ValueError(
                "an http:// or https:// URL of a host (and port), with no user, query or fragment"
            )
        return url.rstrip("/") if url else url

    def _policy(self, default: SendPolicy) -> SendPolicy:
        if self.rate is None:
            return default
        return SendPolicy(**{**default.__dict__, "items_per_second": self.rate})


class MParticleDestination(_Destination):
    """mParticle's Events API (`/v2/bulkevents`), HTTP Basic with the key and secret."""

    type: Literal["mparticle"]
    pod: Literal["US1", "US2", "EU1", "AU1"] = "US1"
    api_key: EnvValue
    api_secret: EnvValue
    # The batches' environment; the sync's environment when left out.
    environment: Literal["development", "production"] | None = None
    # The workspace's credentials for erasures (Data Subject Request API); the feed's key and secret if left out.
    dsr_api_key: EnvValue | None = None
    dsr_api_secret: EnvValue | None = None
    # The privacy regulation an erasure is requested under (OpenDSR's `regulation`).
    regulation: Literal["gdpr", "ccpa"] = "gdpr"

    def platform(self, sync_environment: str) -> MParticle:
        """The platform client, with its secrets read from the environment now."""
        return MParticle(
            self.name,
            _secret(self, "api_key", self.api_key),
            _secret(self, "api_secret", self.api_secret),
            pod=self.pod,
            base_url=self.base_url,
            environment=self.environment or sync_environment,
            policy=self._policy(mparticle.DEFAULT_POLICY),
            dsr_api_key=_secret(self, "dsr_api_key", self.dsr_api_key) if self.dsr_api_key else None,
            dsr_api_secret=_secret(self, "dsr_api_secret", self.dsr_api_secret)
            if self.dsr_api_secret
            else None,
            regulation=self.regulation,
        )


class AmplitudeDestination(_Destination):
    """Amplitude's Identify and HTTP V2 APIs; the secret key is for deletions (User Privacy API)."""

    type: Literal["amplitude"]
    api_key: EnvValue
    secret_key: EnvValue | None = None
    region: Literal["us", "eu"] = "us"
    # The identity type sent as Amplitude's user_id.
    user_id: str = "customer_id"

    @field_validator("user_id")
    @classmethod
    def _identity(cls, identity: str) -> str:
        if identity not in IDENTITY_PRIORITY:
            raise ValueError(f"an identity type: one of {', '.join(IDENTITY_PRIORITY)}")
        return identity

    def platform(self, sync_environment: str) -> Amplitude:
        """The platform client, with its keys read from the environment now (the secret key if set: only
        deletions need it, and without it they wait while profiles and events still go)."""
        return Amplitude(
            self.name,
            _secret(self, "api_key", self.api_key),
            region=self.region,
            base_url=self.base_url,
            user_id=self.user_id,
            policy=self._policy(amplitude.DEFAULT_POLICY),
            secret_key=os.environ.get(self.secret_key.env) or None if self.secret_key else None,
        )

    def missing_secret_key(self) -> str:
        """Why deletions cannot go: the field, and its variable when one is named (never a value)."""
        if self.secret_key is None:
            return "secret_key is not set in its sync file entry"
        return f"secret_key: environment variable {self.secret_key.env} is not set"


Destination = Annotated[MParticleDestination | AmplitudeDestination, Field(discriminator="type")]
DESTINATION_TYPES = ("mparticle", "amplitude")


def check_unique_names(destinations: list[Any]) -> None:
    """Each destination of a sync has its own name: it is its asset's key and its outbox."""
    seen: set[str] = set()
    for index, destination in enumerate(destinations):
        if destination.name in seen:
            raise ValueError(f"destinations[{index}].name: '{destination.name}' is used twice in this sync")
        seen.add(destination.name)


def _secret(destination: _Destination, field: str, value: EnvValue) -> str:
    """The variable's value; an unset one stops with the field and the variable, never a value."""
    found = os.environ.get(value.env)
    if not found:
        raise DestinationError(
            f"destination {destination.name}: {field}: environment variable {value.env} is not set"
        )
    return found
