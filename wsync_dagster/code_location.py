"""Where the UI finds a sync: its code location as Dagster's instance records it, for toggles and run history.

`dagster dev` (workspace.yaml) and `dg dev` serve the syncs as the location `wsync`, repository `__repository__`.
A schedule's state and a run's place on its job's page are kept under those names, so a run `wsync run`
makes in its own process carries the same origin as one the UI launches.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from dagster import DagsterInstance
from dagster._core.code_pointer import CodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin
from dagster._core.remote_representation.external import RemoteRepository
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._core.remote_representation.handle import RepositoryHandle

from wsync_dagster.defs import build_definitions, sync_job_name
from wsync_dagster.spec import SyncSpec

LOCATION_NAME = "wsync"
REPOSITORY_NAME = "__repository__"
# The module workspace.yaml loads: what re-creates the job in another process.
CODE_MODULE = "wsync_dagster.definitions"


def remote_repository(spec: SyncSpec, instance: DagsterInstance) -> RemoteRepository:
    """The sync's definitions as the UI's code location holds them (same location, repository and names)."""
    repository = build_definitions([spec]).get_repository_def()
    handle = RepositoryHandle(
        repository_name=REPOSITORY_NAME,
        code_location_origin=RegisteredCodeLocationOrigin(location_name=LOCATION_NAME),
        repository_python_origin=RepositoryPythonOrigin(
            executable_path=sys.executable,
            code_pointer=CodePointer.from_module(CODE_MODULE, "defs", working_directory=os.getcwd()),
        ),
        display_metadata={},
    )
    return RemoteRepository(
        RepositorySnap.from_def(repository),
        handle,
        auto_materialize_use_sensors=instance.auto_materialize_use_sensors,
    )


def job_origins(spec: SyncSpec, instance: DagsterInstance) -> tuple[RemoteJobOrigin, JobPythonOrigin]:
    """The origins a run of the sync's job records: where the UI lists it, and the code that re-creates it."""
    job = remote_repository(spec, instance).get_full_job(sync_job_name(spec))
    return job.get_remote_origin(), job.get_python_origin()


@contextmanager
def runs_on_the_jobs_page(
    instance: DagsterInstance, origins: tuple[RemoteJobOrigin, JobPythonOrigin]
) -> Iterator[None]:
    """Runs created in here (by `execute_in_process`) carry the job's origins (`job_origins`), as the UI's own do.

    `execute_in_process` takes no origin, and the job page lists a job's runs by its code location's label.
    """
    remote_origin, code_origin = origins
    instance.create_run_for_job = partial(  # type: ignore[method-assign]
        type(instance).create_run_for_job.__get__(instance),
        remote_job_origin=remote_origin,
        job_code_origin=code_origin,
    )
    try:
        yield
    finally:
        del instance.create_run_for_job
