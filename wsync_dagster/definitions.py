"""The code location: the dg defs folder (wsync_dagster/defs_folder), every sync file in WSYNC_SYNCS_DIR among it."""

from pathlib import Path

from dagster import load_from_defs_folder

from wsync_dagster.components.shared import wsync_code_location

defs = wsync_code_location(load_from_defs_folder(path_within_project=Path(__file__).parent))
