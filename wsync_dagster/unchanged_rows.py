"""A full-mode re-read on a DuckDB warehouse: rows the store holds unchanged are found by the warehouse's own
query, which maps and fingerprints every row and anti-joins the fingerprints with the store's, so that only
the other rows are read out and go through the mapping and the delivery."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from wsync_dagster import batches as b
from wsync_dagster.data_model import check_read_only_select
from wsync_dagster.mapping import BatchMapper, MappingPlan, _ident, identity_sql
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
    register(_STORED, _distinct_pairs(fingerprints))
    # As the other reads wrap it: checked and written out by sqlglot, so a trailing comment ends nothing.
    model = check_read_only_select(model_sql, warehouse.dialect).sql(dialect=warehouse.dialect)
    [count] = warehouse.read_batches(f"SELECT COUNT(*) AS n FROM ({model}) AS model")
    total = count.column(0)[0].as_py()
    return _changed_rows_sql(plan, model, run_version), total


def _changed_rows_sql(plan: MappingPlan, model_sql: str, run_version: int) -> str:
    """The model's rows, but for those the store holds unchanged: mapped without a reject, whose row key and
    fingerprint the store holds, and none of whose identities another row of the model holds (rows of one
    customer are settled together, and a key of two rows stores a fingerprint of both: such rows are read
    and left to the delivery's own look-up).

    Within the warehouse's memory limit: what is shared is found by a read of its own, by the values' hashes
    (a collision only reads a row more), so the mapped rows stream through two joins whose build sides
    (the store's fingerprints, the few shared hashes) spill if they must."""
    mapper = BatchMapper(plan, run_version=run_version)
    try:
        mapped = mapper.row_sql(run_version)
    finally:
        mapper.close()
    shared = [
        f"shared_{index} AS (SELECT hash({identity_sql(column)}) AS value FROM ({model_sql}) AS src "
        f"WHERE {identity_sql(column)} IS NOT NULL GROUP BY 1 HAVING COUNT(*) > 1)"
        for index, column in enumerate(plan.identities.values())
    ]
    changed = [
        "f.row_key IS NULL",
        "m._reject IS NOT NULL",
        *(
            f"hash(m.{_ident(b.IDENTITY_PREFIX + kind)}) IN (SELECT value FROM shared_{index})"
            for index, kind in enumerate(plan.identities)
        ),
    ]
    # The stored pairs are distinct (_distinct_pairs): a row matches one at most.
    matched = (
        f"LEFT JOIN {_STORED} AS f ON f.row_key = m.{_ident(b.ROW_KEY + '_64')} "
        f"AND f.fingerprint = m.{_ident(b.FINGERPRINT + '_64')}"
    )
    # Numbered as the mapping numbers a plain read: its rejects and ties keep their place.
    return (
        f"WITH {', '.join(shared)}, source_batch AS (SELECT *, CAST(row_number() OVER () - 1 AS BIGINT) AS __row "
        f"FROM ({model_sql}) AS model), mapped AS ({mapped}) "
        f"SELECT unnest(m.__source) FROM mapped AS m {matched} WHERE {' OR '.join(changed)} "
        f"ORDER BY m.{_ident(b.ROW)}"
    )


def _distinct_pairs(fingerprints: pa.Table) -> pa.Table:
    """The stored (row key, fingerprint) pairs once each: two keys may share their first 64 bits."""
    return fingerprints.group_by(["row_key", "fingerprint"], use_threads=False).aggregate([])
