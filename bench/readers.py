"""Benchmark: reading a 1M-row model from a Delta table, wsync's reader side by side with drt-core's.

Run with `.venv/bin/python bench/readers.py [--rows N] [--drt-python PYTHON]`. Each line runs in its own
process: `peak MB` is that process's peak resident memory, `+ reading` what reading added to the peak
after the imports. drt-core runs from a Python where `drt-core[deltalake]` and pyarrow are installed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

MODEL = "SELECT customer_id, email, plan, seats, score, updated_at FROM crm.users"
LINES = {
    "wsync-delta": "wsync delta reader: Arrow batches (100k rows)",
    "drt-delta": "drt-core deltalake source: one dict per row",
}


def build_table(path: Path, rows: int) -> None:
    """A users table of `rows` rows in 10 files, as a Delta table at `path`."""
    from deltalake import write_deltalake

    chunk = rows // 10
    for part in range(10):
        ids = pa.array(range(part * chunk, (part + 1) * chunk), pa.int64())
        write_deltalake(
            str(path),
            pa.table(
                {
                    "customer_id": pa.compute.cast(ids, pa.string()),
                    "email": pa.compute.binary_join_element_wise(
                        "user", pa.compute.cast(ids, pa.string()), "@example.com", ""
                    ),
                    "plan": pa.array(["pro", "free", "team", None] * (chunk // 4), pa.string()),
                    "seats": ids,
                    "score": pa.compute.divide(pa.compute.cast(ids, pa.float64()), 7.0),
                    "updated_at": pa.compute.cast(pa.compute.multiply(ids, 1_000_000), pa.timestamp("us")),
                }
            ),
            mode="append",
        )


def imports_wsync() -> None:
    from wsync_dagster.warehouses.delta import DeltaConnection  # noqa: F401


def imports_drt() -> None:
    from drt.sources.deltalake import DeltaLakeSource  # noqa: F401


def read_wsync(path: Path) -> int:
    """Rows read by wsync's Delta reader."""
    from wsync_dagster.warehouses.delta import DeltaConnection

    warehouse = DeltaConnection(type="delta", tables={"crm.users": str(path)}).open(path.parent)
    try:
        return sum(batch.num_rows for batch in warehouse.read_batches(MODEL))
    finally:
        warehouse.close()


def read_drt(path: Path) -> int:
    """Rows read by drt-core's Delta Lake source."""
    from drt.config.credentials import DeltaLakeProfile
    from drt.sources.deltalake import DeltaLakeSource

    profile = DeltaLakeProfile(type="deltalake", location=str(path), table="users")
    return sum(1 for _ in DeltaLakeSource().extract(MODEL.replace("crm.users", "users"), profile))


def run_line(line: str, path: Path) -> None:
    """One measurement in this process: rows, seconds, peak RSS; printed as JSON."""
    imports, reader = {"wsync-delta": (imports_wsync, read_wsync), "drt-delta": (imports_drt, read_drt)}[line]
    import deltalake  # noqa: F401
    import duckdb  # noqa: F401

    imports()
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    rows = reader(path)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb, "read_mb": peak_mb - before_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--drt-python", default=sys.executable, help="a Python with drt-core[deltalake] (default: this one)"
    )
    parser.add_argument("--line", choices=LINES, help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.line:
        run_line(args.line, args.table)
        return
    with tempfile.TemporaryDirectory(prefix="wsync-bench-") as folder:
        table = Path(folder) / "users"
        build_table(table, args.rows)
        print(f"{'line':<50} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak MB':>8} {'+ reading':>9}")
        for line, label in LINES.items():
            python = args.drt_python if line.startswith("drt") else sys.executable
            result = subprocess.run(
                [python, __file__, "--line", line, "--table", str(table)], capture_output=True, text=True
            )
            if result.returncode:
                why = (result.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"{label:<50} not run: {why}")
                continue
            m = json.loads(result.stdout)
            print(
                f"{label:<50} {m['rows']:>10,} {m['seconds']:>8.2f} {m['rows'] / m['seconds']:>10,.0f} "
                f"{m['peak_mb']:>8.0f} {m['read_mb']:>9.0f}"
            )


if __name__ == "__main__":
    main()
