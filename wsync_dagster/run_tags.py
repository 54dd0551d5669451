"""Run tags wsync sets: Dagster's documented ones, and its own that the UI's run lists show, held in one place."""

from collections.abc import Mapping

# A run of one partition.
PARTITION_TAG = "dagster/partition"
# A run over a range of partitions of assets with a single-run backfill policy.
PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"
# wsync's own: a mirror run may remove more than sync.mirror_max_removal of the profiles it set.
ALLOW_MASS_REMOVAL = "wsync/allow_mass_removal"
# wsync's own: the partitions a range run covers ("FIRST..LAST"), and the counts of what it did.
PARTITIONS = "wsync/partitions"
COUNT_PREFIX = "wsync/"
# The counts a run's tags show: what a sync page's run history lists (rows read, added, changed, failed).
TAGGED_COUNTS = (
    "rows_read",
    "rows_rejected",
    "rows_applied",
    "rows_unchanged",
    "identity_conflicts",
    "profiles_created",
    "profiles_updated",
    "events_written",
)


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Tags that make one run cover the partitions first..last."""
    return {PARTITION_RANGE_START: first, PARTITION_RANGE_END: last}


def count_tags(counts: Mapping[str, int]) -> dict[str, str]:
    """The run tags of these counts (those a run's history shows), e.g. wsync/rows_applied=120."""
    return {f"{COUNT_PREFIX}{name}": str(value) for name, value in counts.items() if name in TAGGED_COUNTS}
