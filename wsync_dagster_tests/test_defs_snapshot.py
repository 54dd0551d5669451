"""The demo syncs' Dagster definitions against a snapshot, so a change in the graph is seen in review.

As dagster-open-platform's test_defs.py: every asset (key, group, kinds, partitions, deps, pools),
check, job, schedule, sensor and resource of the code location `scripts/demo` loads, written as
readable JSON in snapshots/demo_definitions.json and compared exactly, one section per test. A
deliberate change is recorded by regenerating the file (see REGENERATE) and reviewing its diff.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    Definitions,
    DynamicPartitionsDefinition,
    PartitionsDefinition,
    TimeWindowPartitionsDefinition,
)

from wsync_dagster.demo import build_demo
from wsync_dagster_tests.conftest import code_location

SNAPSHOT = Path(__file__).parent / "snapshots" / "demo_definitions.json"
REPOSITORY = Path(__file__).resolve().parents[1]
UPDATE_VARIABLE = "WSYNC_UPDATE_SNAPSHOTS"
REGENERATE = f"{UPDATE_VARIABLE}=1 .venv/bin/python -m pytest -q wsync_dagster_tests/test_defs_snapshot.py"
# The demo as built on this day: its partitions start a fixed time before it.
DEMO_DAY = datetime(2025, 6, 15, tzinfo=UTC)
SECTIONS = ("assets", "checks", "jobs", "schedules", "sensors", "resources")
# A file warehouse's pool ends in a digest of its absolute path, which is this test's tmp folder.
PATH_DIGEST = re.compile(r"(warehouse:(?:duckdb|delta):[^:\s]*)-[0-9a-f]{10}\b")
# Its resource key too: the path's digest, then one of the path and the connection's keys.
KEY_DIGEST = re.compile(r"\b(warehouse_(?:duckdb|delta)_\w*?)_[0-9a-f]{10}_[0-9a-f]{8}\b")


def _partitions(partitions_def: PartitionsDefinition | None) -> Any:
    """What decides a partitions definition's keys, readably."""
    if partitions_def is None:
        return None
    if isinstance(partitions_def, TimeWindowPartitionsDefinition):
        return {
            "cron": partitions_def.cron_schedule,
            "start": partitions_def.start.isoformat(),
            "timezone": partitions_def.timezone,
            "format": partitions_def.fmt,
            "end_offset": partitions_def.end_offset,
        }
    if isinstance(partitions_def, DynamicPartitionsDefinition):
        return {"dynamic": partitions_def.name}
    return str(partitions_def)


def _assets(defs: Definitions) -> dict[str, Any]:
    """Each asset: what the UI shows of it and what decides its runs."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitions": _partitions(node.partitions_def),
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "pools": sorted(node.pools or ()),
            "description": node.description,
            "owners": list(node.owners),
            # Kinds are listed above; other tags are the asset's own.
            "tags": {tag: value for tag, value in node.tags.items() if not tag.startswith("dagster/kind/")},
            "metadata": {label: str(value) for label, value in node.metadata.items()},
            "backfill_policy": str(node.backfill_policy) if node.backfill_policy else None,
            "automation_condition": str(node.automation_condition) if node.automation_condition else None,
        }
    return assets


def _checks(defs: Definitions) -> dict[str, Any]:
    """Each asset check, keyed `asset:check`."""
    checks = {}
    for assets_def in defs.get_repository_def().asset_graph.assets_defs:
        for spec in assets_def.check_specs:
            checks[f"{spec.asset_key.to_user_string()}:{spec.name}"] = {
                "blocking": spec.blocking,
                "description": spec.description,
                "partitions": _partitions(spec.partitions_def),
            }
    return checks


def _jobs(defs: Definitions) -> dict[str, Any]:
    """Each sync's job: the assets and checks it runs, over which partitions."""
    # Dagster's implicit `__ASSET_JOB` is not ours.
    jobs = [job for job in defs.get_repository_def().get_all_jobs() if not job.name.startswith("__")]
    return {
        job.name: {
            "assets": sorted(key.to_user_string() for key in job.asset_layer.selected_asset_keys),
            "checks": sorted(
                f"{key.asset_key.to_user_string()}:{key.name}"
                for key in job.asset_layer.asset_graph.asset_check_keys
            ),
            "partitions": _partitions(job.partitions_def),
            "description": job.description,
            "tags": dict(job.tags),
        }
        for job in jobs
    }


def _schedules(defs: Definitions) -> dict[str, Any]:
    """Each schedule: its job, cron and whether it starts running."""
    return {
        schedule.name: {
            "job": schedule.job_name,
            "cron": schedule.cron_schedule,
            "timezone": schedule.execution_timezone,
            "default_status": schedule.default_status.value,
            "description": schedule.description,
        }
        for schedule in defs.get_repository_def().schedule_defs
    }


def _sensors(defs: Definitions) -> dict[str, Any]:
    """Each sensor: the jobs it requests and how often it ticks."""
    return {
        sensor.name: {
            "jobs": sorted(target.job_name for target in sensor.targets),
            "type": sensor.sensor_type.value,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "default_status": sensor.default_status.value,
            "description": sensor.description,
        }
        for sensor in defs.get_repository_def().sensor_defs
    }


def _resources(defs: Definitions) -> dict[str, Any]:
    """Each resource key: its class and its config (never a secret's value: `{env: VAR}` stays the name)."""
    return {
        key: {
            "class": f"{type(resource).__module__}.{type(resource).__name__}",
            "config": resource.model_dump(),
        }
        for key, resource in (defs.resources or {}).items()
    }


def demo_definitions_snapshot(defs: Definitions, demo_root: Path) -> dict[str, Any]:
    """Every section of the definitions as plain JSON values, with the demo's folder written `<demo>`."""
    snapshot = {
        "assets": _assets(defs),
        "checks": _checks(defs),
        "jobs": _jobs(defs),
        "schedules": _schedules(defs),
        "sensors": _sensors(defs),
        "resources": _resources(defs),
    }
    text = json.dumps(snapshot, sort_keys=True, default=str)
    text = text.replace(str(demo_root.resolve()), "<demo>").replace(str(demo_root), "<demo>")
    # The code location is the defs folder's component: its metadata names the checkout's own files.
    text = text.replace(str(REPOSITORY), "<repository>")
    text = PATH_DIGEST.sub(r"\1-<path digest>", text)
    text = KEY_DIGEST.sub(r"\1_<path digest>", text)
    return json.loads(text)


def _dumped(value: Any) -> str:
    """The snapshot file's text: indented, sorted, one value a line."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.fixture(scope="module")
def current(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The snapshot of the code location loading the demo's sync files (a tiny demo warehouse beside them)."""
    root = tmp_path_factory.mktemp("demo")
    demo = build_demo(root, users=50, events=200, now=DEMO_DAY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSYNC_SYNCS_DIR", str(demo.syncs_dir))
        patch.setenv("WSYNC_STATE_DIR", str(root / "state"))
        patch.delenv("WSYNC_PROFILE_STORE", raising=False)
        snapshot = demo_definitions_snapshot(code_location(), root)
    if os.environ.get(UPDATE_VARIABLE) == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(_dumped(snapshot), encoding="utf-8")
    yield snapshot


@pytest.mark.parametrize("section", SECTIONS)
def test_demo_definitions_match_the_snapshot(current: dict[str, Any], section: str) -> None:
    recorded = json.loads(SNAPSHOT.read_text(encoding="utf-8")) if SNAPSHOT.exists() else {}
    if section not in recorded:
        pytest.fail(f"{SNAPSHOT} has no {section!r}: record it with `{REGENERATE}`", pytrace=False)
    if recorded[section] != current[section]:
        diff = difflib.unified_diff(
            _dumped(recorded[section]).splitlines(),
            _dumped(current[section]).splitlines(),
            f"{SNAPSHOT.name} ({section}, recorded)",
            f"{section} (as the code location loads now)",
            lineterm="",
        )
        pytest.fail(
            f"the demo's {section} changed against {SNAPSHOT}:\n"
            + "\n".join(diff)
            + f"\nIf the change is intended, regenerate the snapshot with `{REGENERATE}` and commit its diff.",
            pytrace=False,
        )
