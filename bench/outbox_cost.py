"""What the destinations' outbox costs: a first load of N new profiles x 5 attributes delivered into a fresh
store with no destination and with two (the delivery marks each profile pending for each, in its own
transaction), and the forward's read side: every pending profile read back as one coalesced change, in
slices, and acknowledged, with no HTTP (the send is the sender's, bench'ed by the encoders' owner).

    .venv/bin/python bench/outbox_cost.py [--profiles 100000] [--stores sqlite,postgresql]

The batch is built before the clock starts; each line is the best of --repeat runs. Prints seconds,
profiles/s and the ratio of the delivery with destinations to the delivery without.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

ATTRIBUTES = ("first_name", "plan", "seats", "country", "score")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_store(kind: str) -> Iterator:
    """An empty SQLite file, or a scratch PostgreSQL database dropped afterwards."""
    from wsync_dagster.store import ProfileStore, open_profile_store

    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp, ProfileStore(Path(tmp) / "store.sqlite") as store:
            yield store
        return
    import uuid

    import psycopg2

    name = f"wsync_outbox_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        with open_profile_store(f"postgresql://postgres@127.0.0.1:5432/{name}") as store:
            yield store
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def batch_of(profiles: int):
    from wsync_dagster_tests.test_profile_store import mapped

    rows = [
        {
            "customer_id": f"C{n:07d}",
            "first_name": f"name-{n}",
            "plan": ("free", "team", "pro")[n % 3],
            "seats": n % 50,
            "country": ("NL", "DE", "US", "FR")[n % 4],
            "score": n * 0.5,
        }
        for n in range(profiles)
    ]
    return mapped(*rows, version=1_700_000_000_000_000)


def deliver(store, batch, destinations: tuple[str, ...]) -> float:
    started = time.perf_counter()
    with store.delivery(
        sync="crm_users",
        environment="production",
        partitions=["2024-01-01"],
        input_protection="create_and_update",
        destinations=destinations,
    ) as delivery:
        delivery.apply_batch(batch)
    return time.perf_counter() - started


def read_and_acknowledge(store, slice_profiles: int) -> tuple[float, int]:
    """Every pending profile of one destination read as changes and acknowledged; seconds and profiles."""
    started = time.perf_counter()
    after, seen = None, 0
    while True:
        pending = store.pending_forward("crm_users", "mp", "production", after, slice_profiles)
        if pending.last_profile_id is None:
            break
        after = pending.last_profile_id
        seen += len(pending.changes)
        store.acknowledge_forward("crm_users", "mp", "production", pending.rows, [], pending.changes)
    return time.perf_counter() - started, seen


def delivery_seconds(kind: str, batch, destinations: tuple[str, ...]) -> float:
    with fresh_store(kind) as store:
        return deliver(store, batch, destinations)


def forward_side_seconds(kind: str, batch, slice_profiles: int) -> float:
    with fresh_store(kind) as store:
        deliver(store, batch, ("mp",))
        seconds, seen = read_and_acknowledge(store, slice_profiles)
        assert seen == batch.num_rows, (seen, batch.num_rows)
        return seconds


def best(repeat: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--slice", type=int, default=5000)
    args = parser.parse_args()
    batch = batch_of(args.profiles)
    n = args.profiles
    print(f"{n:,} new profiles x {len(ATTRIBUTES)} attributes; best of {args.repeat}")
    for kind in args.stores.split(","):
        without = best(args.repeat, partial(delivery_seconds, kind, batch, ()))
        marked = best(args.repeat, partial(delivery_seconds, kind, batch, ("mp", "amp")))
        read = best(args.repeat, partial(forward_side_seconds, kind, batch, args.slice))
        print(f"{kind}: delivery, no destination      {without:7.2f} s  {n / without:>10,.0f} profiles/s")
        print(
            f"{kind}: delivery, two destinations    {marked:7.2f} s  {n / marked:>10,.0f} profiles/s"
            f"  ratio {marked / without:.2f}"
        )
        print(
            f"{kind}: outbox read + acknowledge     {read:7.2f} s  {n / read:>10,.0f} profiles/s"
            f" (one destination, slices of {args.slice:,})"
        )


if __name__ == "__main__":
    main()
