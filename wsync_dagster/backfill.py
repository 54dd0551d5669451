"""`wsync backfill`: a Dagster backfill of the sync's job launched through the webserver's GraphQL API, followed to its end.

Dagster has no CLI or Python API that launches a backfill; the UI's own mutation does, and the daemon then
runs it. So this talks to a running webserver (`dagster dev`, or a deployment's). A backfill of the job (not
of its assets, whose runs Dagster files under its implicit `__ASSET_JOB`) lists its runs on the job's page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from wsync_dagster.defs import sync_job_name
from wsync_dagster.defs.assets import RUN_TOTALS_PREFIX, delivery_key, forward_keys, mapped_key
from wsync_dagster.modes import sync_mode
from wsync_dagster.progress import pace
from wsync_dagster.run_environment import CANNOT_RUN
from wsync_dagster.run_tags import PARTITION_RANGE_END, PARTITION_RANGE_START, PARTITION_TAG
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
_ASSETS = """
query Assets($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) { assetKey { path } metadataEntries { label ... on TextMetadataEntry { text } } }
}
"""
_JOB_LOCATIONS = """
query {
  repositoriesOrError {
    ... on RepositoryConnection { nodes { name location { name } pipelines { name } } }
  }
}
"""
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
    ... on PartitionBackfill { status runs { runId status tags { key value } } }
    ... on Error { message }
  }
}
"""
_MATERIALIZATIONS = """
query Materializations($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      assetMaterializations {
        assetKey { path }
        partition
        metadataEntries { label __typename ... on IntMetadataEntry { intValue } }
      }
    }
  }
}
"""
_FAILURES = """
query Failures($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection {
        events {
          __typename
          ... on ExecutionStepFailureEvent { stepKey error { message } failureMetadata { description } }
        }
      }
    }
  }
}
"""
# Run statuses after which a run's materializations change no more.
RUN_ENDED = {"SUCCESS", "FAILURE", "CANCELED"}


class BackfillError(RuntimeError):
    """A backfill that cannot be launched or followed; the message says why and what to do."""


@dataclass
class Progress:
    """Where a backfill stands: its status and, per asset, partitions targeted, done, running, failed."""

    status: str
    assets: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per asset, the counts of its partitions' materializations added up, as `wsync run` reports them.
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    # Per failed run, what its first failed step said.
    failures: dict[str, str] = field(default_factory=dict)

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

    def estimate(self, elapsed_s: float) -> str:
        """`2.0 partitions/min, about 15 min left`: from the delivered (or failed) partitions so far."""
        if not self.assets:
            return ""
        # The delivery ends a partition; counting both assets' partitions would double the rate.
        name = next((asset for asset in self.assets if asset.endswith("/delivery")), list(self.assets)[-1])
        counts = self.assets[name]
        return pace(counts["materialized"] + counts["failed"], counts["targeted"], elapsed_s, "partitions")


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
            raise BackfillError(
                "--url: not the http(s) URL of a Dagster webserver, e.g. http://127.0.0.1:3000"
            )
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
        # Its runs would start where the code location loaded, whose environment may lack a variable ours has.
        for node in nodes:
            said = {entry["label"]: entry.get("text") for entry in node["metadataEntries"]}
            if said.get(CANNOT_RUN):
                raise BackfillError(f"{said[CANNOT_RUN]} (at {self.url}: no backfill launched)")

    def job_location(self, spec: SyncSpec, job: str) -> tuple[str, str]:
        """The code location and repository that serve the sync's job."""
        found = self.query(_JOB_LOCATIONS)["repositoriesOrError"].get("nodes", [])
        for repository in found:
            if any(pipeline["name"] == job for pipeline in repository["pipelines"]):
                return repository["location"]["name"], repository["name"]
        raise BackfillError(
            f"the Dagster webserver at {self.url} has no job {job}: is it serving wsync's code location with "
            f"the sync file of {spec.name}?"
        )

    def launch(self, location: tuple[str, str], job: str, partitions: list[str], title: str) -> str:
        """Launch a backfill of the job's partitions, so its runs are the job's (on its page); its id."""
        params = {
            "selector": {
                "partitionSetName": f"{job}_partition_set",
                "repositorySelector": {"repositoryLocationName": location[0], "repositoryName": location[1]},
            },
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


class BackfillWatch:
    """Where a job backfill stands, per asset: read from its runs, each ended run's materializations read once."""

    def __init__(self, webserver: Webserver, backfill_id: str, partitions: list[str], asset_keys: list[str]):
        self._webserver, self._id = webserver, backfill_id
        self._partitions, self._asset_keys = partitions, asset_keys
        self._ended: dict[str, list[dict[str, Any]]] = {}
        self._failures: dict[str, str] = {}

    def progress(self) -> Progress:
        """The backfill's status, its partitions per asset (done, running, failed), and its runs' counts."""
        backfill = self._webserver.query(_STATUS, id=self._id)["partitionBackfillOrError"]
        if backfill["__typename"] != "PartitionBackfill":
            raise BackfillError(f"backfill {self._id}: {backfill.get('message', backfill['__typename'])}")
        done = {asset: set() for asset in self._asset_keys}
        running: set[str] = set()
        failed: set[str] = set()
        totals: dict[str, dict[str, int]] = {asset: {} for asset in self._asset_keys}
        failures: dict[str, str] = {}
        for run in backfill["runs"]:
            covered = self._covered(run["tags"])
            if run["status"] not in RUN_ENDED:
                running.update(covered)
                continue
            if run["status"] != "SUCCESS":
                failed.update(covered)
                failures[run["runId"]] = self._failure(run["runId"])
            for materialization in self._materializations(run["runId"]):
                asset = "/".join(materialization["assetKey"]["path"])
                if asset not in done:
                    continue
                done[asset].add(materialization["partition"])
                for entry in materialization["metadataEntries"]:
                    if "intValue" in entry and not entry["label"].startswith(RUN_TOTALS_PREFIX):
                        counts = totals[asset]
                        counts[entry["label"]] = counts.get(entry["label"], 0) + entry["intValue"]
        targeted = set(self._partitions)
        return Progress(
            backfill["status"],
            {
                asset: {
                    "targeted": len(targeted),
                    "materialized": len(done[asset] & targeted),
                    "in_progress": len((running - done[asset]) & targeted),
                    "failed": len((failed - done[asset]) & targeted),
                }
                for asset in self._asset_keys
            },
            {asset: counts for asset, counts in totals.items() if counts},
            failures,
        )

    def _covered(self, tags: list[dict[str, str]]) -> list[str]:
        """The partitions a run covers: its partition, or its range."""
        by_key = {tag["key"]: tag["value"] for tag in tags}
        if PARTITION_TAG in by_key:
            return [by_key[PARTITION_TAG]]
        first, last = by_key.get(PARTITION_RANGE_START), by_key.get(PARTITION_RANGE_END)
        if first in self._partitions and last in self._partitions:
            return self._partitions[self._partitions.index(first) : self._partitions.index(last) + 1]
        return []

    def _failure(self, run_id: str) -> str:
        """What the run's first failed step said (a wsync failure says which partitions stay delivered)."""
        if run_id not in self._failures:
            run = self._webserver.query(_FAILURES, runId=run_id)["runOrError"]
            events = (run.get("eventConnection") or {}).get("events", [])
            said = [
                (event.get("failureMetadata") or {}).get("description") or event["error"]["message"]
                for event in events
                if event["__typename"] == "ExecutionStepFailureEvent" and event.get("error")
            ]
            self._failures[run_id] = " ".join(said[0].split()) if said else "see the run's logs"
        return self._failures[run_id]

    def _materializations(self, run_id: str) -> list[dict[str, Any]]:
        if run_id not in self._ended:
            run = self._webserver.query(_MATERIALIZATIONS, runId=run_id)["runOrError"]
            self._ended[run_id] = run.get("assetMaterializations", [])
        return self._ended[run_id]


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
        mapped_key(spec).path,
        delivery_key(spec).path,
        *(key.path for key in forward_keys(spec)),
    ]
    job = sync_job_name(spec)
    webserver = Webserver(url)
    try:
        webserver.wait_until_loaded()
        webserver.check_assets(spec, asset_keys)
        location = webserver.job_location(spec, job)
        title = f"wsync backfill {spec.name} {partitions[0]}..{partitions[-1]}"
        backfill_id = webserver.launch(location, job, partitions, title)
        link = f"{webserver.url}/runs/b/{backfill_id}"
        report(f"{spec.name}: backfill {backfill_id} of {len(partitions)} partitions launched ({link})")
        started = time.monotonic()
        watch = BackfillWatch(webserver, backfill_id, partitions, ["/".join(key) for key in asset_keys])
        progress = watch.progress()
        shown = ""
        while wait and not progress.ended:
            line = progress.describe()
            if line != shown:
                estimate = progress.estimate(time.monotonic() - started)
                report(f"  {line}" + (f" ({estimate})" if estimate else ""))
                shown = line
            time.sleep(poll_s)
            progress = watch.progress()
        return BackfillResult(backfill_id, partitions, progress, link)
    finally:
        webserver.close()
