"""The Dagster instance `wsync run` records its runs in: $DAGSTER_HOME's, or an ephemeral one without it."""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance, DagsterInvalidConfigError


class InstanceError(RuntimeError):
    """The Dagster instance cannot be loaded: its dagster.yaml is wrong or its storage cannot be reached."""


def open_instance() -> DagsterInstance:
    """The instance of $DAGSTER_HOME (its storage reached now), or an ephemeral one when it is not set."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return DagsterInstance.ephemeral()
    where = f"Dagster instance {Path(home) / 'dagster.yaml'}"
    try:
        with _one_loader_at_a_time(Path(home)), _quiet_retries():
            return DagsterInstance.get()
    except Exception as error:  # Dagster and its storages raise their own classes: report each in one line
        raise InstanceError(f"{where}: {_reason(error)}") from None


@contextmanager
def _one_loader_at_a_time(home: Path) -> Iterator[None]:
    """Load the instance under a lock in its home: Dagster's SQLite storages create their tables on first
    use without one, and parallel first runs failed with `table runs already exists`."""
    if not home.is_dir():  # Dagster's own error names the missing folder
        yield
        return
    with open(home / ".wsync-instance.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _quiet_retries() -> Iterator[None]:
    """Hide dagster-postgres's warning per connection retry: the final failure is reported once."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _reason(error: BaseException) -> str:
    """The innermost cause's first line: the driver's words, which never hold the password."""
    if isinstance(error, DagsterInvalidConfigError) and error.errors:
        return "; ".join(_config_problem(problem) for problem in error.errors)
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = " ".join(lines[0].split()) if lines else type(error).__name__
    if type(error).__module__.startswith("psycopg"):
        return f"cannot connect to its PostgreSQL storage: {reason}"
    return reason


def _config_problem(problem) -> str:
    """One config error: the key it is at and Dagster's reason (an unset variable is named, never a value)."""
    reason = problem.error_data.message if problem.error_data else problem.message
    reason = " ".join(reason.strip().splitlines()[0].split()).removeprefix(
        "dagster._config.errors.PostProcessingError: "
    )
    path = _STACK_PATH.search(problem.message)
    return f"{path.group(1).replace(':', '.')}: {reason}" if path else reason


_STACK_PATH = re.compile(r"at path root:(\S+)")
