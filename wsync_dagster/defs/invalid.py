"""Sync files that do not load: one asset each, whose description says which file and what is wrong."""

from __future__ import annotations

import re

from dagster import AssetKey, AssetSpec, MetadataValue

from wsync_dagster.spec import InvalidSyncFile

INVALID_GROUP = "invalid_sync_files"


def invalid_file_specs(invalid: list[InvalidSyncFile]) -> list[AssetSpec]:
    """An asset per invalid sync file, in one group, so the UI shows it beside the syncs that did load."""
    specs: list[AssetSpec] = []
    used: set[str] = set()
    for file in invalid:
        name = re.sub(r"[^A-Za-z0-9_]", "_", file.path.name)
        while name in used:
            name += "_"
        used.add(name)
        errors = [line.removeprefix(f"{file.path}: ") for line in file.errors]
        listing = "\n".join(f"- {error}" for error in errors)
        specs.append(
            AssetSpec(
                AssetKey([INVALID_GROUP, name]),
                group_name=INVALID_GROUP,
                description=(
                    f"**{file.path.name} is not loaded**: sync '{file.name}' has no assets, job or "
                    f"schedule until the file is fixed (`wsync validate` checks it).\n\n{listing}"
                ),
                metadata={
                    "sync_file": MetadataValue.path(str(file.path)),
                    "errors": MetadataValue.md(listing),
                },
                kinds={"yaml"},
            )
        )
    return specs
