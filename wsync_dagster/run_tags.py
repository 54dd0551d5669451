"""Dagster's documented run tags that wsync sets, held in one place."""

# A run over a range of partitions of assets with a single-run backfill policy.
PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"
# wsync's own: a mirror run may remove more than sync.mirror_max_removal of the profiles it set.
ALLOW_MASS_REMOVAL = "wsync/allow_mass_removal"


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Tags that make one run cover the partitions first..last."""
    return {PARTITION_RANGE_START: first, PARTITION_RANGE_END: last}
