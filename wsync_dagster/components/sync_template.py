"""`dg scaffold defs wsync_dagster.WarehouseSync NAME`: a commented defs.yaml that validates as it is."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dagster import Scaffolder, ScaffoldRequest

# The demo warehouse (`wsync demo`), relative to the project root.
DEMO_WAREHOUSE = Path("data/demo_warehouse.duckdb")

TEMPLATE = """\
# A wsync sync as a Dagster component: the attributes are a sync file's keys (README: "A sync file"),
# and paths are relative to this file. `dg check defs` checks it; `dg list defs` shows its assets.
type: {type_name}
attributes:
  # Lower-case letters, digits and _: names the sync's assets, job and batch folder.
  name: {name}
  data_type: user                 # user | event
  # duckdb here (the demo warehouse, `wsync demo`); snowflake, bigquery, postgres, redshift, databricks,
  # delta: see the README. Secrets are always {{env: VAR}}.
  connection:
    type: duckdb
    path: {warehouse}
  data_model:
    sql: SELECT customer_id, email, first_name, plan, updated_at FROM crm.users
  mapping:                        # optional for user data; required for events
    - {{type: column, column: $unmapped, field: user_attributes.*}}
  sync:
    mode: incremental             # full | incremental | cdc
    iterator: updated_at
    iterator_type: timestamp      # timestamp | date | timestamp_unixtime_ms | timestamp_unixtime_s | integer
    schedule: on_demand           # interval (with frequency and start) | once | on_demand
    frequency: daily              # the partition size
    historical_start: 2024-01-01  # history is loaded from here by a backfill
  checks:                         # optional
    max_reject_rate: 0.05         # the reject-rate check fails above this share of rows
"""


class WarehouseSyncScaffolder(Scaffolder):
    """Writes `defs.yaml` for one sync, named after its folder, reading the demo warehouse."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        folder = request.target_path
        folder.mkdir(parents=True, exist_ok=True)
        root = request.project_root or Path.cwd()
        warehouse = Path(os.path.relpath(root.resolve() / DEMO_WAREHOUSE, folder.resolve())).as_posix()
        text = TEMPLATE.format(type_name=request.type_name, name=sync_name(folder.name), warehouse=warehouse)
        (folder / "defs.yaml").write_text(text, encoding="utf-8")


def sync_name(folder: str) -> str:
    """A valid sync name from a folder name: lower case, other characters as _, starting with a letter."""
    name = re.sub(r"[^a-z0-9_]", "_", folder.lower())
    return name if re.match(r"[a-z]", name) else f"sync_{name}"
