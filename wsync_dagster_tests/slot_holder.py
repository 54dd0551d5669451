"""A process holding the profile store's pool slot in a real Dagster run, as a delivering `wsync run` does.

Run as `python -m wsync_dagster_tests.slot_holder` with DAGSTER_HOME set: it claims the slot, prints
HOLDING with its run id, and keeps the slot until it is killed.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterInstance, OpExecutionContext, job, op

from wsync_dagster.defs.assets import PROFILE_STORE_POOL
from wsync_dagster.recovery import process_tags
from wsync_dagster.runner import MAX_RETRIES_TAG

HOLDING = "holding the profile_store slot in run"
JOB = "slot_holder_job"
START_TIMEOUT_S = 120.0


@op(pool=PROFILE_STORE_POOL)
def deliver_until_killed(context: OpExecutionContext) -> None:
    """Hold the slot, as a long delivery does."""
    print(f"{HOLDING} {context.run_id}", flush=True)
    time.sleep(3600)


@job(name=JOB)
def slot_holder_job() -> None:
    """One op in the profile store's pool."""
    deliver_until_killed()


@dataclass(frozen=True)
class SlotHolder:
    """The holding process and its Dagster run."""

    process: subprocess.Popen[str]
    run_id: str

    def kill(self) -> None:
        """SIGKILL the holder, as a crash or `kill -9` would: its run stays STARTED with the slot."""
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def slot_holder(home: Path) -> Iterator[SlotHolder]:
    """Start a holder on the Dagster home; yields once it holds the slot, kills it on the way out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "wsync_dagster_tests.slot_holder"],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    holder = SlotHolder(process, run_id="")
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(HOLDING):
                holder = SlotHolder(process, run_id=line.split()[-1])
                break
        assert holder.run_id, f"the slot holder exited with {process.wait(START_TIMEOUT_S)}"
        yield holder
    finally:
        holder.kill()


if __name__ == "__main__":
    with DagsterInstance.get() as instance:
        slot_holder_job.execute_in_process(instance=instance, tags={**process_tags(), MAX_RETRIES_TAG: "0"})
    sys.exit(0)
