"""BigQuery warehouse: GoogleSQL through google-cloud-bigquery, results as Arrow record batches."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from wsync_dagster.cancellation import watched_query
from wsync_dagster.data_model import SourceTable, probe_sql
from wsync_dagster.warehouses.base import (
    DEFAULT_QUERY_TIMEOUT,
    ConnectionSpec,
    EnvValue,
    Setting,
    WarehouseError,
    cancelled_error,
    resolve,
)

logger = logging.getLogger("wsync")

# Checked in this order: bool is an int, and datetime is a date.
_PARAMETER_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "BOOL"),
    (int, "INT64"),
    (float, "FLOAT64"),
    (Decimal, "NUMERIC"),
    (datetime, "DATETIME"),
    (date, "DATE"),
    (str, "STRING"),
)


class BigQueryConnection(ConnectionSpec):
    """A BigQuery project, with a service-account key or application default credentials."""

    dialect = "bigquery"
    type: Literal["bigquery"]
    project: Setting
    dataset: Setting | None = None
    location: Setting | None = None
    credentials: EnvValue | None = None
    api_endpoint: Setting | None = None

    def open(self, base: Path) -> BigQueryWarehouse:
        """A client for the project; nothing is sent until the first query."""
        from google.api_core.client_options import ClientOptions
        from google.cloud import bigquery

        project = resolve(self.project, "project")
        endpoint = resolve(self.api_endpoint, "api_endpoint")
        dataset = resolve(self.dataset, "dataset")
        credentials = self._credentials(endpoint)
        client = bigquery.Client(
            project=project,
            credentials=credentials,
            location=resolve(self.location, "location"),
            client_options=ClientOptions(api_endpoint=endpoint) if endpoint else None,
        )
        # The Storage Read API streams Arrow from Google's own endpoint; another endpoint reads REST pages.
        read_client = None if endpoint else _storage_read_client(credentials)
        default_dataset = None
        if dataset:
            default_dataset = dataset if "." in dataset else f"{project}.{dataset}"
        return BigQueryWarehouse(
            client,
            read_client,
            name=f"BigQuery project {project}" + (f" at {endpoint}" if endpoint else ""),
            default_dataset=default_dataset,
            query_timeout=self.query_timeout,
        )

    def _credentials(self, endpoint: str | None):
        """The service account in the `credentials` secret; without it, application default credentials."""
        if self.credentials is None:
            if endpoint and endpoint.startswith("http://"):
                # A plain-HTTP endpoint is a local emulator: no token travels in clear text.
                from google.auth.credentials import AnonymousCredentials

                return AnonymousCredentials()
            return _default_credentials()
        from google.oauth2 import service_account

        secret = resolve(self.credentials, "credentials")
        try:
            return service_account.Credentials.from_service_account_info(json.loads(secret or ""))
        except (ValueError, TypeError, AttributeError) as error:
            # The library's text is kept only where it names missing fields: elsewhere it may quote the key.
            text = str(error)
            if isinstance(error, json.JSONDecodeError):
                reason = "it is not JSON"
            elif "missing fields" in text:
                reason = text.split(", ", 1)[-1].rstrip(".")
            else:
                reason = "its private_key does not load" if isinstance(error, ValueError) else "not an object"
            raise WarehouseError(
                f"connection.credentials: the secret in {self.credentials.env} is not a "
                f"service-account JSON key ({reason})"
            ) from None

    def table_path(self, table: SourceTable, base: Path) -> tuple[str, ...]:
        """project.dataset.table, with the connection's project and default dataset filled in."""
        project, dataset = (_shown(value) for value in (self.project, self.dataset))
        if dataset and "." in dataset:
            project, dataset = dataset.split(".", 1)
        return (table.catalog or project, table.schema or dataset or "", table.name)


def _shown(value: Setting | None) -> str | None:
    """A setting as it may be shown without resolving it: the literal, or `$VAR`."""
    return f"${value.env}" if isinstance(value, EnvValue) else value


def _default_credentials():
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default()[0]
    except DefaultCredentialsError:
        raise WarehouseError(
            "connection.credentials: not given, and no application default credentials were found "
            "(set credentials: {env: VAR} holding a service-account JSON key, or run "
            "`gcloud auth application-default login`)"
        ) from None


def _storage_read_client(credentials):
    """A Storage Read API client, or None when google-cloud-bigquery-storage is not installed."""
    try:
        from google.cloud import bigquery_storage_v1
    except ImportError:
        return None
    return bigquery_storage_v1.BigQueryReadClient(credentials=credentials)


def query_parameters(params: Sequence[Any]) -> list:
    """Positional query parameters of the bounds' own BigQuery types: a naive datetime is a DATETIME, an
    aware one a TIMESTAMP (BigQuery refuses to compare a DATETIME column with a TIMESTAMP)."""
    from google.cloud import bigquery

    parameters = []
    for value in params:
        kind = next((name for cls, name in _PARAMETER_TYPES if isinstance(value, cls)), None)
        if kind is None:
            raise TypeError(f"no BigQuery parameter type for {type(value).__name__}")
        if kind == "DATETIME" and value.tzinfo is not None:
            kind = "TIMESTAMP"
        parameters.append(bigquery.ScalarQueryParameter(None, kind, value))
    return parameters


# BIGNUMERIC arrives as decimal256, which DuckDB (the mapping) cannot read: it is read as NUMERIC's type.
_NUMERIC = pa.decimal128(38, 9)


def standard_schema(schema: pa.Schema) -> pa.Schema:
    """The columns as every reader gives them: BIGNUMERIC as NUMERIC's decimal128(38, 9)."""
    return pa.schema(
        [field.with_type(_NUMERIC) if pa.types.is_decimal256(field.type) else field for field in schema]
    )


def standard_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch in `standard_schema`; a BIGNUMERIC value NUMERIC cannot hold exactly is an error, never rounded."""
    schema = standard_schema(batch.schema)
    if schema.equals(batch.schema):
        return batch
    columns = []
    for field, column in zip(schema, batch.columns, strict=True):
        try:
            columns.append(column.cast(field.type) if column.type != field.type else column)
        except pa.ArrowInvalid:
            raise WarehouseError(
                f"data_model.sql: column {field.name}: a BIGNUMERIC value does not fit NUMERIC "
                f"(38 digits, 9 after the point); CAST it in the model (to NUMERIC with ROUND, FLOAT64 or STRING)"
            ) from None
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class BigQueryWarehouse:
    """Runs GoogleSQL queries as jobs and streams their results as Arrow."""

    dialect = "bigquery"

    def __init__(
        self,
        client,
        read_client,
        *,
        name: str,
        default_dataset: str | None = None,
        query_timeout: timedelta = DEFAULT_QUERY_TIMEOUT,
    ):
        self._query_timeout = query_timeout
        self._client = client
        self._read_client = read_client
        self.name = name
        self._default_dataset = default_dataset
        self._retry, self._job_retry = _retries()

    def columns(self, sql: str) -> pa.Schema:
        """The model's columns, from a zero-row probe."""
        rows = self._rows(probe_sql(sql, self.dialect), (), page_size=None)
        with self._errors():
            return standard_schema(rows.to_arrow(create_bqstorage_client=False).schema)

    def read_batches(
        self, sql: str, params: Sequence[Any] = (), batch_size: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream the rows over the Storage Read API where it serves them, else as REST pages of `batch_size`."""
        from google.api_core.exceptions import GoogleAPIError

        rows = self._rows(sql, params, batch_size)
        with self._errors():
            if self._read_client is not None:
                batches = rows.to_arrow_iterable(bqstorage_client=self._read_client)
                try:
                    first = next(batches, None)
                except GoogleAPIError as error:
                    # Nothing was read yet; BigQuery answers the same query again from its result cache.
                    logger.warning(
                        f"{self.name}: Storage Read API unavailable, reading REST pages: {_first_line(error)}"
                    )
                    rows = self._rows(sql, params, batch_size)
                else:
                    yield from map(
                        standard_batch, itertools.chain([first] if first is not None else [], batches)
                    )
                    return
            yield from map(standard_batch, rows.to_arrow_iterable())

    def close(self) -> None:
        """Close the HTTP and gRPC sessions."""
        self._client.close()
        if self._read_client is not None:
            self._read_client.transport.close()

    def _rows(self, sql: str, params: Sequence[Any], page_size: int | None):
        """Run the query as a job and wait for it; its rows are then read page by page."""
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            query_parameters=query_parameters(params), default_dataset=self._default_dataset
        )

        jobs = []

        def run():
            # job_retry=None: the library's own job retry would also wait 10 minutes for an absent host.
            job = self._client.query(sql, job_config=config, retry=self._retry, job_retry=None)
            jobs.append(job)
            return job.result(page_size=page_size, retry=self._retry)

        def cancel() -> None:
            if jobs:
                jobs[-1].cancel()

        # A stop signal or query_timeout cancels the job (not tried against BigQuery itself: the emulator
        # answers at once).
        with watched_query(cancel, self._query_timeout) as watch:
            try:
                with self._errors():
                    return self._job_retry(run)()
            except Exception:
                if cancelled := cancelled_error(watch, self.name, self._query_timeout):
                    raise cancelled from None
                raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Google's exceptions as one WarehouseError line naming the warehouse, never quoting a secret."""
        try:
            yield
        except WarehouseError:
            raise
        except Exception as error:
            message = _message(error)
            if message is None:
                raise
            raise WarehouseError(f"{self.name}: {message}") from None


def _message(error: BaseException) -> str | None:
    """What went wrong, in one line, or None for an error that is not the warehouse's."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(error, requests.exceptions.ConnectionError | auth.TransportError):
        # urllib3 nests the cause in a long repr: keep what it says after the connection's name.
        reason = getattr(error.args[0], "reason", error.args[0]) if error.args else error
        return f"cannot reach it: {_first_line(reason).split('): ', 1)[-1]}"
    if isinstance(error, auth.RefreshError):
        return f"connection.credentials: Google refused the service account: {_first_line(error.args[0])}"
    if isinstance(error, api.Unauthorized) or _reason(error) == "accessDenied":
        return f"access refused: {_first_line(error.message)}"
    if isinstance(error, api.NotFound):
        return f"data_model.sql: {_first_line(error.message)}"
    if isinstance(error, api.BadRequest):
        return f"data_model.sql: BigQuery cannot run it: {_first_line(error.message)}"
    if isinstance(error, api.GoogleAPIError):
        return _first_line(getattr(error, "message", None) or error)
    return None


def _reason(error: BaseException) -> str | None:
    """BigQuery's reason code of an API error (accessDenied, quotaExceeded, …)."""
    errors = getattr(error, "errors", None) or [{}]
    return errors[0].get("reason") if isinstance(errors[0], dict) else None


def _first_line(value: object) -> str:
    return next((line.strip() for line in str(value).splitlines() if line.strip()), type(value).__name__)


def _unreachable(error: BaseException) -> bool:
    """A refused connection or an unknown host: it will not answer within a run, so say so at once."""
    import requests
    from urllib3.exceptions import NewConnectionError

    if not isinstance(error, requests.exceptions.ConnectionError):
        return False
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, NewConnectionError)


def _retries():
    """google-cloud-bigquery's retries of requests and of failed jobs, without waiting for a host that is
    not there (the defaults would try for 10 minutes)."""
    from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY, DEFAULT_RETRY

    return tuple(
        default.with_predicate(
            lambda error, transient=default._predicate: not _unreachable(error) and transient(error)
        )
        for default in (DEFAULT_RETRY, DEFAULT_JOB_RETRY)
    )
