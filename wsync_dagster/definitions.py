"""The code location: every sync file in WSYNC_SYNCS_DIR, as Dagster definitions."""

from dagster import Definitions

from wsync_dagster.defs import build_definitions
from wsync_dagster.defs.recovery import build_recovery_sensor
from wsync_dagster.settings import syncs_dir
from wsync_dagster.spec import load_syncs

defs = Definitions.merge(
    build_definitions(load_syncs(syncs_dir()) if syncs_dir().is_dir() else []),
    Definitions(sensors=[build_recovery_sensor()]),
)
