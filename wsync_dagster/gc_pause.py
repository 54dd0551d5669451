"""Python's cycle collector paused while a hot loop builds many small acyclic objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """No cycle collection inside: each one re-walks every live object (a million row tuples or events being
    encoded), which took half a PostgreSQL read's time and doubled forwarding's encoding time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
