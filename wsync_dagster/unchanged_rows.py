"""A full-mode re-read on a DuckDB warehouse: the warehouse's query maps and fingerprints every row as it
streams out, and the rows the store holds unchanged are dropped before the mapping and the delivery."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wsync_dagster import batches as b
from wsync_dagster.data_model import check_read_only_select
from wsync_dagster.mapping import BatchMapper, MappingPlan, _ident, identity_sql
from wsync_dagster.warehouses.base import Warehouse

# The store's (row_key, fingerprint) of the sync and environment, each the first 64 bits of its md5
# (ProfileStore.fingerprints): read only when the warehouse can use them.
StoredFingerprints = Callable[[], pa.Table]

_KEY, _FINGERPRINT, _CLEAN = "__key_64", "__fingerprint_64", "__clean"


class UnchangedRows:
    """Drops, batch by batch, the rows the store holds unchanged: mapped without a reject, whose row key
    and fingerprint the store holds, and none of whose identity values another row of the model holds
    (rows of one customer are settled together, and a key of two rows stores a fingerprint of both: such
    rows go on to the delivery, which looks them up itself)."""

    def __init__(self, stored: pa.Table, shared: list[np.ndarray]):
        # One 64-bit value per pair: a changed row passes for unchanged only if it collides with one of them.
        self._stored = np.sort(_pair(stored.column("row_key"), stored.column("fingerprint")))
        self._shared = shared  # per identity column, the sorted hashes of values held by several rows
        self.rows = 0  # dropped so far

    def keep(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch's rows to map, numbered by their place in the read, without the comparison's columns."""
        unchanged = _is_in(_pair(batch.column(_KEY), batch.column(_FINGERPRINT)), self._stored)
        unchanged &= batch.column(_CLEAN).to_numpy(zero_copy_only=False)
        for index, shared in enumerate(self._shared):
            unchanged &= ~_is_in(batch.column(_identity_hash(index)).to_numpy(), shared)
        self.rows += int(unchanged.sum())
        extra = [_KEY, _FINGERPRINT, _CLEAN, *(_identity_hash(i) for i in range(len(self._shared)))]
        kept = batch.filter(pa.array(~unchanged))
        return kept.select([name for name in kept.schema.names if name not in extra])


def unchanged_read(
    plan: MappingPlan,
    warehouse: Warehouse,
    model_sql: str,
    run_version: int,
    stored: StoredFingerprints | None,
    *,
    mirror: bool,
) -> tuple[str, UnchangedRows] | None:
    """The query of every row with what compares it, and the filter that drops the unchanged; None where the
    rows must all be mapped (another warehouse, a mirror, a first run, another mode)."""
    # A mirror needs every row's key and profile; rows of other modes have no stored fingerprints to match.
    if stored is None or warehouse.dialect != "duckdb" or mirror or not plan.full_mode:
        return None
    if plan.data_type != "user" or plan.delete_column:
        return None
    fingerprints = stored()
    if not fingerprints.num_rows:
        return None
    # As the other reads wrap it: checked and written out by sqlglot, so a trailing comment ends nothing.
    model = check_read_only_select(model_sql, warehouse.dialect).sql(dialect=warehouse.dialect)
    shared = [_shared_values(warehouse, model, column) for column in plan.identities.values()]
    return _compared_sql(plan, model, run_version), UnchangedRows(fingerprints, shared)


def _shared_values(warehouse: Warehouse, model: str, column: str) -> np.ndarray:
    """The sorted hashes of the identity values the column gives more than one row (a hash collision only
    maps a row more); a read of its own, by value, whose aggregate spills within the memory limit."""
    value = identity_sql(column)
    sql = (
        f"SELECT hash({value}) AS value FROM ({model}) AS src WHERE {value} IS NOT NULL "
        "GROUP BY 1 HAVING COUNT(*) > 1"
    )
    found = [batch.column(0).to_numpy() for batch in warehouse.read_batches(sql)]
    return np.sort(np.concatenate([np.empty(0, np.uint64), *found]))


def _compared_sql(plan: MappingPlan, model: str, run_version: int) -> str:
    """Every row of the model, in read order and numbered by it, with its row key's and fingerprint's first
    64 bits, whether it maps without a reject, and its identity values' hashes."""
    mapper = BatchMapper(plan, run_version=run_version)
    try:
        mapped = mapper.row_sql(run_version)
    finally:
        mapper.close()
    hashes = [
        f"hash(m.{_ident(b.IDENTITY_PREFIX + kind)}) AS {_identity_hash(index)}"
        for index, kind in enumerate(plan.identities)
    ]
    columns = [
        "unnest(m.__source)",
        f"m.{_ident(b.ROW_KEY + '_64')} AS {_KEY}",
        f"m.{_ident(b.FINGERPRINT + '_64')} AS {_FINGERPRINT}",
        f"m._reject IS NULL AS {_CLEAN}",
        *hashes,
    ]
    # Numbered as the mapping numbers a plain read: rejects and ties keep their place.
    return (
        f"WITH source_batch AS (SELECT *, CAST(row_number() OVER () - 1 AS BIGINT) AS __row "
        f"FROM ({model}) AS model) SELECT {', '.join(columns)} FROM ({mapped}) AS m"
    )


def _identity_hash(index: int) -> str:
    return f"__identity_hash_{index}"


def _pair(keys: pa.Array | pa.ChunkedArray, fingerprints: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A row key's and a fingerprint's 64 bits as one value (the multiplier is odd: no bits are lost)."""
    return _uint64(keys) * np.uint64(0x9E3779B97F4A7C15) ^ _uint64(fingerprints)


def _uint64(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False), np.uint64)


def _is_in(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Per value, whether the sorted array holds it."""
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values
