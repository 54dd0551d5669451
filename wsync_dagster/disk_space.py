"""A full disk told apart from other failures, and reported naming the folder whose disk it is."""

from __future__ import annotations

import errno
import sqlite3

# No space, a quota reached, or a file grown past the size limit the process runs under.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """A write that found no space; the message names the folder and what was left behind."""


def is_disk_full(error: BaseException) -> bool:
    """True when the error is a write that found the disk (or the quota) full."""
    if isinstance(error, OSError):
        return error.errno in _FULL
    return (
        isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    )
