"""Snowflake: fakesnow's server (Snowflake's REST protocol on DuckDB), started once per test session.

fakesnow lets any login in, so its app runs behind a login check that refuses a wrong password and
verifies a key-pair login's JWT against the registered public key, as Snowflake does.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import threading
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from time import sleep
from typing import Any

import fakesnow.arrow
import fakesnow.server
import jwt
import pyarrow as pa
import pyarrow.compute as pc
import snowflake.connector
import uvicorn
from sqlglot import exp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ACCOUNT = "fakesnow"
USER = "wsync"
PASSWORD = "fakesnow-password-1f9c"
PASSWORD_ENV = "WSYNC_TEST_SNOWFLAKE_PASSWORD"
_LOGIN = "/session/v1/login-request"
# Platform detection would probe cloud metadata addresses at every login: tests talk to loopback only.
os.environ["SNOWFLAKE_DISABLE_PLATFORM_DETECTION"] = "true"


def _timestamps_keeping_nulls(timestamps: pa.Array | pa.ChunkedArray) -> pa.StructArray:
    """fakesnow 0.12's timestamp struct with its NULLs kept (fakesnow sends a NULL timestamp as 1970-01-01)."""
    struct = _fakesnow_timestamps(timestamps)
    if isinstance(timestamps, pa.ChunkedArray):
        timestamps = timestamps.combine_chunks()
    children = [pc.fill_null(child, 0) for child in struct.flatten()]
    return pa.StructArray.from_arrays(children, fields=list(struct.type), mask=timestamps.is_null())


_fakesnow_timestamps = fakesnow.arrow.timestamp_to_sf_struct
fakesnow.arrow.timestamp_to_sf_struct = _timestamps_keeping_nulls


class SnowflakeServer:
    """fakesnow's app behind a login check, on a loopback port."""

    def __init__(self):
        self.passwords: dict[str, str] = {USER: PASSWORD}
        self.public_keys: dict[str, bytes] = {}
        app = Starlette(routes=[Route(_LOGIN, self._login, methods=["POST"]), *fakesnow.server.routes])
        with contextlib.closing(socket.socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        thread = threading.Thread(target=self._server.run, name="snowflake test server", daemon=True)
        thread.start()
        while thread.is_alive() and not self._server.started:
            sleep(0.05)
        if not self._server.started:
            raise RuntimeError("the fakesnow server did not start")

    def address(self) -> dict[str, Any]:
        """host, port and protocol as a sync file's connection gives them."""
        return {"host": "127.0.0.1", "port": self.port, "protocol": "http"}

    def connect(self, **kwargs) -> snowflake.connector.SnowflakeConnection:
        """A connector session as the test's own user, to build warehouses."""
        return snowflake.connector.connect(
            account=ACCOUNT, user=USER, password=PASSWORD, **self.address(), **kwargs
        )

    async def _login(self, request: Request) -> JSONResponse:
        body = await request.body()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if not self._accepts(json.loads(body)["data"]):
            # Snowflake's answer to a wrong password or key.
            return JSONResponse(
                {
                    "data": None,
                    "code": "390100",
                    "message": "Incorrect username or password was specified.",
                    "success": False,
                }
            )
        return await fakesnow.server.login_request(request)  # the body is cached on the request

    def _accepts(self, login: dict) -> bool:
        user = login.get("LOGIN_NAME", "")
        if login.get("AUTHENTICATOR") == "SNOWFLAKE_JWT":
            if user not in self.public_keys:
                return False
            try:
                claims = jwt.decode(login["TOKEN"], self.public_keys[user], algorithms=["RS256"])
            except jwt.InvalidTokenError:
                return False
            return claims["sub"] == f"{ACCOUNT}.{user}".upper()
        return user in self.passwords and login.get("PASSWORD") == self.passwords[user]


_server: SnowflakeServer | None = None


def server() -> SnowflakeServer:
    """The session's server, started on first use."""
    global _server
    if _server is None:
        _server = SnowflakeServer()
    return _server


_TYPES = [
    (pa.types.is_string, "VARCHAR"),
    (pa.types.is_boolean, "BOOLEAN"),
    (pa.types.is_integer, "NUMBER(38, 0)"),
    (pa.types.is_floating, "FLOAT"),
    (pa.types.is_date, "DATE"),
    (pa.types.is_list, "ARRAY"),
]


def snowflake_type(arrow_type: pa.DataType) -> str:
    """The Snowflake column type a data engineer would give this Arrow type."""
    if pa.types.is_decimal(arrow_type):
        return f"NUMBER({arrow_type.precision}, {arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP_TZ" if arrow_type.tz else "TIMESTAMP_NTZ"
    return next(name for test, name in _TYPES if test(arrow_type))


def literal(value: Any, type_name: str) -> str:
    """A Snowflake SQL literal of the column's type."""
    if value is None:
        return "NULL"
    if type_name == "ARRAY":
        return exp.func("PARSE_JSON", exp.Literal.string(json.dumps(value))).sql("snowflake")
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return exp.cast(exp.Literal.string(value.isoformat()), type_name, dialect="snowflake").sql(
            "snowflake"
        )
    return exp.Literal.string(str(value)).sql("snowflake")


class SnowflakeEngine:
    """One database of the session's server for one test."""

    def __init__(self, database: str):
        self.server = server()
        self.database = database
        with self.server.connect() as connection:
            connection.cursor().execute(f"CREATE OR REPLACE DATABASE {database}")

    def execute(self, *statements: str) -> None:
        """Run SQL in the test's database."""
        with self.server.connect(database=self.database) as connection:
            for statement in statements:
                connection.cursor().execute(statement)

    def load(self, tables: dict[str, pa.Table]) -> dict:
        """Create each schema.table with Snowflake's types and insert its rows."""
        for name, table in tables.items():
            types = [snowflake_type(field.type) for field in table.schema]
            columns = ", ".join(
                f"{field.name} {kind}" for field, kind in zip(table.schema, types, strict=True)
            )
            rows = " UNION ALL ".join(
                "SELECT "
                + ", ".join(literal(row[c], kind) for c, kind in zip(table.column_names, types, strict=True))
                for row in table.to_pylist()
            )
            self.execute(
                f"CREATE SCHEMA IF NOT EXISTS {name.split('.')[0]}",
                f"CREATE OR REPLACE TABLE {name} ({columns})",
                *([f"INSERT INTO {name} {rows}"] if rows else []),
            )
        return self.connection()

    def connection(self, **overrides) -> dict:
        """The sync file's connection to this database, the password read from the environment."""
        return {
            "type": "snowflake",
            "account": ACCOUNT,
            "user": USER,
            "password": {"env": PASSWORD_ENV},
            "warehouse": "compute_wh",
            "database": self.database,
            **self.server.address(),
            **overrides,
        }


def start(tmp_path: Path) -> Iterator[SnowflakeEngine]:
    """A database named after the test, on the session's server; the password in the environment."""
    before = os.environ.get(PASSWORD_ENV)
    os.environ[PASSWORD_ENV] = PASSWORD
    try:
        yield SnowflakeEngine(f"test_{abs(hash(str(tmp_path))):x}")
    finally:
        if before is None:
            os.environ.pop(PASSWORD_ENV, None)
        else:
            os.environ[PASSWORD_ENV] = before
