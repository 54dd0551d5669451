"""Lock waits on the PostgreSQL store: said in a line while they last, and given up at WSYNC_LOCK_TIMEOUT.

A statement of the store's connection that has not returned within NOTICE_AFTER_S may be waiting for a lock:
a thread asks the server, over a connection of its own, which sessions block it, and says who they are.
The server itself ends the wait at the limit (lock_timeout).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

from wsync_dagster.durations import describe_duration

# A statement running this long is looked at: deliveries' statements are mostly far shorter.
NOTICE_AFTER_S = 1.0
POLL_S = 0.5
# SQLSTATE lock_not_available: lock_timeout ended the wait.
LOCK_NOT_AVAILABLE = "55P03"
_BLOCKERS = """
SELECT pid, coalesce(nullif(application_name, ''), 'no application name'), xact_start AT TIME ZONE 'UTC'
FROM pg_stat_activity WHERE pid = ANY(pg_blocking_pids(%s)) ORDER BY pid
"""


class LockWaitWatch:
    """Watches the statements of one store connection for lock waits, and says who holds the lock."""

    def __init__(self, dsn: str, backend_pid: int, where: str, limit: timedelta, say: Callable[[str], None]):
        self._dsn = dsn
        self._pid = backend_pid
        self._where = where
        self._limit = limit
        self._say = say
        self._started: float | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._monitor = None
        self._closed = False
        self.holders = ""  # who held the lock last waited for, as said

    @contextmanager
    def statement(self) -> Iterator[None]:
        """Around one statement of the watched connection."""
        with self._changed:
            self._started = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="wsync-lock-waits", daemon=True)
                self._thread.start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._started = None

    def gave_up(self) -> str:
        """The one line for a wait that reached the limit."""
        who = f" held by {self.holders}" if self.holders else ""
        return (
            f"profile store {self._where}: waited {describe_duration(self._limit)} for a lock{who} and gave up "
            "(WSYNC_LOCK_TIMEOUT); nothing was written"
        )

    def close(self) -> None:
        """Stop watching and close the monitor connection."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._monitor is not None:
            with suppress(Exception):
                self._monitor.close()

    def _watch(self) -> None:
        told = ""
        while True:
            with self._changed:
                self._changed.wait(POLL_S)
                if self._closed:
                    return
                started = self._started
            if started is None:
                told = ""
                continue
            if time.monotonic() - started < NOTICE_AFTER_S:
                continue
            try:
                holders = self._holders()
            except Exception:  # a look that fails (the server busy or gone) is made again at the next poll
                continue
            if holders and holders != told:
                self.holders = told = holders
                self._say(
                    f"waiting for a lock on the profile store {self._where}, held by {holders}; giving up after "
                    f"{describe_duration(self._limit)} (WSYNC_LOCK_TIMEOUT)"
                )

    def _holders(self) -> str:
        """The sessions blocking the watched one, described; empty when none."""
        import psycopg2

        if self._monitor is None:
            self._monitor = psycopg2.connect(
                self._dsn, connect_timeout=10, application_name="wsync lock watch"
            )
            self._monitor.autocommit = True
        with self._monitor.cursor() as cursor:
            cursor.execute(_BLOCKERS, (self._pid,))
            rows = cursor.fetchall()
        return "; ".join(
            f"pid {pid} ({application}"
            + (f", in a transaction since {started:%Y-%m-%d %H:%M:%S} UTC)" if started else ")")
            for pid, application, started in rows
        )
