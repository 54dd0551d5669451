"""`wsync backfill`: a Dagster partition backfill launched through the webserver's GraphQL API, followed to its end.

Dagster has no CLI or Python API that launches an asset backfill; the UI's own mutation does, and the
daemon then runs it. So this talks to a running webserver (`dagster dev`, or a deployment's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from wsync_dagster.modes import sync_mode
from wsync_dagster.spec import SyncSpec

DEFAULT_URL = "http://127.0.0.1:3000"
LOAD_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 1.0
# The statuses a backfill ends in (Dagster's BulkActionStatus).
ENDED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

_WORKSPACE = """
query { workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus } } } }
"""
_ASSETS = "query Assets($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path } } }"
_LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { message }
    ... on Error { message }
  }
}
"""
_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed
          }
        }
      }
    }
    ... on Error { message }
  }
}
"""


class BackfillError(RuntimeError):
    """A backfill that cannot be launched or followed; the message says why and what to do."""


@dataclass
class Progress:
    """Where a backfill stands: its status and, per asset, partitions targeted, done, running, failed."""

    status: str
    assets: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """The backfill will change no more."""
        return self.status in ENDED

    @property
    def succeeded(self) -> bool:
        """Ended with every targeted partition of every asset materialized."""
        return (
            self.ended
            and all(counts["materialized"] == counts["targeted"] for counts in self.assets.values())
            and self.status in {"COMPLETED", "COMPLETED_SUCCESS"}
        )

    def describe(self) -> str:
        """One line: the backfill's status and each asset's partitions."""
        parts = [
            f"{asset}: {c['materialized']}/{c['targeted']} done"
            + (f", {c['in_progress']} running" if c["in_progress"] else "")
            + (f", {c['failed']} failed" if c["failed"] else "")
            for asset, c in self.assets.items()
        ]
        return f"{self.status.lower()}; " + "; ".join(parts) if parts else self.status.lower()


def partition_range(spec: SyncSpec, first: str, last: str, now: datetime | None = None) -> list[str]:
    """The sync's complete partitions from `first` to `last`, both included; an error names what is allowed."""
    if spec.sync.mode != "incremental":
        raise BackfillError(
            f"{spec.name}: a backfill needs time partitions, and a {spec.sync.mode}-mode sync has none "
            f"(its partitions are run keys): use `wsync run {spec.name}`"
        )
    keys = sync_mode(spec).partitions().get_partition_keys(current_time=now or datetime.now(UTC))
    if not keys:
        raise BackfillError(f"{spec.name}: no partition is complete yet, so there is nothing to backfill")
    for option, key in (("--from", first), ("--to", last)):
        if key not in keys:
            raise BackfillError(
                f"{spec.name}: {option} {key} is not one of its complete partitions; "
                f"they run from {keys[0]} to {keys[-1]} ({spec.sync.partition_frequency})"
            )
    start, end = keys.index(first), keys.index(last)
    if start > end:
        raise BackfillError(f"{spec.name}: --from {first} is after --to {last}")
    return keys[start : end + 1]


class Webserver:
    """A Dagster webserver's GraphQL endpoint; every failure to reach it is one BackfillError."""

    def __init__(self, url: str, client: httpx.Client | None = None):
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            # Never the value: a URL may carry user:password or a token.
            raise BackfillError("--url: not the http(s) URL of a Dagster webserver, e.g. http://127.0.0.1:3000")
        path = parsed.path.rstrip("/")
        # Requests keep the user, password and query (a token); messages and links show none of them.
        self._graphql = parsed.copy_with(path=f"{path}/graphql", fragment=None)
        self.url = f"{parsed.scheme}://{parsed.netloc.decode()}{path}"
        self._client = client or httpx.Client(timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def query(self, text: str, **variables: Any) -> dict[str, Any]:
        """Post a GraphQL query; its data."""
        try:
            response = self._client.post(self._graphql, json={"query": text, "variables": variables})
        except httpx.TransportError as error:
            raise BackfillError(
                f"no Dagster webserver answers at {self.url} ({type(error).__name__}): start one with "
                "`dagster dev` (its daemon runs the backfill) or pass --url"
            ) from None
        if response.status_code != 200:
            raise BackfillError(f"the Dagster webserver at {self.url} answered HTTP {response.status_code}")
        body = response.json()
        if body.get("errors"):
            raise BackfillError(f"the Dagster webserver at {self.url}: {body['errors'][0].get('message')}")
        return body["data"]

    def wait_until_loaded(self, timeout_s: float = LOAD_TIMEOUT_S) -> None:
        """Wait while any code location is still loading: a backfill launched then would not find its assets."""
        deadline = time.monotonic() + timeout_s
        while True:
            workspace = self.query(_WORKSPACE)["workspaceOrError"]
            entries = workspace.get("locationEntries", [])
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                return
            if time.monotonic() > deadline:
                raise BackfillError(f"the code locations at {self.url} did not load within {timeout_s:.0f} s")
            time.sleep(POLL_INTERVAL_S)

    def check_assets(self, spec: SyncSpec, asset_keys: list[list[str]]) -> None:
        """Fail unless the webserver serves the sync's assets (it may run another code location)."""
        nodes = self.query(_ASSETS, keys=[{"path": key} for key in asset_keys])["assetNodes"]
        found = {tuple(node["assetKey"]["path"]) for node in nodes}
        missing = ["/".join(key) for key in asset_keys if tuple(key) not in found]
        if missing:
            raise BackfillError(
                f"the Dagster webserver at {self.url} has no asset {', '.join(missing)}: is it serving "
                f"wsync's code location with the sync file of {spec.name}?"
            )

    def launch(self, asset_keys: list[list[str]], partitions: list[str], title: str) -> str:
        """Launch an asset backfill of these partitions; its id."""
        params = {
            "assetSelection": [{"path": key} for key in asset_keys],
            "partitionNames": partitions,
            "fromFailure": False,
            "title": title,
        }
        result = self.query(_LAUNCH, params=params)["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise BackfillError(
                f"Dagster refused the backfill: {result.get('message', result['__typename'])}"
            )
        return result["backfillId"]

    def progress(self, backfill_id: str) -> Progress:
        """Where the backfill stands."""
        backfill = self.query(_STATUS, id=backfill_id)["partitionBackfillOrError"]
        if backfill["__typename"] != "PartitionBackfill":
            raise BackfillError(f"backfill {backfill_id}: {backfill.get('message', backfill['__typename'])}")
        statuses = (backfill.get("assetBackfillData") or {}).get("assetBackfillStatuses", [])
        return Progress(
            backfill["status"],
            {
                "/".join(s["assetKey"]["path"]): {
                    "targeted": s["numPartitionsTargeted"],
                    "materialized": s["numPartitionsMaterialized"],
                    "in_progress": s["numPartitionsInProgress"],
                    "failed": s["numPartitionsFailed"],
                }
                for s in statuses
                if "assetKey" in s
            },
        )


@dataclass(frozen=True)
class BackfillResult:
    """A finished backfill: its id, the partitions asked for, where it ended, and where to see it."""

    backfill_id: str
    partitions: list[str]
    progress: Progress
    url: str


def run_backfill(
    spec: SyncSpec,
    first: str,
    last: str,
    *,
    url: str = DEFAULT_URL,
    wait: bool = True,
    report: Callable[[str], None] = print,
    poll_s: float = POLL_INTERVAL_S,
) -> BackfillResult:
    """Launch a backfill of the sync's partitions first..last through the webserver and follow it to its end."""
    partitions = partition_range(spec, first, last)
    # The sync's job: mapped batches, the delivery and its forward to each destination.
    asset_keys = [
        [spec.name, "mapped_batches"],
        [spec.name, "delivery"],
        *([spec.name, "forward", destination.name] for destination in spec.destinations),
    ]
    webserver = Webserver(url)
    try:
        webserver.wait_until_loaded()
        webserver.check_assets(spec, asset_keys)
        title = f"wsync backfill {spec.name} {partitions[0]}..{partitions[-1]}"
        backfill_id = webserver.launch(asset_keys, partitions, title)
        link = f"{webserver.url}/runs/b/{backfill_id}"
        report(f"{spec.name}: backfill {backfill_id} of {len(partitions)} partitions launched ({link})")
        progress = webserver.progress(backfill_id)
        shown = ""
        while wait and not progress.ended:
            line = progress.describe()
            if line != shown:
                report(f"  {line}")
                shown = line
            time.sleep(poll_s)
            progress = webserver.progress(backfill_id)
        return BackfillResult(backfill_id, partitions, progress, link)
    finally:
        webserver.close()
