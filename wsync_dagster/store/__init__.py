"""The profile store: where deliveries land and where profiles are read back.

Rules (README "Profile rules"): every value carries the time it describes; each sync keeps one register
per attribute and compares its own versions; a profile shows the newest value of any sync, ties to the
later delivery; identities change only for a newer row, and never onto another profile's identity.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from wsync_dagster.store.counts import DeliveryCounts
from wsync_dagster.store.planner import Delivery, ProfileStore

__all__ = ["Delivery", "DeliveryCounts", "ProfileStore", "ProfileStoreError", "open_profile_store"]

_SQLITE_PREFIX = "sqlite:///"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SQLITE_MAGIC = b"SQLite format 3\x00"


class ProfileStoreError(RuntimeError):
    """A profile store that cannot be opened; the message names the store and what is wrong."""


def open_profile_store(url: str) -> ProfileStore:
    """Open the store at a URL: sqlite:///relative/path, sqlite:////absolute/path, or postgresql://…"""
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://")):
        from wsync_dagster.store.postgres import PostgresBackend, PostgresStoreError

        try:
            return ProfileStore(PostgresBackend(url))
        except PostgresStoreError as error:
            raise ProfileStoreError(str(error)) from None
    path = _sqlite_path(url)
    try:
        if path.is_file():
            _check_intact(path)
        return ProfileStore(path)
    except (sqlite3.Error, OSError, RuntimeError) as error:
        raise ProfileStoreError(f"profile store {path}: {_what_is_wrong(path, error)}") from None


def _sqlite_path(url: str) -> Path:
    if url.startswith(_SQLITE_PREFIX) and len(url) > len(_SQLITE_PREFIX):
        return Path(url[len(_SQLITE_PREFIX) :]).expanduser()
    # Only the scheme is named: the rest of a URL may carry credentials.
    match = _SCHEME.match(url)
    scheme = match.group(1) if match else ""
    if scheme == "sqlite":
        raise ValueError("a sqlite profile store URL needs a path: sqlite:///PATH")
    raise ValueError(
        f"unsupported profile store URL scheme {scheme!r}: use sqlite:///PATH or postgresql://USER@HOST/DB"
        if scheme
        else "the profile store URL has no scheme: use sqlite:///PATH or postgresql://USER@HOST/DB"
    )


def _check_intact(path: Path) -> None:
    """Find a truncated or overwritten store before a delivery trips on it, without reading it all."""
    from wsync_dagster.store.sqlite import open_in_this_process

    if open_in_this_process(path):
        return  # open here already; and reading its header would drop this process's locks on it (sqlite.py)
    with path.open("rb") as file:
        header = file.read(100)
    if len(header) == 100 and header.startswith(_SQLITE_MAGIC) and _truncated(path, header):
        raise sqlite3.DatabaseError("database disk image is malformed")
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        for (table,) in tables:
            # Reads the table's root page and its first leaf: where overwritten bytes show first.
            connection.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchall()
    finally:
        connection.close()


def _truncated(path: Path, header: bytes) -> bool:
    """The file is shorter than the page count its header vouches for (SQLite file format §1.3)."""
    wal = path.with_name(f"{path.name}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return False  # the header may run ahead of the file until the WAL is checkpointed
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_size_valid = pages > 0 and header[24:28] == header[92:96]
    return header_size_valid and pages * page_size > path.stat().st_size


def _what_is_wrong(path: Path, error: Exception) -> str:
    """One line: what is wrong with the store and what to do about it."""
    if isinstance(error, FileExistsError | NotADirectoryError):
        ancestor = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        return f"{ancestor} is a file, not a folder"
    if isinstance(error, PermissionError):
        action = "read" if Path(error.filename or path).exists() else "create"
        return f"cannot {action} {error.filename}: permission denied"
    if isinstance(error, OSError):
        return f"cannot open: {error.strerror}"
    message = str(error)
    if path.is_dir():
        return "a folder, not a store file; WSYNC_PROFILE_STORE names the file, e.g. sqlite:///state/profiles.sqlite"
    if "file is not a database" in message:
        return "not a SQLite database; point WSYNC_PROFILE_STORE at a profile store, or move this file away"
    if "malformed" in message:
        return "the file is corrupt (database disk image is malformed); restore it from a backup"
    if "unable to open" in message or "readonly" in message:
        folder = path.parent
        if not os.access(folder, os.W_OK):
            return f"the folder {folder} is not writable; the store writes {path.name} and its -wal and -shm files there"
        if path.exists() and not os.access(path, os.W_OK):
            return "the file is read-only; the store needs to write it"
    return message
