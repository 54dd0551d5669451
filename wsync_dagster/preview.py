"""`wsync preview`: a few enriched profiles or events mapped from the model, written nowhere."""

from __future__ import annotations

import json

from wsync_dagster.batches import ATTRIBUTE_PREFIX, EVENT_DATA, EVENT_ID, EVENT_TYPE, IDENTITY_PREFIX
from wsync_dagster.data_model import limited_sql
from wsync_dagster.mapping import BatchMapper, build_plan
from wsync_dagster.spec import SyncSpec
from wsync_dagster.warehouses import open_warehouse


def preview_rows(spec: SyncSpec, limit: int = 5) -> list[dict]:
    """Sample enriched profiles or events from the model; nothing is written."""
    warehouse = open_warehouse(spec)
    try:
        plan = build_plan(spec, warehouse.columns(spec.data_model.sql))
        mapper = BatchMapper(plan)
        rows: list[dict] = []
        for batch in warehouse.read_batches(limited_sql(spec.data_model.sql, limit, warehouse.dialect)):
            mapped, rejects = mapper.map(batch)
            rows.extend(_enriched(row) for row in mapped.to_pylist())
            rows.extend({"rejected": r["reason"], "row": json.loads(r["row"])} for r in rejects.to_pylist())
        return rows
    finally:
        warehouse.close()


def _enriched(row: dict) -> dict:
    identities = {k[len(IDENTITY_PREFIX) :]: v for k, v in row.items() if k.startswith(IDENTITY_PREFIX) and v}
    attributes = {
        k[len(ATTRIBUTE_PREFIX) :]: json.loads(v) if v is not None else None
        for k, v in row.items()
        if k.startswith(ATTRIBUTE_PREFIX)
    }
    enriched: dict = {"identities": identities, "attributes": attributes}
    if EVENT_ID in row:
        enriched["event"] = {"event_type": row[EVENT_TYPE], "data": json.loads(row[EVENT_DATA])}
    return enriched
