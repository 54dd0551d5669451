"""Per sync: a partitioned asset of mapped batches, a partitioned delivery into the profile store, and a
forward to each of its destinations, partitioned like the delivery."""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial

import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BetaWarning,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from wsync_dagster.batches import BatchFile
from wsync_dagster.bookkeeping import add_partition_metadata
from wsync_dagster.changes import change_feed
from wsync_dagster.defs.pools import warehouse_pool
from wsync_dagster.defs.resources import ProfileStoreResource
from wsync_dagster.defs.sources import source_keys
from wsync_dagster.defs.warehouses import WarehouseResource, warehouse_key
from wsync_dagster.delivery import deliver_partitions
from wsync_dagster.destinations.config import AmplitudeDestination, MParticleDestination
from wsync_dagster.destinations.forwarding import forward
from wsync_dagster.iterator_extent import newest_iterator
from wsync_dagster.mapped_batches import MapCounts, map_counts_by_partition, map_partition
from wsync_dagster.modes import RunScope, sync_mode
from wsync_dagster.read_plan import OpenReader
from wsync_dagster.run_environment import CANNOT_RUN, UNSET_VARIABLES, cannot_run, unset_variables
from wsync_dagster.run_tags import ALLOW_MASS_REMOVAL, PARTITIONS, count_tags
from wsync_dagster.settings import batches_dir, profile_store_kind
from wsync_dagster.spec import SyncSpec

REJECT_RATE_CHECK = "reject_rate"
DATA_DELAY_CHECK = "data_delay"
MIRROR_REMOVAL_CHECK = "mirror_removal"
# Deliveries take a slot of this pool (dagster.yaml limits it): the embedded store has one writer at a time.
PROFILE_STORE_POOL = "profile_store"
STORE_RESOURCE = "profile_store"  # the ProfileStoreResource's key in the definitions
# Metadata of a range run's last partition that holds the whole run's totals (run_partitions, run_rows_read, …).
RUN_TOTALS_PREFIX = "run_"


def batch_file(spec: SyncSpec, label: str) -> BatchFile:
    """The batch files of one partition label."""
    return BatchFile(batches_dir(spec.name, spec.sync.environment), label)


def mapped_key(spec: SyncSpec) -> AssetKey:
    """Key of the sync's mapped-batches asset."""
    return AssetKey([spec.name, "mapped_batches"])


def delivery_key(spec: SyncSpec) -> AssetKey:
    """Key of the sync's delivery asset."""
    return AssetKey([spec.name, "delivery"])


def forward_key(spec: SyncSpec, destination: str) -> AssetKey:
    """Key of the asset that forwards the sync's changes to one destination."""
    return AssetKey([spec.name, "forward", destination])


def forward_keys(spec: SyncSpec) -> list[AssetKey]:
    """Keys of the sync's forward assets, one per destination."""
    return [forward_key(spec, destination.name) for destination in spec.destinations]


def _preview_markdown(profiles: list[dict], values: bool) -> str:
    """A few changed profiles; identity and attribute values only when the sync opts in (sync.preview_values).

    Dagster keeps metadata in its event log, which no erasure reaches: by default it gets names only.
    """
    if not profiles:
        return "_no profiles changed_"
    lines = ["| profile_id | identities | attributes |", "|---|---|---|"]
    for profile in profiles:
        identities, attributes = profile["identities"], list(profile["attributes"].items())[:8]
        if values:
            shown = (
                ", ".join(f"{k}={v}" for k, v in identities.items()),
                ", ".join(f"{k}={v!r}" for k, v in attributes),
            )
        else:
            shown = (", ".join(identities), ", ".join(name for name, _ in attributes))
        lines.append(f"| {profile['profile_id']} | {shown[0]} | {shown[1]} |".replace("\n", " "))
    return "\n".join(lines)


def with_run_totals(
    by_partition: dict[str, dict], totals: dict[str, int], scope: RunScope
) -> dict[str, dict]:
    """Each partition's own counts; a range run's last partition also carries the run's totals.

    Dagster stores a materialization per partition, the last partition's last: that is the asset's latest
    materialization, which the UI shows first, and it then says what the whole run did, not only that window.
    """
    if len(scope.partitions) < 2:
        return by_partition
    last = scope.partitions[-1].key
    run = {f"{RUN_TOTALS_PREFIX}partitions": scope.label}
    run.update({f"{RUN_TOTALS_PREFIX}{name}": value for name, value in totals.items()})
    return {**by_partition, last: {**by_partition.get(last, {}), **run}}


def _spans(kept: list[str], keys: list[str]) -> str:
    """Keys as runs of consecutive ones in `keys`' order: "A..C, E"."""
    spans: list[list[str]] = []
    for index, key in enumerate(keys):
        if key not in kept:
            continue
        if spans and keys[index - 1] == spans[-1][-1]:
            spans[-1].append(key)
        else:
            spans.append([key])
    return ", ".join(span[0] if len(span) == 1 else f"{span[0]}..{span[-1]}" for span in spans)


def still_delivered(context: AssetExecutionContext, spec: SyncSpec, scope: RunScope) -> str | None:
    """Which of a failing run's partitions an earlier run delivered, which its failure does not undo; None if none.

    Dagster marks every partition of a failed run failed (red), delivered or not: the failure says which stay.
    """
    keys = [partition.key for partition in scope.partitions]
    delivered = context.instance.get_materialized_partitions(delivery_key(spec))
    kept = [key for key in keys if key in delivered]
    if not kept:
        return None
    if len(kept) == 1:
        return f"partition {kept[0]} is still delivered: the profile store keeps its last delivery"
    return f"partitions {_spans(kept, keys)} are still delivered: the profile store keeps their last delivery"


@contextmanager
def failures_say_what_stays_delivered(
    context: AssetExecutionContext, spec: SyncSpec, scope: RunScope
) -> Iterator[None]:
    """A failure of the step says which of its partitions stay delivered; an interrupt passes as it is."""
    try:
        yield
    except Exception as error:
        kept = still_delivered(context, spec, scope)
        if kept is None:
            raise
        said, retry = (
            (error.description, error.allow_retries) if isinstance(error, Failure) else (str(error), True)
        )
        raise Failure(
            description=f"{said}; {kept}", metadata={"still_delivered": kept}, allow_retries=retry
        ) from error


def stored_fingerprints(profile_store: ProfileStoreResource, spec: SyncSpec) -> pa.Table:
    """The store's fingerprints of the sync, for a warehouse that compares its rows with them."""
    store = profile_store.open()
    try:
        return store.fingerprints(spec.name, spec.sync.environment)
    finally:
        store.close()


def tag_run(context: AssetExecutionContext, tags: dict[str, str]) -> None:
    """Add tags to the run, shown in the UI's run lists: its range, its counts."""
    context.instance.add_run_tags(context.run_id, tags)


def reject_rate_failure(spec: SyncSpec, counts: MapCounts, batches: BatchFile) -> str:
    """Why the reject-rate check failed; a blocked delivery says so, and names the most common reason, since
    its rejects never reach the store that `wsync rejects` reads."""
    share = f"{counts.reject_rate:.1%} of rows rejected ({counts.rows_rejected:,} of {counts.rows_read:,})"
    if not spec.checks.block_on_reject_rate:
        return f"{share}; see `wsync rejects {spec.name}`"
    reasons = batches.rejects().column("reason").value_counts().to_pylist()
    top = max(reasons, key=lambda entry: entry["counts"], default=None)
    most = f"; most often: {top['values']} ({top['counts']:,} rows)" if top else ""
    return (
        f"delivery blocked: {share}, over checks.max_reject_rate {spec.checks.max_reject_rate:.1%}, and "
        f"checks.block_on_reject_rate is true: nothing was written to the profile store{most}"
    )


def data_delay_result(
    spec: SyncSpec, now: datetime | None = None, open_reader: OpenReader | None = None
) -> AssetCheckResult:
    """Warn when the newest iterator value (or a cdc table's newest commit) is older than the delay limit."""
    limit = spec.sync.delay_limit
    metadata: dict = {"delay_limit_hours": round(limit.total_seconds() / 3600, 2)}
    key = "newest_commit" if spec.sync.mode == "cdc" else "newest_iterator_value"
    try:
        if spec.sync.mode == "cdc":
            with change_feed(spec, open_reader) as feed:
                newest: datetime | None = feed.newest_commit()
        else:
            newest = newest_iterator(spec, open_reader)
    except Exception as error:  # a check that only warns never fails the run it belongs to
        return AssetCheckResult(
            check_name=DATA_DELAY_CHECK,
            passed=False,
            severity=AssetCheckSeverity.WARN,
            metadata=metadata,
            description=f"data delay: the newest {_delay_subject(spec)} cannot be read: "
            + " ".join(str(error).split()),
        )
    now = now or datetime.now(UTC)
    if newest is None:
        passed, description = False, "the data model has no rows: no iterator value arrived"
    else:
        delay = now - newest
        metadata.update({key: newest.isoformat(), "delay_hours": round(delay.total_seconds() / 3600, 2)})
        passed = delay <= limit
        description = (
            None
            if passed
            else (
                f"data delay: the newest {_delay_subject(spec)} is {newest.isoformat()}, "
                f"{_hours(delay)} ago; the limit is {_hours(limit)} (sync.delay_alert)"
            )
        )
    return AssetCheckResult(
        check_name=DATA_DELAY_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
        description=description,
    )


def _delay_subject(spec: SyncSpec) -> str:
    return "commit to the table" if spec.sync.mode == "cdc" else str(spec.sync.iterator)


def _hours(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def build_sync_assets(spec: SyncSpec) -> list[AssetsDefinition]:
    """The mapped-batches and delivery assets of one sync, with the reject-rate check."""
    # backfill_policy is marked beta; it is what lets one run read a whole range, so we use it knowingly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return _sync_assets(spec)


def _sync_assets(spec: SyncSpec) -> list[AssetsDefinition]:
    mode = sync_mode(spec)
    partitions = mode.partitions()
    backfill_policy = mode.backfill_policy()
    kinds = {spec.connection.type, "arrow"}
    # A variable unset where the definitions load fails every run the UI starts: the assets say so first.
    blocked = cannot_run(spec)
    marked = {UNSET_VARIABLES: ", ".join(unset_variables(spec)), CANNOT_RUN: blocked} if blocked else None
    note = f"**Cannot run here**: {blocked}\n\n" if blocked else ""
    # mParticle's Data Warehouse Delay Alerting: has new data reached the warehouse lately?
    delay_check = (
        [
            AssetCheckSpec(
                DATA_DELAY_CHECK,
                asset=mapped_key(spec),
                description=f"The newest {_delay_subject(spec)} is at most {_hours(spec.sync.delay_limit)} old",
            )
        ]
        if spec.sync.mode == "cdc"
        or (spec.sync.mode == "incremental" and spec.sync.iterator_type != "integer")
        else []
    )

    @asset(
        key=mapped_key(spec),
        deps=source_keys(spec),
        partitions_def=partitions,
        backfill_policy=backfill_policy,
        group_name=spec.name,
        kinds=kinds,
        # A full-mode run's warehouse compares its rows with the store's fingerprints (unchanged_rows.py).
        required_resource_keys={warehouse_key(spec), *([STORE_RESOURCE] if spec.sync.mode == "full" else [])},
        # Reads take a slot of their connection's pool: backfills queue instead of piling onto one warehouse.
        pool=warehouse_pool(spec),
        description=f"{note}{spec.description or spec.name}: warehouse rows mapped to {spec.data_type} batches",
        metadata=marked,
        check_specs=[
            AssetCheckSpec(
                REJECT_RATE_CHECK,
                asset=mapped_key(spec),
                description=f"Rejected rows stay under {spec.checks.max_reject_rate:.1%}"
                + ("; over it, the run delivers nothing" if spec.checks.block_on_reject_rate else ""),
                # Failing with severity ERROR, a blocking check keeps the run's delivery step from running.
                blocking=spec.checks.block_on_reject_rate,
            ),
            *delay_check,
        ],
    )
    def mapped_batches(context: AssetExecutionContext) -> MaterializeResult:
        scope = mode.scope(context)
        with failures_say_what_stays_delivered(context, spec, scope):
            return map_scope(context, scope)

    def map_scope(context: AssetExecutionContext, scope: RunScope) -> MaterializeResult:
        if line := cannot_run(spec):
            raise Failure(description=line, allow_retries=False)
        if len(scope.partitions) > 1:
            tag_run(context, {PARTITIONS: scope.label})
        warehouse: WarehouseResource = getattr(context.resources, warehouse_key(spec))
        open_reader = partial(warehouse.open, spec.source_file)
        counts = map_partition(
            spec,
            scope.window,
            batch_file(spec, scope.label),
            run_version=scope.run_version,
            progress=context.log.info,
            open_reader=open_reader,
            stored=partial(stored_fingerprints, context.resources.profile_store, spec)
            if spec.sync.mode == "full"
            else None,
        )
        window = scope.window
        passed = counts.reject_rate <= spec.checks.max_reject_rate
        context.log.info(f"{spec.name}: mapped {scope.label}: {counts.as_dict()}")
        by_partition = (
            map_counts_by_partition(batch_file(spec, scope.label), scope.partitions)
            if len(scope.partitions) > 1
            else {scope.label: counts}
        )
        add_partition_metadata(
            context,
            with_run_totals(
                {key: found.as_dict() for key, found in by_partition.items()}, counts.as_dict(), scope
            ),
        )
        tag_run(context, count_tags(counts.as_dict()))
        return MaterializeResult(
            metadata={
                "iterator_window": window.describe() if window else "all rows",
            },
            check_results=[
                AssetCheckResult(
                    check_name=REJECT_RATE_CHECK,
                    passed=passed,
                    severity=AssetCheckSeverity.ERROR,
                    metadata={
                        "reject_rate": counts.reject_rate,
                        "max_reject_rate": spec.checks.max_reject_rate,
                        "rows_rejected": counts.rows_rejected,
                    },
                    description=None
                    if passed
                    else reject_rate_failure(spec, counts, batch_file(spec, scope.label)),
                ),
                *([data_delay_result(spec, open_reader=open_reader)] if delay_check else []),
            ],
        )

    @asset(
        key=delivery_key(spec),
        deps=[mapped_key(spec)],
        partitions_def=partitions,
        backfill_policy=backfill_policy,
        group_name=spec.name,
        kinds={profile_store_kind()},
        pool=PROFILE_STORE_POOL,
        description=f"{note}{spec.name}: mapped batches applied to the profile store ({spec.sync.environment})",
        metadata=marked,
        check_specs=[
            AssetCheckSpec(
                MIRROR_REMOVAL_CHECK,
                asset=delivery_key(spec),
                description=(
                    "mirror removed what left the model: the run mapped rows, and at most "
                    f"{spec.sync.mirror_max_removal:.0%} of the profiles this sync set lost its attributes "
                    f"(more only with the run tag {ALLOW_MASS_REMOVAL}=true)"
                ),
            )
        ]
        if spec.sync.mirror
        else None,
    )
    def delivery(context: AssetExecutionContext, profile_store: ProfileStoreResource) -> MaterializeResult:
        scope = mode.scope(context)
        with failures_say_what_stays_delivered(context, spec, scope):
            return deliver_scope(context, scope, profile_store)

    def deliver_scope(
        context: AssetExecutionContext, scope: RunScope, profile_store: ProfileStoreResource
    ) -> MaterializeResult:
        batches = batch_file(spec, scope.label)
        if not batches.exists():
            raise FileNotFoundError(
                f"{spec.name}: no mapped batches for partition {scope.label}; materialize "
                f"{mapped_key(spec).to_user_string()} for the same partitions first"
            )
        allow = context.run.tags.get(ALLOW_MASS_REMOVAL, "").strip().lower() == "true"
        store = profile_store.open()
        try:
            report = deliver_partitions(
                spec,
                batches,
                store,
                scope.partitions,
                progress=context.log.info,
                allow_mass_removal=allow,
                run_id=context.run_id,
            )
            if pruned := mode.prune_partitions(context.instance, store):
                context.log.info(f"{spec.name}: {len(pruned)} old delivered partitions no longer listed")
        finally:
            store.close()
        # Each partition shows its own counts; the run's totals are on its last partition, its tags and its log.
        totals = report.totals.as_dict()
        add_partition_metadata(
            context,
            with_run_totals(
                {key: counts.as_dict() for key, counts in report.by_partition.items()}, totals, scope
            ),
        )
        if spec.data_type != "event":
            totals.pop("events_written")
        tag_run(context, count_tags(totals))
        metadata: dict = {
            "preview": MetadataValue.md(_preview_markdown(report.preview, spec.sync.preview_values))
        }
        if not spec.sync.mirror:
            return MaterializeResult(metadata=metadata)
        metadata["mirror_held_back"] = report.mirror_held_back
        if report.mirror_hold:
            context.log.warning(report.mirror_hold)
        return MaterializeResult(
            metadata=metadata,
            check_results=[
                AssetCheckResult(
                    check_name=MIRROR_REMOVAL_CHECK,
                    passed=report.mirror_hold is None,
                    severity=AssetCheckSeverity.ERROR,
                    metadata={
                        "profiles_held_back": report.mirror_held_back,
                        "mirror_max_removal": spec.sync.mirror_max_removal,
                        "allow_mass_removal": allow,
                    },
                    description=report.mirror_hold,
                )
            ],
        )

    forwards = [_forward_asset(spec, destination) for destination in spec.destinations]
    return [mapped_batches, delivery, *forwards]


def _forward_asset(
    spec: SyncSpec, destination: MParticleDestination | AmplitudeDestination
) -> AssetsDefinition:
    """What the sync's deliveries changed, sent to one destination; alone (a backfill of this asset), each
    partition first marks the profiles it delivered as pending again, so history is forwarded anew."""
    mode = sync_mode(spec)

    @asset(
        key=forward_key(spec, destination.name),
        deps=[delivery_key(spec)],
        partitions_def=mode.partitions(),
        backfill_policy=mode.backfill_policy(),
        group_name=spec.name,
        kinds={destination.type},
        description=f"{spec.name}: what changed, forwarded to {destination.type} ({destination.name})",
    )
    def forward_to_destination(
        context: AssetExecutionContext, profile_store: ProfileStoreResource
    ) -> MaterializeResult:
        scope = mode.scope(context)
        selection = context.run.asset_selection
        with_delivery = not selection or delivery_key(spec) in selection  # empty: the whole job
        store = profile_store.open()
        try:
            report = forward(
                spec,
                destination,
                store,
                seed_partitions=None if with_delivery else [p.key for p in scope.partitions],
                progress=context.log.info,
            )
        finally:
            store.close()
        context.log.info(f"{spec.name}: forwarded to {report.line()}")
        # One send serves the run's partitions: its figures go on the last, the others show none sent.
        keys = [partition.key for partition in scope.partitions]
        figures = report.as_metadata()
        add_partition_metadata(
            context, {key: figures if key == keys[-1] else dict.fromkeys(figures, 0) for key in keys}
        )
        for warning in report.warnings:
            context.log.warning(f"{spec.name}: {warning}")
        return MaterializeResult(
            metadata={"seeded": report.seeded, "erasures_pending": report.erasures_pending}
        )

    return forward_to_destination
