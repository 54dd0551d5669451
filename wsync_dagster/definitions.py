"""The code location: every sync file in WSYNC_SYNCS_DIR, as Dagster definitions."""

from wsync_dagster.defs import build_folder_definitions
from wsync_dagster.settings import syncs_dir
from wsync_dagster.spec import SyncFolder, load_sync_folder

defs = build_folder_definitions(load_sync_folder(syncs_dir()) if syncs_dir().is_dir() else SyncFolder([], []))
