"""The partitions one run covers, and which of them each row belongs to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Partition:
    """One partition of a run: its key, and its iterator window in epoch µs (None, None for full mode)."""

    key: str
    window: tuple[int | None, int | None] = (None, None)


def partition_of_rows(versions: pa.Array, partitions: Sequence[Partition]) -> np.ndarray:
    """Per row, the index of the partition its version falls in; rows read by lookback go to the first."""
    starts = np.array([partition.window[0] for partition in partitions[1:]], dtype=np.int64)
    if not len(starts):
        return np.zeros(len(versions), dtype=np.int64)
    known = pc.fill_null(versions, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)
    return np.searchsorted(starts, known, side="right")
