"""SPEC §4 faults: a `wsync run` killed at any moment, then run again, leaves the store as one clean run would."""

from __future__ import annotations

from pathlib import Path

from wsync_dagster_tests.kill_trials import RANDOM_TRIALS, SEEDS, TrialSite, random_seeds


def test_a_run_killed_at_any_moment_then_run_again_equals_a_clean_run_and_never_waits(tmp_path: Path) -> None:
    site = TrialSite(tmp_path)
    site.prepare()

    trials = site.run_all([*SEEDS, *random_seeds(RANDOM_TRIALS)])

    failed = [trial for trial in trials if not trial.passed]
    assert not failed, "run again with scripts/kill-trials --seed N:\n" + "\n".join(map(str, failed))
