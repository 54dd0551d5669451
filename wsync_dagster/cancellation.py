"""Cancelling warehouse queries: when the command is told to stop (SIGINT, SIGTERM), or when a query outlives its
connection's query_timeout, the query is cancelled on the warehouse and the read ends in seconds.

A query blocks the main thread inside a driver's C code, where Python runs no signal handler until it returns.
So the CLI points the signals' wakeup file descriptor at a socket that a thread of ours reads: that thread
hears the signal at once and cancels every query under way through its driver (DuckDB's interrupt(), libpq's
cancel request, the cloud warehouses' cancel calls); the driver then returns and the interrupt is raised.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class QueryStopped(KeyboardInterrupt):
    """A warehouse query cancelled because the command was told to stop: an interrupt, as Ctrl-C is."""


class QueryWatch:
    """One query under way, cancelled on the warehouse when a stop signal comes or its time is up."""

    def __init__(self, cancel: Callable[[], None]):
        self._cancel = cancel
        self._lock = threading.Lock()
        self._ended = False
        self.stopped = False  # a stop signal cancelled it
        self.timed_out = False  # its query_timeout cancelled it

    def cancel(self, *, timed_out: bool = False) -> None:
        """Cancel the query once, saying why; nothing when it has ended already."""
        with self._lock:
            if self._ended or self.stopped or self.timed_out:
                return
            self.timed_out, self.stopped = timed_out, not timed_out
            # A driver that has just finished has nothing to cancel; the error it may raise then means nothing.
            with suppress(Exception):
                self._cancel()

    def end(self) -> None:
        """The query is over: no cancel reaches it (or the next query on the connection) any more."""
        with self._lock:
            self._ended = True


_watches: set[QueryWatch] = set()
_watches_lock = threading.Lock()
_stop_requested = threading.Event()


@contextmanager
def watched_query(cancel: Callable[[], None], timeout: timedelta | None = None) -> Iterator[QueryWatch]:
    """While the block runs a query (or streams its rows), a stop signal cancels it with `cancel`, and so does
    `timeout` where given (warehouses with a statement timeout of their own pass None)."""
    if _stop_requested.is_set():
        raise QueryStopped("stopped before the warehouse query started")
    watch = QueryWatch(cancel)
    timer = None
    with _watches_lock:
        _watches.add(watch)
    if timeout is not None:
        timer = threading.Timer(timeout.total_seconds(), watch.cancel, kwargs={"timed_out": True})
        timer.daemon = True
        timer.start()
    try:
        yield watch
    finally:
        if timer is not None:
            timer.cancel()
        watch.end()
        with _watches_lock:
            _watches.discard(watch)


def _cancel_queries(wakeup: socket.socket) -> None:
    """Read signal numbers as Python's C handler writes them; on a stop signal cancel every query under way."""
    while data := wakeup.recv(64):
        if not any(number in STOP_SIGNALS for number in data):
            continue
        _stop_requested.set()
        with _watches_lock:
            watches = list(_watches)
        for watch in watches:
            watch.cancel()


@contextmanager
def stop_signals_cancel_queries() -> Iterator[None]:
    """For the CLI's main thread: SIGINT and SIGTERM raise KeyboardInterrupt as Ctrl-C does, and cancel the
    warehouse queries under way at once, even while the main thread waits inside a driver."""
    previous = {number: signal.signal(number, signal.default_int_handler) for number in STOP_SIGNALS}
    wakeup, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    listener = threading.Thread(
        target=_cancel_queries, args=(wakeup,), name="wsync-stop-signals", daemon=True
    )
    listener.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for number, handler in previous.items():
            signal.signal(number, handler)
        writer.close()  # the listener reads the end of the stream and returns
        listener.join(timeout=5)
        wakeup.close()
        _stop_requested.clear()
