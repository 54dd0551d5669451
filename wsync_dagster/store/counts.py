"""What a delivery did to the profile store, as counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class DeliveryCounts:
    """Counts of one batch or one delivery; batches add up to their delivery."""

    # Rows: every mapped row is applied, unchanged (full mode, incremental users: fingerprinted), skipped,
    # an identity conflict, or suppressed.
    rows: int = 0
    rows_applied: int = 0
    rows_unchanged: int = 0
    rows_skipped: int = 0
    identity_conflicts: int = 0
    rows_suppressed: int = 0  # rows of erased people (`wsync erase`), kept as rejects "erased on DATE"
    rejects: int = 0  # rows the mapping rejected; rows + rejects are the rows read
    # Profiles, each counted once.
    profiles_created: int = 0
    profiles_updated: int = 0
    profiles_skipped: int = 0
    identities_changed: int = 0
    attributes_set: int = 0
    attributes_removed: int = 0
    events_written: int = 0
    events_duplicate: int = 0

    def add(self, other: DeliveryCounts) -> None:
        """Add another count field by field."""
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_dict(self) -> dict[str, int]:
        """The counts by name, e.g. for asset metadata."""
        return asdict(self)


@dataclass(frozen=True)
class MirrorHold:
    """A mirroring delivery that removed nothing: how many profiles would have lost this sync's
    attributes, of how many held them, and whether it was because the run mapped no rows at all."""

    profiles: int
    of: int
    no_rows: bool = False

    @property
    def share(self) -> float:
        """The share of the profiles this sync had set that would have lost its attributes."""
        return self.profiles / self.of if self.of else 1.0
