"""What explain's history costs a big first load: 100k new profiles x 5 attributes delivered into a fresh
SQLite store through the planner, with this checkout's code and with another (the code before the history).

    .venv/bin/python bench/history_cost.py --base /tmp/base   # a checkout of the commit before explain

Each side runs in a process of its own (PYTHONPATH pointing at its checkout); the batch is built before
the clock starts, and only the delivery (apply and commit) is timed. Prints both timings and their ratio.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ATTRIBUTES = ("first_name", "plan", "seats", "country", "score")


def _one(profiles: int) -> float:
    """Seconds to deliver `profiles` new profiles x 5 attributes into a fresh store (this process's code)."""
    from wsync_dagster.store import ProfileStore
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
    batch = mapped(*rows, version=1_700_000_000_000_000)
    with tempfile.TemporaryDirectory() as tmp, ProfileStore(Path(tmp) / "store.sqlite") as store:
        options = {"run_id": "bench"} if "run_id" in inspect.signature(store.delivery).parameters else {}
        started = time.perf_counter()
        with store.delivery(
            sync="crm_users",
            environment="production",
            partitions=["2024-01-01"],
            input_protection="create_and_update",
            **options,
        ) as delivery:
            delivery.apply_batch(batch)
        return time.perf_counter() - started


def _timed(tree: Path, profiles: int, repeat: int) -> float:
    """The best of `repeat` deliveries with the code of `tree`, each in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    best = float("inf")
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(profiles)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        best = min(best, json.loads(out.strip().splitlines()[-1])["seconds"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="checkout to compare with (e.g. the commit before explain)")
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps({"seconds": _one(args.one)}))
        return
    this = _timed(HERE, args.profiles, args.repeat)
    print(
        f"this checkout ({HERE}): {this:.2f} s for {args.profiles} new profiles x {len(ATTRIBUTES)} attributes"
    )
    if args.base:
        base = _timed(args.base.resolve(), args.profiles, args.repeat)
        print(f"base ({args.base}): {base:.2f} s")
        print(f"ratio this/base: {this / base:.2f}")


if __name__ == "__main__":
    main()
