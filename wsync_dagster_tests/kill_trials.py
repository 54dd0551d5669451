"""Kill trials: SIGKILL a real `wsync run` at a random moment, run it again, and compare with a clean run.

A trial's seed picks the sync (users or events), the phase (mapping, delivery, just after the commit)
and the moment within it. The killed run and its re-run share one Dagster home with every earlier trial
(the repository's dagster.yaml), so a run left behind by any kill would make a later run wait. A trial
passes when the re-run ends within RERUN_TIMEOUT_S without waiting for the pool, no run is left
unfinished or holding a slot, and every table of the store equals the clean run's, wall-clock columns
aside. `scripts/kill-trials` runs N trials (50 by default) and prints the tally; the test suite runs
SEEDS and a few random ones.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import cycle
from pathlib import Path
from typing import ClassVar

import duckdb
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from wsync_dagster.defs.assets import PROFILE_STORE_POOL

REPO = Path(__file__).resolve().parents[1]
# Fixed seeds cover every sync and phase; the suite adds RANDOM_TRIALS drawn afresh each time.
SEEDS = (5, 7, 10, 15, 16, 19, 39)
RANDOM_TRIALS = 3
SYNCS = ("trial_users", "trial_events")
PHASES = ("mapping", "delivery", "after_commit")
# Columns a re-run may write differently from a clean run: wall-clock times, and the Dagster run that
# delivered a value (`wsync profile --explain` names it; a re-run is another run).
WALL_CLOCK_COLUMNS = frozenset({"created_at", "updated_at", "delivered_at", "changed_at", "run_id"})
RERUN_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 300.0
STORE_POLL_S = 0.01
USERS = 8_000
EVENTS = 12_000
# Trials run this many at a time, each worker on its own Dagster home.
WORKERS = 2

# Markers on a run's stderr (the `wsync` progress lines), in the order a run passes them.
RUN_STARTED = "one Dagster run for partitions"
MODEL_READ = ": read "
WAITING = "waiting for pool"
UNFINISHED = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]

Tables = dict[str, list[tuple]]


@dataclass
class Trial:
    """One kill and re-run, and what went wrong with it (nothing, when it passed)."""

    seed: int
    sync: str
    phase: str
    delay_s: float
    landed: str = ""
    rerun_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """The re-run did not wait and the store is the clean run's."""
        return not self.problems

    def __str__(self) -> str:
        verdict = "identical, no wait" if self.passed else "FAILED: " + "; ".join(self.problems)
        return (
            f"seed {self.seed}: {self.sync}, aimed at {self.phase} +{self.delay_s:.2f}s, killed in {self.landed}; "
            f"re-run {self.rerun_s:.1f}s: {verdict}"
        )


@dataclass(frozen=True)
class Timing:
    """Seconds from a clean run's RUN_STARTED line to the model read, the commit and its exit."""

    read: float
    committed: float
    exited: float

    def window(self, phase: str) -> float:
        """How long the phase lasts, from the marker it starts at."""
        return {
            "mapping": self.read,
            "delivery": self.committed - self.read,
            # Just after the commit: the first half of the bookkeeping that follows it.
            "after_commit": (self.exited - self.committed) / 2,
        }[phase]


class WatchedRun:
    """A `wsync run` subprocess whose progress lines and store commits are timed as they happen."""

    # Runs under way: each has its own session, so an interrupted trial script ends them itself.
    live: ClassVar[set[WatchedRun]] = set()
    stopping: ClassVar[threading.Event] = threading.Event()

    def __init__(self, sync: str, env: dict[str, str], store: Path, *options: str):
        if WatchedRun.stopping.is_set():
            raise RuntimeError("the trials are being stopped")
        self.store = store
        self.sync = sync
        self.started = time.monotonic()
        self.marks: dict[str, float] = {}
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsync_dagster.cli", "run", sync, *options],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its process group: what the kill leaves behind can be ended after
        )
        WatchedRun.live.add(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._poller = threading.Thread(target=self._poll_store, daemon=True)
        self._poller.start()

    def wait_for(self, mark: str, timeout: float = RUN_TIMEOUT_S) -> bool:
        """Block until `mark` is seen (True) or the process has ended without it (False)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: mark in self.marks or "exited" in self.marks, timeout=timeout
            ) and (mark in self.marks)

    def wait_for_text(self, text: str, timeout: float = RUN_TIMEOUT_S) -> bool:
        """Block until a line holding `text` is printed (True) or the process has ended without one (False)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for line in self.lines) or "exited" in self.marks, timeout=timeout
            ) and any(text in line for line in self.lines)

    def finish(self, timeout: float) -> int | None:
        """The exit code, or None when the run had not ended within `timeout` (it is then killed)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._reader.join()
        self._poller.join()
        return code

    def kill(self) -> str:
        """SIGKILL the run's process, as `kill -9 PID` does; which phase it was in."""
        landed = self.phase()
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        # A step's log tailer (Dagster's `tail -F`) can outlive the kill, holding the output pipe open.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reader.join()
        self._poller.join()
        return landed

    @classmethod
    def end_all(cls) -> None:
        """SIGKILL every run under way and what it started, and start no more."""
        cls.stopping.set()
        for run in list(cls.live):
            with suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)

    def phase(self) -> str:
        """Where the run is now: starting, mapping, delivery, after_commit or finished."""
        if self.process.poll() is not None:
            return "finished"
        if "committed" in self.marks or _delivered(self.store, self.sync):
            return "after_commit"
        if "read" in self.marks:
            return "delivery"
        return "mapping" if "started" in self.marks else "starting"

    @property
    def output(self) -> str:
        """Everything the run printed."""
        return "\n".join(self.lines)

    def _mark(self, name: str) -> None:
        with self._changed:
            self.marks.setdefault(name, time.monotonic() - self.started)
            self._changed.notify_all()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
            if RUN_STARTED in line:
                self._mark("started")
            elif MODEL_READ in line:
                self._mark("read")
        self.process.wait()
        WatchedRun.live.discard(self)
        self._mark("exited")

    def _poll_store(self) -> None:
        while "exited" not in self.marks:
            if _delivered(self.store, self.sync):
                self._mark("committed")
                return
            time.sleep(STORE_POLL_S)


class TrialSite:
    """A warehouse with a user sync and an event sync, Dagster homes, and the clean runs to compare with."""

    def __init__(self, root: Path, workers: int = WORKERS):
        self.root = root
        self.homes = [root / f"dagster_home_{worker}" for worker in range(workers)]
        self.syncs = root / "syncs"
        self.clean: dict[str, Tables] = {}
        self.timing: dict[str, Timing] = {}
        for home in self.homes:
            home.mkdir(parents=True)
            shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        _write_site(root, self.syncs)

    def prepare(self) -> None:
        """Run each sync once, undisturbed but for the other workers: its store and its phase timings."""
        with ThreadPoolExecutor(len(self.homes)) as pool:
            for sync, run in zip(SYNCS, pool.map(self._clean_run, SYNCS, cycle(self.homes)), strict=True):
                started = run.marks["started"]
                self.timing[sync] = Timing(
                    read=run.marks["read"] - started,
                    committed=run.marks["committed"] - started,
                    exited=run.marks["exited"] - started,
                )
                self.clean[sync] = store_tables(run.store)

    def run_all(
        self, seeds: Sequence[int], done: Callable[[Trial], None] = lambda trial: None
    ) -> list[Trial]:
        """Run every seed's trial, the workers side by side; `done` hears of each trial as it ends."""

        def work(home: Path, share: Sequence[int]) -> list[Trial]:
            trials = []
            for seed in share:
                trials.append(self.run(seed, home))
                done(trials[-1])
            return trials

        shares = [seeds[worker :: len(self.homes)] for worker in range(len(self.homes))]
        with ThreadPoolExecutor(len(self.homes)) as pool:
            try:
                by_worker = list(pool.map(work, self.homes, shares))
            except BaseException:
                WatchedRun.end_all()  # or the pool would wait for every trial still to come
                raise
        return sorted((trial for trials in by_worker for trial in trials), key=lambda t: seeds.index(t.seed))

    def run(self, seed: int, home: Path) -> Trial:
        """Kill a run as `seed` says, run it again on the same Dagster home, and check the re-run and the store."""
        rng = random.Random(seed)
        sync, phase = rng.choice(SYNCS), rng.choice(PHASES)
        trial = Trial(seed, sync, phase, rng.uniform(0.0, self.timing[sync].window(phase)))
        state = self.root / f"trial_{seed}"
        shutil.rmtree(state, ignore_errors=True)
        killed = WatchedRun(sync, self._env(home, state), _store(state))
        marker = {"mapping": "started", "delivery": "read", "after_commit": "committed"}[phase]
        killed.wait_for(marker)
        time.sleep(trial.delay_s)
        trial.landed = killed.kill()

        began = time.monotonic()
        rerun = WatchedRun(sync, self._env(home, state), _store(state))
        code = rerun.finish(RERUN_TIMEOUT_S)
        trial.rerun_s = time.monotonic() - began
        if code is None:
            trial.problems.append(f"the re-run hung (killed after {RERUN_TIMEOUT_S:.0f}s):\n{rerun.output}")
            return trial
        if code != 0:
            trial.problems.append(f"the re-run exited {code}:\n{rerun.output}")
        if WAITING in rerun.output:
            trial.problems.append(f"the re-run waited:\n{rerun.output}")
        trial.problems.extend(_left_in_dagster(home))
        trial.problems.extend(compare_tables(self.clean[sync], store_tables(_store(state))))
        return trial

    def _clean_run(self, sync: str, home: Path) -> WatchedRun:
        state = self.root / f"clean_{sync}"
        run = WatchedRun(sync, self._env(home, state), _store(state))
        code = run.finish(RUN_TIMEOUT_S)
        if code != 0:
            raise RuntimeError(f"the clean run of {sync} ended with {code}:\n{run.output}")
        return run

    def _env(self, home: Path, state: Path) -> dict[str, str]:
        return {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "WSYNC_SYNCS_DIR": str(self.syncs),
            "WSYNC_STATE_DIR": str(state),
            "WSYNC_PROFILE_STORE": f"sqlite:///{_store(state)}",
        }


def _left_in_dagster(home: Path) -> list[str]:
    """Runs left unfinished, and pool slots still held, in a Dagster home."""
    with DagsterInstance.from_config(str(home)) as instance:
        unfinished = instance.get_run_records(RunsFilter(statuses=UNFINISHED))
        claimed = instance.event_log_storage.get_concurrency_info(PROFILE_STORE_POOL).claimed_slots
        problems = [f"run {r.dagster_run.run_id} left {r.dagster_run.status.value}" for r in unfinished]
        problems += [f"slot of {PROFILE_STORE_POOL} still held by run {slot.run_id}" for slot in claimed]
    return problems


def store_tables(path: Path) -> Tables:
    """Every table of a profile store, wall-clock columns left out, rows sorted."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        tables: Tables = {}
        for name in sorted(names):
            columns = [
                c[1] for c in conn.execute(f'PRAGMA table_info("{name}")') if c[1] not in WALL_CLOCK_COLUMNS
            ]
            quoted = ", ".join(f'"{column}"' for column in columns)
            tables[name] = sorted(conn.execute(f'SELECT {quoted} FROM "{name}"').fetchall(), key=repr)
    return tables


def compare_tables(clean: Tables, trial: Tables) -> list[str]:
    """What differs between two stores, table by table, with a few rows of each side."""
    problems = []
    for name in sorted(set(clean) | set(trial)):
        expected, found = clean.get(name, []), trial.get(name, [])
        if expected != found:
            missing = [row for row in expected if row not in found][:3]
            extra = [row for row in found if row not in expected][:3]
            problems.append(
                f"table {name}: {len(found)} rows, clean run {len(expected)}; missing {missing}, extra {extra}"
            )
    return problems


def random_seeds(count: int) -> list[int]:
    """Seeds drawn afresh (printed with every failed trial, to run it again with --seed)."""
    return [random.SystemRandom().randrange(1_000_000) for _ in range(count)]


def _store(state: Path) -> Path:
    return state / "profiles.sqlite"


def _delivered(store: Path, sync: str) -> bool:
    if not store.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1.0)) as conn:
            return (
                conn.execute("SELECT 1 FROM deliveries WHERE sync = ? LIMIT 1", (sync,)).fetchone()
                is not None
            )
    except sqlite3.Error:  # created but without its tables yet
        return False


def _write_site(root: Path, syncs: Path) -> None:
    """A warehouse whose rows lie in the last two complete weeks, and weekly syncs of users and events."""
    monday = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monday -= timedelta(days=monday.weekday())
    start = monday - timedelta(weeks=2)
    warehouse = root / "data" / "warehouse.duckdb"
    warehouse.parent.mkdir(parents=True)
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute("CREATE SCHEMA crm")
        # Every 100th user has no identity at all: 1% rejects, under the 5% reject-rate check.
        conn.execute(
            f"""CREATE TABLE crm.users AS SELECT
                CASE WHEN i % 100 = 7 THEN NULL ELSE 'C' || lpad(i::VARCHAR, 6, '0') END AS customer_id,
                CASE WHEN i % 100 = 7 THEN NULL ELSE 'user' || i || '@example.com' END AS email,
                'name' || (i % 997) AS first_name,
                ['free', 'pro', 'team'][1 + i % 3] AS plan,
                i % 50 AS seats,
                TIMESTAMP '{start:%Y-%m-%d}' + INTERVAL (i * 59 % 1209600) SECOND AS updated_at
            FROM range({USERS}) AS t(i)"""
        )
        conn.execute(
            f"""CREATE TABLE crm.events AS SELECT
                'E' || lpad(i::VARCHAR, 7, '0') AS event_id,
                'C' || lpad((i * 7 % {USERS})::VARCHAR, 6, '0') AS customer_id,
                ['page_view', 'signup', 'purchase'][1 + i % 3] AS event_name,
                '/page/' || (i % 13) AS page,
                TIMESTAMP '{start:%Y-%m-%d}' + INTERVAL (i * 37 % 1209600) SECOND AS event_ts
            FROM range({EVENTS}) AS t(i)"""
        )
    weekly = {
        "mode": "incremental",
        "iterator_type": "timestamp",
        "schedule": "interval",
        "frequency": "weekly",
        "start": start,
        "historical_start": start,
    }
    connection = {"type": "duckdb", "path": "../data/warehouse.duckdb"}
    users = {
        "name": "trial_users",
        "data_type": "user",
        "connection": connection,
        "data_model": {
            "sql": "SELECT customer_id, email, first_name, plan, seats, updated_at FROM crm.users"
        },
        "sync": {**weekly, "iterator": "updated_at"},
    }
    events = {
        "name": "trial_events",
        "data_type": "event",
        "connection": connection,
        "data_model": {"sql": "SELECT event_id, customer_id, event_name, page, event_ts FROM crm.events"},
        "mapping": [
            {"type": "column", "column": "customer_id", "field": "user_identities.customer_id"},
            {"type": "static", "value": "custom_event", "field": "events.event_type"},
            {"type": "column", "column": "event_name", "field": "events.data.event_name"},
            {"type": "static", "value": "other", "field": "events.data.custom_event_type"},
            {"type": "column", "column": "event_ts", "field": "events.data.timestamp_unixtime_ms"},
            {"type": "column", "column": "event_id", "field": "events.data.source_message_id"},
            {"type": "column", "column": "$unmapped", "field": "events.data.custom_attributes.*"},
        ],
        "sync": {**weekly, "iterator": "event_ts"},
    }
    syncs.mkdir()
    for spec in (users, events):
        (syncs / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Run N kill trials (or the given seeds) and print each trial and the tally; exit 1 if any failed."""
    parser = argparse.ArgumentParser(prog="kill-trials", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="how many trials (default 50)")
    parser.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"trials at a time (default {WORKERS})")
    parser.add_argument("--keep", action="store_true", help="keep the trial folder and print where it is")
    args = parser.parse_args(argv)
    seeds = args.seed or [*SEEDS, *random_seeds(max(0, args.trials - len(SEEDS)))][: args.trials]
    root = Path(tempfile.mkdtemp(prefix="wsync-kill-trials-"))
    began = time.monotonic()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        site = TrialSite(root, args.workers)
        site.prepare()
        trials = site.run_all(seeds, done=lambda trial: print(trial, flush=True))
    except KeyboardInterrupt:
        print("kill-trials: interrupted", file=sys.stderr)
        return 130
    finally:
        WatchedRun.end_all()
        if args.keep:
            print(f"trial folder: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    passed = sum(trial.passed for trial in trials)
    landed = Counter(trial.landed for trial in trials)
    print(
        f"{len(trials)} trials in {time.monotonic() - began:.0f}s: {passed} identical to a clean run with no "
        f"wait, {len(trials) - passed} failed; killed in "
        + ", ".join(
            f"{phase} {landed[phase]}" for phase in ("starting", *PHASES, "finished") if landed[phase]
        )
    )
    return 0 if passed == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
