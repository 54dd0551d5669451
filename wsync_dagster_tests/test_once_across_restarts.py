"""`schedule: once` runs exactly once, across two restarts of a real Dagster daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import TickStatus

from wsync_dagster.store import open_profile_store
from wsync_dagster_tests.conftest import USERS_SQL
from wsync_dagster_tests.test_dagster_dev import REPO, poll, stop_process_group

SYNCS = ("crm_once_full", "crm_once_windows")
RUN_TIMEOUT_S = 300.0
# A once sensor looks every 30 s; the daemon's loop and a loaded machine add to it.
TICK_TIMEOUT_S = 180.0


def once_syncs(warehouse: Path) -> list[dict]:
    """The same users, once in full mode and once over the complete daily windows of the last three days."""
    start = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    base = {
        "data_type": "user",
        "connection": {"type": "duckdb", "path": str(warehouse)},
        "data_model": {"sql": "SELECT customer_id, email, first_name, plan, updated_at FROM crm.users"},
    }
    return [
        {**base, "name": SYNCS[0], "sync": {"mode": "full", "schedule": "once", "start": start.isoformat()}},
        {
            **base,
            "name": SYNCS[1],
            "sync": {
                "mode": "incremental",
                "iterator": "updated_at",
                "iterator_type": "timestamp",
                "schedule": "once",
                "frequency": "daily",
                "start": start.isoformat(),
            },
        },
    ]


@contextmanager
def daemon(home: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` on the repository's workspace; stopped (its whole process group) on leaving."""
    command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "DAGSTER_HOME": str(home)},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process_group(process)


def ticks(home: Path) -> dict[str, list[TickStatus]]:
    """Each once sensor's ticks so far, oldest first, as the daemon recorded them."""
    instance = DagsterInstance.from_config(str(home))
    try:
        found: dict[str, list[TickStatus]] = {}
        for state in instance.all_instigator_state():
            if state.name in {f"{sync}_sensor" for sync in SYNCS}:
                recorded = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=100)
                found[state.name] = [tick.status for tick in reversed(recorded)]
        return found
    finally:
        instance.dispose()


def ticked_since(home: Path, before: dict[str, list[TickStatus]]) -> bool | None:
    """True once every once sensor has finished a tick since `before` (a tick is STARTED while it runs)."""
    now = ticks(home)
    newer = {name: now[name][len(before.get(name, [])) :] for name in now}
    finished = (
        newer.get(f"{sync}_sensor") and TickStatus.STARTED not in newer[f"{sync}_sensor"] for sync in SYNCS
    )
    return True if all(finished) else None


def runs(home: Path) -> dict[str, list[DagsterRunStatus]]:
    """Each sync's runs and their status."""
    instance = DagsterInstance.from_config(str(home))
    try:
        return {
            sync: [run.status for run in instance.get_runs(RunsFilter(job_name=f"{sync}_job"))]
            for sync in SYNCS
        }
    finally:
        instance.dispose()


def test_a_once_sync_runs_exactly_once_across_two_daemon_restarts(
    tmp_path: Path, make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path]
) -> None:
    """The first daemon runs each once sync; after each restart its sensor ticks and skips, and no run is added."""
    for sync in once_syncs(make_warehouse(USERS_SQL)):
        write_sync(sync)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    log = tmp_path / "daemon.log"

    def all_succeeded() -> bool | None:
        found = runs(home)
        failed = [s for s, statuses in found.items() if DagsterRunStatus.FAILURE in statuses]
        assert not failed, f"{failed} failed:\n{log.read_text(errors='replace')}"
        return True if all(statuses == [DagsterRunStatus.SUCCESS] for statuses in found.values()) else None

    try:
        with daemon(home, log) as process:
            poll("each once sync's run to succeed", RUN_TIMEOUT_S, all_succeeded)
            assert process.poll() is None
        for restart in (1, 2):
            before = ticks(home)
            with daemon(home, log):
                poll(
                    f"each once sensor to tick after restart {restart}",
                    TICK_TIMEOUT_S,
                    lambda before=before: ticked_since(home, before),
                )
            after = ticks(home)
            for sync in SYNCS:
                new_ticks = after[f"{sync}_sensor"][len(before[f"{sync}_sensor"]) :]
                assert new_ticks and set(new_ticks) == {TickStatus.SKIPPED}, (sync, restart, new_ticks)
    except BaseException:
        print(log.read_text(errors="replace"))
        raise

    assert runs(home) == {sync: [DagsterRunStatus.SUCCESS] for sync in SYNCS}
    with open_profile_store(os.environ["WSYNC_PROFILE_STORE"]) as store:
        delivered = {sync: store.delivered_partitions(sync, "production") for sync in SYNCS}
        profile = store.profile("customer_id", "C001")
    assert len(delivered[SYNCS[0]]) == 1  # one full-mode run key
    assert profile is not None and profile["attributes"]["plan"] == "pro"
