"""A full-mode re-read on a DuckDB warehouse: rows the store holds unchanged are found by the warehouse's own
query, which maps and fingerprints every row and anti-joins the fingerprints with the store's, so that only
the other rows are read out and go through the mapping and the delivery."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from wsync_dagster import batches as b
from wsync_dagster.data_model import check_read_only_select
from wsync_dagster.mapping import BatchMapper, MappingPlan, _ident
from wsync_dagster.warehouses.base import Warehouse

# The store's (row_key, fingerprint) of the sync and environment, each its first 64 bits
# (ProfileStore.fingerprints): read only when the warehouse can use them.
StoredFingerprints = Callable[[], pa.Table]

_STORED = "wsync_stored_fingerprints"


def changed_rows_read(
    plan: MappingPlan,
    warehouse: Warehouse,
    model_sql: str,
    run_version: int,
    stored: StoredFingerprints | None,
    *,
    mirror: bool,
) -> tuple[str, int] | None:
    """(query of the rows to map, in read order and numbered by their place in the whole read; how many rows
    the model has), or None where the rows must all be read as they are (another warehouse, a mirror, …)."""
    register = getattr(warehouse, "register", None)
    # A mirror needs every row's key and profile; rows of other modes have no stored fingerprints to match.
    if stored is None or register is None or mirror or not plan.full_mode or plan.data_type != "user":
        return None
    fingerprints = stored()
    if not fingerprints.num_rows:
        return None  # a first sync: every row is new
    register(_STORED, fingerprints)
    # As the other reads wrap it: checked and written out by sqlglot, so a trailing comment ends nothing.
    model = check_read_only_select(model_sql, warehouse.dialect).sql(dialect=warehouse.dialect)
    [count] = warehouse.read_batches(f"SELECT COUNT(*) AS n FROM ({model}) AS model")
    total = count.column(0)[0].as_py()
    return _changed_rows_sql(plan, model, run_version), total


def _changed_rows_sql(plan: MappingPlan, model_sql: str, run_version: int) -> str:
    """The model's rows, but for those the store holds unchanged: mapped without a reject, whose row key and
    fingerprint the store holds, and none of whose identities another row of the model holds (rows of one
    customer are settled together, and a key of two rows stores a fingerprint of both: such rows are read
    and left to the delivery's own look-up)."""
    mapper = BatchMapper(plan, run_version=run_version)
    try:
        mapped = mapper.row_sql(run_version)
    finally:
        mapper.close()
    identities = [_ident(b.IDENTITY_PREFIX + kind) for kind in plan.identities]
    shared = [
        f"shared_{index} AS (SELECT {column} AS value FROM mapped WHERE {column} IS NOT NULL "
        f"GROUP BY {column} HAVING COUNT(*) > 1)"
        for index, column in enumerate(identities)
    ]
    alone = [
        f"NOT EXISTS (SELECT 1 FROM shared_{index} AS s WHERE s.value = m.{column})"
        for index, column in enumerate(identities)
    ]
    unchanged = " AND ".join(
        [
            "m._reject IS NULL",
            f"EXISTS (SELECT 1 FROM {_STORED} AS f WHERE f.row_key = m.{_ident(b.ROW_KEY + '_64')} "
            f"AND f.fingerprint = m.{_ident(b.FINGERPRINT + '_64')})",
            *alone,
        ]
    )
    # Numbered as the mapping numbers a plain read: its rejects and ties keep their place.
    return (
        f"WITH source_batch AS (SELECT *, CAST(row_number() OVER () - 1 AS BIGINT) AS __row "
        f"FROM ({model_sql}) AS model), mapped AS ({mapped}), {', '.join(shared)} "
        f"SELECT unnest(m.__source) FROM mapped AS m WHERE NOT ({unchanged}) ORDER BY m.{_ident(b.ROW)}"
    )
