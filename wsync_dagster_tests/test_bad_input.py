"""SPEC §4: bad input a real user makes, one row each.

Every case starts from the same world (a DuckDB warehouse, a valid sync file `crm_users.yaml`, and a
profile store holding one delivered partition), spoils one thing, runs one command, and checks the
exact first line on stderr, the exit code, and that every table of the profile store is unchanged.
Adding a case is adding one `Case` to CASES.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from wsync_dagster.cli import main
from wsync_dagster.identities import IDENTITY_PRIORITY
from wsync_dagster.warehouses import warehouse_types
from wsync_dagster_tests.conftest import USERS_SQL, user_sync


@dataclass(frozen=True)
class World:
    """One case's copy of the good world; paths as the messages name them."""

    root: Path

    @property
    def syncs(self) -> Path:
        return self.root / "syncs"

    @property
    def sync_file(self) -> Path:
        return self.syncs / "crm_users.yaml"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def store(self) -> Path:
        return self.state / "profiles.sqlite"

    @property
    def warehouse(self) -> Path:
        return self.root / "data" / "warehouse.duckdb"

    def fill(self, text: str) -> str:
        """A template with {tmp}, {syncs}, {sync_file}, {state}, {store}, {warehouse} filled in."""
        for name in ("syncs", "sync_file", "state", "store", "warehouse"):
            text = text.replace(f"{{{name}}}", str(getattr(self, name)))
        return text.replace("{tmp}", str(self.root))


@dataclass(frozen=True)
class Case:
    """One bad input: what is spoiled, the command, and what the user must see."""

    id: str
    argv: tuple[str, ...]
    first_line: str  # exact first line on stderr, with World.fill placeholders
    exit_code: int = 1
    sync: dict = field(default_factory=dict)  # merged into the good sync file; a None value removes a key
    sync_text: str | bytes | None = None  # the sync file's whole content instead
    files: dict[str, str] = field(default_factory=dict)  # more files in the sync folder
    env: dict[str, str | None] = field(default_factory=dict)  # filled in; None unsets the variable
    warehouse_sql: str = ""  # run against the warehouse first (new tables, odd rows)
    arrange: Callable[[World], None] | None = None  # anything else to spoil
    unprivileged: bool = False  # run as a process that file permissions apply to, even as root
    tables_changed: tuple[str, ...] = ()  # store tables the command may write (a run that rejects rows)


GOOD_SYNC = user_sync(Path("../data/warehouse.duckdb"))
VALIDATE = ("validate",)
RUN = ("run", "crm_users", "--partition", "2024-01-02")
PROFILE = ("profile", "--identity", "email=ada@example.com")
ALLOWED_TOP = "name, description, data_type, connection, data_model, mapping, sync, destination, destinations, checks"
ALLOWED_SYNC = (
    "mode, iterator, iterator_type, schedule, frequency, start, historical_start, lookback, environment, "
    "input_protection, paused, delay_alert, mirror, mirror_max_removal, preview_values"
)
WAREHOUSE_ONLY = "a data model reads only the warehouse's tables and views"
TABLE_FUNCTIONS = (
    f"{WAREHOUSE_ONLY} (table functions allowed: range, generate_series, unnest, explode, posexplode)"
)
SECRET = "a secret is never written in a sync file; use {env: VAR_NAME}"
AVAILABLE = ", ".join(f"'{name}'" for name in warehouse_types())
ALIAS_BOMB = """name: crm_users
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _model(sql: str) -> dict:
    return {"data_model": {"sql": sql}}


def _with_sync_line(line: str) -> str:
    """The good sync file with one line added under `sync:`, as written by hand."""
    return yaml.safe_dump(GOOD_SYNC, sort_keys=False).replace("sync:\n", f"sync:\n  {line}\n", 1)


def _chmod(relative: str, mode: int) -> Callable[[World], None]:
    def arrange(world: World) -> None:
        (world.root / relative).chmod(mode)

    return arrange


def _locked_folder(world: World) -> None:
    (world.root / "locked").mkdir(mode=0o555)


def _overwrite_store_pages(world: World) -> None:
    data = bytearray(world.store.read_bytes())
    data[4096:] = b"\x5a" * (len(data) - 4096)  # every page after the first, as a bad copy or disk leaves it
    world.store.write_bytes(bytes(data))


def _truncate_store(world: World) -> None:
    data = world.store.read_bytes()
    world.store.write_bytes(data[: len(data) // 2])  # an interrupted copy


def _store_is_text(world: World) -> None:
    world.store.write_text("profiles exported by another tool\n")


CASES: list[Case] = [
    # --- the profile store ---
    Case(
        "store_folder_not_writable",
        RUN,
        "wsync run: profile store {store}: the folder {state} is not writable; the store writes "
        "profiles.sqlite and its -wal and -shm files there",
        arrange=_chmod("state", 0o555),
        unprivileged=True,
    ),
    Case(
        "new_store_in_a_folder_that_is_not_writable",
        RUN,
        "wsync run: profile store {tmp}/locked/profiles.sqlite: the folder {tmp}/locked is not writable; "
        "the store writes profiles.sqlite and its -wal and -shm files there",
        env={"WSYNC_PROFILE_STORE": "sqlite:///{tmp}/locked/profiles.sqlite"},
        arrange=_locked_folder,
        unprivileged=True,
    ),
    Case(
        "store_folder_that_cannot_be_created",
        RUN,
        "wsync run: profile store {tmp}/locked/new/profiles.sqlite: cannot create {tmp}/locked/new: "
        "permission denied",
        env={"WSYNC_PROFILE_STORE": "sqlite:///{tmp}/locked/new/profiles.sqlite"},
        arrange=_locked_folder,
        unprivileged=True,
    ),
    Case(
        "store_file_that_is_not_sqlite",
        RUN,
        "wsync run: profile store {store}: not a SQLite database; point WSYNC_PROFILE_STORE at a "
        "profile store, or move this file away",
        arrange=_store_is_text,
    ),
    Case(
        "store_file_that_is_not_sqlite_read_by_profile",
        PROFILE,
        "wsync profile: profile store {store}: not a SQLite database; point WSYNC_PROFILE_STORE at a "
        "profile store, or move this file away",
        arrange=_store_is_text,
    ),
    Case(
        "corrupt_store",
        RUN,
        "wsync run: profile store {store}: the file is corrupt (database disk image is malformed); "
        "restore it from a backup",
        arrange=_overwrite_store_pages,
    ),
    Case(
        "truncated_store",
        RUN,
        "wsync run: profile store {store}: the file is corrupt (database disk image is malformed); "
        "restore it from a backup",
        arrange=_truncate_store,
    ),
    Case(
        "corrupt_store_read_by_rejects",
        ("rejects", "crm_users"),
        "wsync rejects: profile store {store}: the file is corrupt (database disk image is malformed); "
        "restore it from a backup",
        arrange=_overwrite_store_pages,
    ),
    Case(
        "store_path_under_a_regular_file",
        RUN,
        "wsync run: profile store {sync_file}/profiles.sqlite: {sync_file} is a file, not a folder",
        env={"WSYNC_PROFILE_STORE": "sqlite:///{sync_file}/profiles.sqlite"},
    ),
    Case(
        "store_path_that_is_a_folder",
        RUN,
        "wsync run: profile store {state}: a folder, not a store file; WSYNC_PROFILE_STORE names the file, "
        "e.g. sqlite:///state/profiles.sqlite",
        env={"WSYNC_PROFILE_STORE": "sqlite:///{state}"},
    ),
    Case(
        "store_url_of_a_postgresql_that_refuses",
        RUN,
        "wsync run: profile store postgresql://wsync@127.0.0.1:1/profiles: cannot connect: connection to server at "
        '"127.0.0.1", port 1 failed: Connection refused Is the server running on that host and accepting TCP/IP '
        "connections?",
        env={"WSYNC_PROFILE_STORE": "postgresql://wsync:hunter2@127.0.0.1:1/profiles"},
    ),
    Case(
        "store_url_without_a_path",
        RUN,
        "wsync run: a sqlite profile store URL needs a path: sqlite:///PATH",
        env={"WSYNC_PROFILE_STORE": "sqlite:///"},
    ),
    # --- the sync folder and reading a sync file ---
    Case(
        "sync_folder_that_does_not_exist",
        VALIDATE,
        "wsync validate: no sync folder at {tmp}/nowhere (set WSYNC_SYNCS_DIR, or run `wsync demo`)",
        env={"WSYNC_SYNCS_DIR": "{tmp}/nowhere"},
    ),
    Case(
        "sync_folder_that_is_a_file",
        VALIDATE,
        "wsync validate: {sync_file} is a file, not a folder of sync files (set WSYNC_SYNCS_DIR to a folder)",
        env={"WSYNC_SYNCS_DIR": "{sync_file}"},
    ),
    Case(
        "sync_folder_that_cannot_be_read",
        VALIDATE,
        "wsync validate: {syncs}: cannot read the sync folder: Permission denied",
        arrange=_chmod("syncs", 0o000),
        unprivileged=True,
    ),
    Case(
        "sync_file_that_cannot_be_read",
        VALIDATE,
        "✗ {sync_file}: cannot read: Permission denied",
        arrange=_chmod("syncs/crm_users.yaml", 0o000),
        unprivileged=True,
    ),
    Case(
        "latin1_sync_file",
        VALIDATE,
        "✗ {sync_file}: line 2, column 17: not UTF-8 text (byte 0xe9); save the file as UTF-8",
        sync_text="name: crm_users\ndescription: Caf\xe9 customers\n".encode("latin-1"),
    ),
    Case(
        "yaml_alias_bomb",
        VALIDATE,
        "✗ {sync_file}: YAML aliases at line 6, column 4 (key 'e') expand to more than 10,000 values; "
        "a sync file may share small parts with anchors, not multiply them",
        sync_text=ALIAS_BOMB,
    ),
    Case(
        "unclosed_quote_after_a_secret_key",
        VALIDATE,
        "✗ {sync_file}: invalid YAML at line 4, column 13 (key 'password'): while scanning a quoted "
        "scalar, found unexpected end of stream",
        sync_text='name: crm_users\nconnection:\n  type: duckdb\n  password: "hunter2\nsync:\n  mode: full\n',
    ),
    Case(
        "indentation_that_breaks_the_mapping",
        VALIDATE,
        "✗ {sync_file}: invalid YAML at line 4, column 3 (key 'frequency'): while parsing a block "
        "mapping, expected <block end>, but found '<block mapping start>'",
        sync_text="name: crm_users\nsync:\n    mode: full\n  frequency: daily\n",
    ),
    Case(
        "tab_indentation",
        VALIDATE,
        "✗ {sync_file}: invalid YAML at line 3, column 1 (key 'mode'): while scanning for the next token, found "
        "character '\\t' that cannot start any token",
        sync_text="name: crm_users\nsync:\n\tmode: full\n",
    ),
    Case(
        "key_given_twice",
        VALIDATE,
        "✗ {sync_file}: invalid YAML at line 3, column 1: key 'name' is given twice",
        sync_text="name: crm_users\ndata_type: user\nname: crm_users_2\n",
    ),
    Case(
        "sync_file_that_is_a_list",
        VALIDATE,
        "✗ {sync_file}: a sync file is a YAML mapping of keys (name, data_type, connection, …)",
        sync_text="- name: crm_users\n",
    ),
    Case(
        "empty_sync_file",
        VALIDATE,
        "✗ {sync_file}: a sync file is a YAML mapping of keys (name, data_type, connection, …)",
        sync_text="",
    ),
    # --- the contract ---
    Case(
        "env_reference_to_a_variable_that_is_not_set",
        VALIDATE,
        "✗ crm_users: {sync_file}: connection.path: environment variable WSYNC_TEST_UNSET is not set",
        sync={"connection": {"path": {"env": "WSYNC_TEST_UNSET"}}},
        env={"WSYNC_TEST_UNSET": None},
    ),
    Case(
        "unknown_key",
        VALIDATE,
        f"✗ {{sync_file}}: sync.frequence: unknown key; allowed: {ALLOWED_SYNC}",
        sync={"sync": {"frequence": "daily"}},
    ),
    Case(
        "unknown_top_level_key",
        VALIDATE,
        f"✗ {{sync_file}}: schedule: unknown key; allowed: {ALLOWED_TOP}",
        sync={"schedule": "daily"},
    ),
    Case("missing_data_type", VALIDATE, "✗ {sync_file}: data_type: required", sync={"data_type": None}),
    Case(
        "mode_that_does_not_exist",
        VALIDATE,
        "✗ {sync_file}: sync.mode: Input should be 'full', 'incremental' or 'cdc'",
        sync={"sync": {"mode": "delta"}},
    ),
    Case(
        "name_that_is_not_snake_case",
        VALIDATE,
        "✗ {sync_file}: name: lower-case letters, digits and _, starting with a letter ([a-z][a-z0-9_]*)",
        sync={"name": "CRM-Users"},
    ),
    Case(
        "name_longer_than_a_file_name_may_be",
        VALIDATE,
        "✗ {sync_file}: name: at most 128 characters (it names the sync's folder of batch files, and file "
        "systems allow 255 bytes per name); this one has 300",
        sync={"name": "crm_users_" + "x" * 290},
    ),
    Case(
        "two_files_with_one_name",
        VALIDATE,
        "✗ {syncs}/crm_users_copy.yaml: name: 'crm_users' is already used by {sync_file}",
        files={"crm_users_copy.yaml": yaml.safe_dump(GOOD_SYNC, sort_keys=False)},
    ),
    Case(
        "historical_start_after_start",
        VALIDATE,
        "✗ {sync_file}: sync: historical_start: 2024-03-01 is after start 2024-01-01; history loads from "
        "historical_start up to start, so it is on or before start",
        sync={"sync": {"historical_start": "2024-03-01"}},
    ),
    Case(
        "connection_type_that_does_not_exist",
        VALIDATE,
        f"✗ {{sync_file}}: connection: type 'oracle' is not a connection type; available: {AVAILABLE}",
        sync={"connection": {"type": "oracle"}},
    ),
    Case(
        "literal_password",
        VALIDATE,
        f"✗ {{sync_file}}: connection.password: {SECRET}",
        sync={"connection": {"password": "hunter2"}},
    ),
    Case(
        "literal_credentials_json",
        VALIDATE,
        f"✗ {{sync_file}}: connection.credentials_json: {SECRET}",
        sync={"connection": {"credentials_json": '{"type": "service_account"}'}},
    ),
    Case(
        "lookback_that_is_not_a_duration",
        VALIDATE,
        "✗ {sync_file}: sync.lookback: a duration such as 0s, 30m, 2h, 1d or 1w",
        sync={"sync": {"lookback": "a while"}},
    ),
    *(
        Case(
            f"query_timeout_{name}",
            VALIDATE,
            "✗ {sync_file}: connection.query_timeout: a duration above 0s such as 30m, 6h or 1d (default 6h)",
            sync={"connection": {"query_timeout": value}},
        )
        for name, value in (
            ("that_is_not_a_duration", "a while"),
            ("of_zero", "0s"),
            ("as_a_bare_number", 30),
        )
    ),
    *(
        Case(
            f"connection_name_{name}",
            VALIDATE,
            "✗ {sync_file}: connection.name: a name of letters, digits and _ that starts with a letter, up to 63 "
            "characters, such as crm_warehouse (not profile_store or io_manager)",
            sync={"connection": {"name": value}},
        )
        for name, value in (
            ("with_a_dash", "crm-warehouse"),
            ("that_starts_with_a_digit", "1st_warehouse"),
            ("of_the_profile_store", "profile_store"),
            ("as_a_number", 42),
            ("too_long", "w" * 64),
        )
    ),
    Case(
        "connection_name_given_to_another_connection",
        VALIDATE,
        "✗ {sync_file}: connection.name: 'crm_warehouse' already names a different connection in "
        "{syncs}/crm_orders.yaml; give the same connection keys in both files, or another name",
        sync={"connection": {"name": "crm_warehouse"}},
        files={
            "crm_orders.yaml": yaml.safe_dump(
                {
                    **GOOD_SYNC,
                    "name": "crm_orders",
                    "connection": {"type": "duckdb", "path": "../data/orders.duckdb", "name": "crm_warehouse"},
                },
                sort_keys=False,
            )
        },
    ),
    Case(
        "lock_timeout_that_is_not_a_duration",
        RUN,
        "wsync run: WSYNC_LOCK_TIMEOUT: 'soon' is not a duration above 0s such as 30s, 30m or 2h (default 30m)",
        env={"WSYNC_LOCK_TIMEOUT": "soon"},
    ),
    Case(
        "reject_rate_above_one",
        VALIDATE,
        "✗ {sync_file}: checks.max_reject_rate: Input should be less than or equal to 1",
        sync={"checks": {"max_reject_rate": 5}},
    ),
    Case(
        "mirror_max_removal_above_one",
        VALIDATE,
        "✗ {sync_file}: sync.mirror_max_removal: Input should be less than or equal to 1",
        sync={"sync": {"mirror_max_removal": 2}},
    ),
    Case(
        "mirror_max_removal_without_mirror",
        VALIDATE,
        "✗ {sync_file}: sync: mirror_max_removal: only with mirror: true",
        sync={"sync": {"mirror_max_removal": 0.3}},
    ),
    Case(
        "preview_values_as_text",
        VALIDATE,
        "✗ {sync_file}: sync.preview_values: true or false (got 'yes please'); true shows identity and "
        "attribute values in Dagster's preview of changed profiles",
        sync={"sync": {"preview_values": "yes please"}},
    ),
    Case(
        "preview_values_as_a_number",
        RUN,
        "wsync run: {sync_file}: sync.preview_values: true or false (got 1); true shows identity and "
        "attribute values in Dagster's preview of changed profiles",
        sync={"sync": {"preview_values": 1}},
    ),
    Case(
        "preview_values_quoted",
        VALIDATE,
        "✗ {sync_file}: sync.preview_values: true or false (got 'true'); true shows identity and "
        "attribute values in Dagster's preview of changed profiles",
        sync_text=_with_sync_line("preview_values: 'true'"),
    ),
    Case(
        "preview_values_empty",
        VALIDATE,
        "✗ {sync_file}: sync.preview_values: true or false (got a null); true shows identity and "
        "attribute values in Dagster's preview of changed profiles",
        sync_text=_with_sync_line("preview_values:"),
    ),
    Case(
        "cdc_on_duckdb",
        VALIDATE,
        "✗ {sync_file}: sync.mode: cdc reads a table's change feed, and a duckdb connection has none that "
        "wsync reads (delta, databricks and snowflake have): use mode incremental or full",
        sync={"sync": {"mode": "cdc"}},
    ),
    Case(
        "incremental_without_an_iterator",
        VALIDATE,
        "✗ {sync_file}: sync: iterator: required when mode is incremental",
        sync={"sync": {"iterator": None}},
    ),
    Case(
        "interval_without_a_frequency",
        VALIDATE,
        "✗ {sync_file}: sync: frequency: required when schedule is interval (hourly, daily, weekly, monthly)",
        sync={"sync": {"frequency": None}},
    ),
    Case(
        "monthly_sync_starting_on_day_31",
        VALIDATE,
        "✗ {sync_file}: sync: start: a monthly sync starts on day 1 to 28, so every month has that day",
        sync={"sync": {"frequency": "monthly", "start": "2024-01-31", "historical_start": "2024-01-01"}},
    ),
    Case(
        "mapping_to_an_identity_that_does_not_exist",
        VALIDATE,
        "✗ {sync_file}: mapping[0].field: unknown identity 'user_identities.mail'; allowed: "
        f"user_identities.<one of {', '.join(IDENTITY_PRIORITY)}>",
        sync={"mapping": [{"type": "column", "column": "email", "field": "user_identities.mail"}]},
    ),
    Case(
        "static_identity",
        VALIDATE,
        "✗ {sync_file}: mapping[0]: an identity cannot be static: every row would be the same user",
        sync={"mapping": [{"type": "static", "value": "x", "field": "user_identities.email"}]},
    ),
    Case(
        "event_sync_without_a_mapping",
        VALIDATE,
        "✗ {sync_file}: mapping: required for event data (events.data.event_name at least)",
        sync={"data_type": "event"},
    ),
    # --- the data model ---
    Case(
        "data_model_that_writes",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: the data model must be a SELECT, found UPDATE",
        sync=_model("UPDATE crm.users SET plan = 'x'"),
    ),
    Case(
        "two_statements",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: one SELECT statement is allowed, found 2 statements",
        sync=_model("SELECT * FROM crm.users; DROP TABLE crm.users"),
    ),
    Case(
        "sql_that_does_not_parse",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: the SQL does not parse at line 1, column 19: Expecting )",
        sync=_model("SELECT count(* FROM crm.users"),
    ),
    Case(
        "model_reading_a_local_file",
        VALIDATE,
        f"✗ {{sync_file}}: data_model.sql: read_csv() is not allowed: {TABLE_FUNCTIONS}",
        sync=_model("SELECT * FROM read_csv('/etc/passwd')"),
    ),
    Case(
        "model_reading_a_file_named_as_a_table",
        VALIDATE,
        f"✗ {{sync_file}}: data_model.sql: FROM '/etc/passwd' reads a file or URL: {WAREHOUSE_ONLY}",
        sync=_model("SELECT * FROM '/etc/passwd'"),
    ),
    Case(
        "model_reading_the_environment",
        VALIDATE,
        f"✗ {{sync_file}}: data_model.sql: getenv() is not allowed: {WAREHOUSE_ONLY}",
        sync=_model("SELECT customer_id, getenv('HOME') AS home, updated_at FROM crm.users"),
    ),
    Case(
        "model_attaching_another_database",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: the data model must be a SELECT, found ATTACH",
        sync=_model("ATTACH '/tmp/other.duckdb' AS other"),
    ),
    # --- the data model against the real warehouse ---
    Case(
        "column_the_mapping_leaves_out",
        VALIDATE,
        "✗ crm_users: {sync_file}: mapping: column 'first_name' is selected by the data model but not "
        "mapped; map it, ignore it ({type: ignore, column: first_name}) or add {type: column, column: "
        "$unmapped, field: ...}",
        sync={"mapping": [{"type": "column", "column": "email", "field": "user_identities.email"}]},
    ),
    Case(
        "warehouse_file_that_does_not_exist",
        VALIDATE,
        "✗ crm_users: {sync_file}: connection.path: the DuckDB warehouse file {tmp}/data/nowhere.duckdb "
        "does not exist",
        sync={"connection": {"path": "../data/nowhere.duckdb"}},
    ),
    Case(
        "table_name_with_a_typo",
        VALIDATE,
        "✗ crm_users: data_model.sql: the warehouse cannot run it: Catalog Error: Table with "
        'name user does not exist! Did you mean "users"?',
        sync=_model("SELECT customer_id, email, updated_at FROM crm.user"),
    ),
    Case(
        "iterator_the_model_does_not_return",
        VALIDATE,
        "✗ crm_users: {sync_file}: sync.iterator: column 'modified_at' is not returned by the data model; "
        "it returns customer_id, email, first_name, plan, updated_at",
        sync={"sync": {"iterator": "modified_at"}},
    ),
    Case(
        "iterator_column_stored_as_text",
        VALIDATE,
        "✗ crm_users: {sync_file}: sync.iterator_type: timestamp needs a TIMESTAMP column, but "
        "'updated_at' is string",
        warehouse_sql="CREATE TABLE crm.leads AS SELECT 'C9' AS customer_id, 'cy@example.com' AS email, "
        "'2024-01-01 10:00:00' AS updated_at",
        sync=_model("SELECT customer_id, email, updated_at FROM crm.leads"),
    ),
    Case(
        "numeric_column_mapped_to_an_email_identity",
        VALIDATE,
        "✗ crm_users: {sync_file}: mapping[0].column: column 'user_no' is int32, but an email identity "
        "takes a text column; cast it to text in the data model or map it to another identity "
        "(customer_id, other, …)",
        sync={
            **_model("SELECT customer_id, 42 AS user_no, plan, updated_at FROM crm.users"),
            "mapping": [
                {"type": "column", "column": "user_no", "field": "user_identities.email"},
                {"type": "column", "column": "$unmapped", "field": "user_attributes.*"},
            ],
        },
    ),
    # --- the command line ---
    Case(
        "partition_range_written_backwards",
        ("run", "crm_users", "--partition", "2024-01-03..2024-01-01"),
        "wsync run: crm_users: --partition 2024-01-03..2024-01-01 is reversed: write the earlier "
        "partition first (2024-01-01..2024-01-03)",
    ),
    Case(
        "run_of_a_sync_that_does_not_exist",
        ("run", "crm_userz"),
        "wsync run: no sync named 'crm_userz' in {syncs}; syncs: crm_users",
    ),
    Case(
        "run_of_a_sync_whose_file_is_invalid",
        ("run", "crm_users"),
        f"wsync run: {{sync_file}}: sync.frequence: unknown key; allowed: {ALLOWED_SYNC}",
        sync={"sync": {"frequence": "daily"}},
    ),
    Case(
        "preview_while_another_file_is_invalid",
        ("preview", "crm_users"),
        "wsync: warning: not loaded (see `wsync validate`): {syncs}/typo.yaml: data_typ: unknown key; "
        f"allowed: {ALLOWED_TOP}",
        exit_code=0,
        files={"typo.yaml": yaml.safe_dump({**GOOD_SYNC, "name": "typo", "data_typ": "user"})},
    ),
    Case(
        "partition_before_historical_start",
        ("run", "crm_users", "--partition", "2023-12-31"),
        "wsync run: crm_users: --partition 2023-12-31 is not a partition of this sync (keys look like 2024-01-01)",
    ),
    Case(
        "partition_that_is_not_a_date",
        ("run", "crm_users", "--partition", "yesterday"),
        "wsync run: crm_users: --partition yesterday is not a partition of this sync (keys look like 2024-01-01)",
    ),
    Case(
        "identity_without_a_value",
        ("profile", "--identity", "email"),
        "wsync profile: --identity takes TYPE=VALUE, e.g. --identity email=ada@example.com",
    ),
    Case(
        "profile_that_does_not_exist",
        ("profile", "--identity", "email=nobody@example.com"),
        "wsync profile: no profile with email=nobody@example.com in production",
    ),
    # --- erasure: a bad request erases nobody ---
    Case(
        "erase_identity_without_a_value",
        ("erase", "--identity", "email"),
        "wsync erase: --identity: takes TYPE=VALUE, e.g. email=ada@example.com",
    ),
    Case(
        "erase_unknown_identity_type",
        ("erase", "--identity", "email=ada@example.com", "--identity", "shoe_size=42"),
        f"wsync erase: --identity: unknown identity type 'shoe_size'; one of {', '.join(IDENTITY_PRIORITY)}",
    ),
    Case(
        "erase_file_that_does_not_exist",
        ("erase", "--file", "no-such-requests.txt"),
        "wsync erase: --file no-such-requests.txt: cannot read: No such file or directory",
    ),
    Case(
        "erase_naming_nobody",
        ("erase",),
        "wsync erase: name who to erase: --identity TYPE=VALUE, or --file with one TYPE=VALUE a line",
    ),
]


@pytest.fixture(scope="module")
def good_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world every case copies: warehouse, sync file, and a store with partition 2024-01-01 delivered."""
    root = tmp_path_factory.mktemp("good_world")
    (root / "data").mkdir()
    (root / "syncs").mkdir()
    import duckdb

    with duckdb.connect(str(root / "data" / "warehouse.duckdb")) as connection:
        connection.execute(USERS_SQL)
    (root / "syncs" / "crm_users.yaml").write_text(yaml.safe_dump(GOOD_SYNC, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _env(World(root)).items():
            patch.setenv(name, value)
        patch.delenv("DAGSTER_HOME", raising=False)
        assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    return root


def _env(world: World) -> dict[str, str]:
    return {
        "WSYNC_SYNCS_DIR": str(world.syncs),
        "WSYNC_STATE_DIR": str(world.state),
        "WSYNC_PROFILE_STORE": f"sqlite:///{world.store}",
    }


def _merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dump_store(path: Path, scratch: Path) -> dict | str | None:
    """Every row of every table, or the file's hash when it is no SQLite database.

    Read from a copy (with its WAL): opening the store itself would leave -shm and -wal files behind,
    and those would let a later command write in a folder that is otherwise read-only.
    """
    if not path.exists():
        return None
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for source in path.parent.glob(f"{path.name}*"):
        shutil.copy(source, scratch / source.name)
    try:
        with closing(sqlite3.connect(scratch / path.name)) as connection:
            tables = [
                name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            return {
                table: sorted(repr(row) for row in connection.execute(f'SELECT * FROM "{table}"'))
                for table in tables
            }
    except sqlite3.DatabaseError:
        return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_unprivileged(argv: tuple[str, ...], env: dict[str, str]) -> tuple[int, str]:
    # Root reads and writes through any file mode; dropping the two capabilities that let it do so
    # makes the modes apply, as they do for every other user.
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [*drop, sys.executable, "-m", "wsync_dagster.cli", *argv], env=env, capture_output=True, text=True
    )
    return result.returncode, result.stderr


def _restore_modes(root: Path) -> None:
    # Top-down: a folder is opened again before the walk lists it.
    for folder, folders, files in os.walk(root):
        for name in folders:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_one_clear_line_and_changes_nothing(
    case: Case, good_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    world = World(tmp_path / "world")
    shutil.copytree(good_world, world.root)
    if case.sync_text is not None:
        content = case.sync_text
        world.sync_file.write_bytes(content if isinstance(content, bytes) else content.encode())
    elif case.sync:
        world.sync_file.write_text(yaml.safe_dump(_merge(GOOD_SYNC, case.sync), sort_keys=False))
    for name, text in case.files.items():
        (world.syncs / name).write_text(text)
    env = {**_env(world), **{k: world.fill(v) for k, v in case.env.items() if v is not None}}
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (k for k, v in case.env.items() if v is None):
        monkeypatch.delenv(name, raising=False)
    if case.warehouse_sql:
        import duckdb

        with duckdb.connect(str(world.warehouse)) as connection:
            connection.execute(case.warehouse_sql)
    if case.arrange:
        case.arrange(world)
    before = dump_store(world.store, tmp_path / "dump")
    try:
        if case.unprivileged:
            exit_code, stderr = _run_unprivileged(case.argv, dict(os.environ))
        else:
            exit_code = main(list(case.argv))
            stderr = capsys.readouterr().err
    finally:
        _restore_modes(world.root)
    assert (stderr.splitlines() or [""])[0] == world.fill(case.first_line)
    assert exit_code == case.exit_code
    after = dump_store(world.store, tmp_path / "dump")
    if isinstance(before, dict) and isinstance(after, dict):
        before, after = (
            {t: rows for t, rows in d.items() if t not in case.tables_changed} for d in (before, after)
        )
    assert after == before


# --- issue 17: a model reaching outside its tables, URLs that carry secrets, cosmetic slips ---
# Appended as one block with its own test (the same checks) so that other blocks merge beside it.
_PG = {"type": "postgres", "path": None, "host": "127.0.0.1", "database": "test", "user": "wsync",
       "password": {"env": "WSYNC_TEST_PG_PASSWORD"}}
_LO_MODEL = "SELECT CAST(lo_from_bytea(0, 'x') AS VARCHAR) AS customer_id, updated_at FROM crm.users"
_LO_REFUSED = f"data_model.sql: lo_from_bytea() is not allowed: it reaches large objects; {WAREHOUSE_ONLY}"
_ENCODE = "a user or password holding /, ?, # or @ must be percent-encoded (%2F, %3F, %23, %40)"
_BACKFILL = ("backfill", "crm_users", "--from", "2024-01-01", "--to", "2024-01-02", "--url")

MODEL_REACH_SECRET_AND_USAGE_CASES: list[Case] = [
    Case(
        "postgres_model_creating_a_large_object",
        VALIDATE,
        f"✗ {{sync_file}}: {_LO_REFUSED}",
        sync={"connection": _PG, **_model(_LO_MODEL)},
    ),
    Case(
        "preview_of_a_postgres_model_creating_a_large_object",
        ("preview", "crm_users"),
        f"wsync preview: {{sync_file}}: {_LO_REFUSED}",
        sync={"connection": _PG, **_model(_LO_MODEL)},
    ),
    Case(
        "postgres_model_reading_the_server_settings",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: FROM pg_settings is not allowed: it shows the server's settings; "
        f"{WAREHOUSE_ONLY} (name the schema of a table of your own by that name)",
        sync={"connection": _PG, **_model("SELECT name AS customer_id, setting AS updated_at FROM pg_settings")},
    ),
    Case(
        "redshift_model_dropping_a_table_through_dblink",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: dblink_exec() is not allowed: it queries other databases (dblink); "
        f"{WAREHOUSE_ONLY}",
        sync={
            "connection": {**_PG, "type": "redshift"},
            **_model("SELECT customer_id, updated_at, dblink_exec('dbname=test', 'DROP TABLE crm.users') AS x "
                     "FROM crm.users"),
        },
    ),
    Case(
        "snowflake_model_reading_a_stage",
        VALIDATE,
        f"✗ {{sync_file}}: data_model.sql: FROM @crm.exports is not allowed: it reads a stage's files; {WAREHOUSE_ONLY}",
        sync={
            "connection": {"type": "snowflake", "path": None, "account": "xy12345", "user": "WSYNC",
                           "password": {"env": "SF_PASSWORD"}, "warehouse": "WH", "database": "ANALYTICS"},
            **_model("SELECT $1 AS customer_id, $2 AS updated_at FROM @crm.exports"),
        },
    ),
    Case(
        "bigquery_model_querying_another_database",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: external_query() is not allowed: it queries other databases (federated "
        f"queries); {WAREHOUSE_ONLY}",
        sync={
            "connection": {"type": "bigquery", "path": None, "project": "acme"},
            **_model("SELECT customer_id, updated_at, EXTERNAL_QUERY('eu.crm', 'SELECT 1') AS x FROM crm.users"),
        },
    ),
    Case(
        "databricks_model_reading_a_secret",
        VALIDATE,
        f"✗ {{sync_file}}: data_model.sql: secret() is not allowed: it reads the workspace's secrets; {WAREHOUSE_ONLY}",
        sync={
            "connection": {"type": "databricks", "path": None, "server_hostname": "dbc.example.com",
                           "http_path": "/sql/1.0/warehouses/x", "access_token": {"env": "DATABRICKS_TOKEN"}},
            **_model("SELECT customer_id, updated_at, secret('crm', 'api_key') AS s FROM crm.users"),
        },
    ),
    Case(
        "store_url_whose_password_holds_a_slash",
        RUN,
        f"wsync run: profile store URL: cannot be read: {_ENCODE}",
        env={"WSYNC_PROFILE_STORE": "postgresql://wsync:PLNTa/b@127.0.0.1:5432/profiles"},
    ),
    Case(
        "store_url_whose_password_holds_an_at_sign",
        RUN,
        f"wsync run: profile store URL: cannot be read: {_ENCODE}",
        env={"WSYNC_PROFILE_STORE": "postgresql://wsync:PLNTa@b@127.0.0.1:5432/profiles"},
    ),
    Case(
        "store_url_whose_search_path_schema_does_not_exist",
        RUN,
        "wsync run: profile store postgresql://postgres@127.0.0.1:5432/test: no schema of its search path "
        "(wsync_no_such_schema) exists; create it, or name an existing schema in the URL "
        "(?options=-csearch_path%3DSCHEMA)",
        env={"WSYNC_PROFILE_STORE": "postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dwsync_no_such_schema"},
    ),
    Case(
        "backfill_url_with_a_password_and_a_token",
        (*_BACKFILL, "http://wsync:PLNTa@127.0.0.1:1/?token=PLNTb"),
        "wsync backfill: no Dagster webserver answers at http://127.0.0.1:1 (ConnectError): start one with "
        "`dagster dev` (its daemon runs the backfill) or pass --url",
    ),
    Case(
        "backfill_url_that_is_malformed",
        (*_BACKFILL, "http://wsync:PLNTa@[::1/"),
        "wsync backfill: --url: not the http(s) URL of a Dagster webserver, e.g. http://127.0.0.1:3000",
    ),
    Case(
        "preview_limit_below_one",
        ("preview", "crm_users", "--limit", "-1"),
        "wsync preview: --limit takes a number of rows, 1 or more (got -1)",
        exit_code=2,
    ),
    Case(
        "static_value_that_yaml_reads_as_a_date",
        VALIDATE,
        "✗ {sync_file}: mapping[1].value: a static value is text, a number or true/false; YAML read 2024-01-01 "
        "as a date: quote it ('2024-01-01')",
        sync_text=yaml.safe_dump(GOOD_SYNC, sort_keys=False)
        + "mapping:\n  - {type: column, column: customer_id, field: user_identities.customer_id}\n"
        "  - {type: static, value: 2024-01-01, field: user_attributes.since}\n",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    "case", MODEL_REACH_SECRET_AND_USAGE_CASES, ids=[case.id for case in MODEL_REACH_SECRET_AND_USAGE_CASES]
)
def test_a_model_reaching_out_a_url_with_secrets_or_a_usage_slip_gets_one_clear_line(
    case: Case, good_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    # The catalogue's checks read stderr once; keep what they read, to look for the planted values in all of it.
    read, seen = capsys.readouterr, []
    monkeypatch.setattr(capsys, "readouterr", lambda: seen.append(read()) or seen[-1])
    test_bad_input_gets_one_clear_line_and_changes_nothing(case, good_world, tmp_path, monkeypatch, capsys)
    assert seen and not any("PLNT" in captured.out + captured.err for captured in seen)


# --- issue 17: column names that differ only in case (a PostgreSQL model can return both) ---
# Appended as one block with its own test (the same checks) so that other blocks merge beside it.
_PG_TRUSTED = {**_PG, "user": "postgres"}
_CASE_CLASH = (
    "data_model.sql: the columns plan and Plan differ only in case, which wsync cannot tell apart; rename one "
    'in the data model (e.g. "Plan" AS plan_2)'
)
_CASE_CLASH_MODEL = _model(
    "SELECT * FROM (VALUES ('C9', 'pro', 'Pro', TIMESTAMP '2024-01-02 10:00')) "
    'AS v(customer_id, plan, "Plan", updated_at)'
)

CASE_CLASH_CASES: list[Case] = [
    Case(
        "columns_that_differ_only_in_case",
        VALIDATE,
        f"✗ crm_users: {{sync_file}}: {_CASE_CLASH}",
        sync={"connection": _PG_TRUSTED, **_CASE_CLASH_MODEL},
        env={"WSYNC_TEST_PG_PASSWORD": "not-needed-with-trust-auth"},
    ),
    Case(
        "run_of_columns_that_differ_only_in_case",
        RUN,
        f"wsync run: {{sync_file}}: {_CASE_CLASH}",
        sync={"connection": _PG_TRUSTED, **_CASE_CLASH_MODEL},
        env={"WSYNC_TEST_PG_PASSWORD": "not-needed-with-trust-auth"},
    ),
]


@pytest.mark.parametrize("case", CASE_CLASH_CASES, ids=[case.id for case in CASE_CLASH_CASES])
def test_columns_that_differ_only_in_case_are_refused_naming_the_file_and_the_columns(
    case: Case, good_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    test_bad_input_gets_one_clear_line_and_changes_nothing(case, good_world, tmp_path, monkeypatch, capsys)


# --- issue 17: a sync file that breaks the loader is that file's error, never the SQL's text ---
# Each model holds a planted literal (PLNT…) that no line of output may repeat.
_GOOD_TEXT = yaml.safe_dump(GOOD_SYNC, sort_keys=False)
_START = "  start: '2024-01-01T00:00:00Z'\n"
_START_LINE = _GOOD_TEXT.splitlines().index(_START.rstrip("\n")) + 1
_HISTORICAL_START = "  historical_start: '2024-01-01'\n"
_HISTORICAL_START_LINE = _GOOD_TEXT.splitlines().index(_HISTORICAL_START.rstrip("\n")) + 1
_NESTING = (
    "nesting deeper than 24 levels at line 1, column 45: parentheses, brackets and CASE … END nest at most 24 "
    "deep in a data model"
)
_TOO_DEEP = (
    "expressions nested deeper than 160 levels (a long chain of casts, names or unary operators such as NOT); "
    "simplify the SQL"
)

LOADER_CASES: list[Case] = [
    Case(
        "sql_with_an_unterminated_string",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: the SQL does not parse: unterminated string from line 1, column 21 "
        "(no closing ')",
        sync=_model("SELECT customer_id, 'PLNTa-unterminated AS note, updated_at FROM crm.users"),
    ),
    Case(
        "sql_with_an_unterminated_dollar_string",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: the SQL does not parse: unterminated dollar-quoted string from line 1, "
        "column 21 (no closing $$)",
        sync=_model("SELECT customer_id, $$PLNTa-unterminated AS note, updated_at FROM crm.users"),
    ),
    Case(
        "sql_with_an_unterminated_comment",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: the SQL does not parse: unterminated comment from line 2, column 5 "
        "(no closing */)",
        sync=_model("SELECT customer_id,\n    /* PLNTa-unterminated\n    updated_at FROM crm.users\n"),
    ),
    Case(
        "sql_with_an_unterminated_quoted_name",
        VALIDATE,
        "✗ {sync_file}: data_model.sql: the SQL does not parse: unterminated quoted name from line 1, column 8 "
        '(no closing ")',
        sync=_model("SELECT \"customer_id, updated_at FROM crm.users WHERE plan = 'PLNTa-literal'"),
    ),
    Case(
        "sql_nested_deeper_than_the_limit",
        VALIDATE,
        f"✗ {{sync_file}}: data_model.sql: {_NESTING}",
        sync=_model("SELECT customer_id, " + "(" * 30 + "'PLNTa-nested'" + ")" * 30 + " AS note, updated_at FROM crm.users"),
    ),
    Case(
        "sql_nested_deeper_than_the_limit_run",
        RUN,
        f"wsync run: {{sync_file}}: data_model.sql: {_NESTING}",
        sync=_model("SELECT customer_id, " + "(" * 30 + "'PLNTa-nested'" + ")" * 30 + " AS note, updated_at FROM crm.users"),
    ),
    Case(
        "sql_with_a_chain_of_nots_beyond_recursion",
        VALIDATE,
        f"✗ {{sync_file}}: data_model.sql: {_TOO_DEEP}",
        sync=_model("SELECT customer_id, " + "NOT " * 400 + "'PLNTa-chain' = '' AS flag, updated_at FROM crm.users"),
    ),
    Case(
        "sql_with_a_long_chain_of_casts",
        VALIDATE,
        f"✗ {{sync_file}}: data_model.sql: {_TOO_DEEP}",
        sync=_model("SELECT customer_id, 'PLNTa-chain'" + "::VARCHAR" * 200 + " AS note, updated_at FROM crm.users"),
    ),
    Case(
        "start_that_is_not_a_real_date",
        VALIDATE,
        f"✗ {{sync_file}}: sync.start (line {_START_LINE}): not a real date (day is out of range for month)",
        sync_text=_GOOD_TEXT.replace(_START, "  start: 2024-02-30\n").replace("crm.users", "crm.users -- 'PLNTa'"),
    ),
    Case(
        "run_of_a_sync_whose_historical_start_is_not_a_real_date",
        RUN,
        f"wsync run: {{sync_file}}: sync.historical_start (line {_HISTORICAL_START_LINE}): not a real date "
        "(day is out of range for month)",
        sync_text=_GOOD_TEXT.replace(_HISTORICAL_START, "  historical_start: 2023-02-29\n"),
    ),
    Case(
        "start_time_that_is_not_a_real_time",
        VALIDATE,
        f"✗ {{sync_file}}: sync.start (line {_START_LINE}): not a real date and time (hour must be in 0..23)",
        sync_text=_GOOD_TEXT.replace(_START, "  start: 2024-01-01 24:30:00\n"),
    ),
    Case(
        "historical_start_before_1900",
        VALIDATE,
        "✗ {sync_file}: sync.historical_start: a date from 1900-01-01 to 2999-12-31",
        sync_text=_GOOD_TEXT.replace(_HISTORICAL_START, "  historical_start: 0001-01-01\n"),
    ),
    Case(
        "lookback_too_long_for_a_duration",
        VALIDATE,
        "✗ {sync_file}: sync.lookback: a duration such as 0s, 30m, 2h, 1d or 1w, of at most 999999999d",
        sync={"sync": {"lookback": "99999999999999999999d"}},
    ),
    Case(
        "nul_character_in_the_sync_file",
        VALIDATE,
        "✗ {sync_file}: line 2, column 10: character U+0000 is not allowed in YAML (control characters other "
        "than tab and line breaks are not); remove it",
        sync_text="name: crm_users\ndata_type\x00: user\n",
    ),
    Case(
        "sql_pasted_where_a_key_belongs",
        VALIDATE,
        "✗ {sync_file}: data_model.(a key that is not a name): unknown key; allowed: sql",
        sync={"data_model": {"sql": "SELECT customer_id, updated_at FROM crm.users",
                             "WHERE plan = 'PLNTa-pasted'": "x"}},
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", LOADER_CASES, ids=[case.id for case in LOADER_CASES])
def test_a_sync_file_that_breaks_the_loader_gets_one_clear_line_without_its_sql(
    case: Case, good_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    read, seen = capsys.readouterr, []
    monkeypatch.setattr(capsys, "readouterr", lambda: seen.append(read()) or seen[-1])
    test_bad_input_gets_one_clear_line_and_changes_nothing(case, good_world, tmp_path, monkeypatch, capsys)
    assert seen and not any("PLNT" in captured.out + captured.err for captured in seen)


# --- issue 16 (items 3 and 6): the lookback of each iterator, and the reject-rate block ---
# Appended as one block with its own test (the same checks) so that other blocks merge beside it.
_INTEGER = {"iterator_type": "integer"}
_COUNT_OF_IDS = (
    "an integer iterator's lookback is a count of ids, such as 0 (none) or 1000; by default a run reads the "
    "previous range again"
)

LOOKBACK_AND_BLOCK_CASES: list[Case] = [
    Case(
        "time_lookback_without_a_unit",
        VALIDATE,
        "✗ {sync_file}: sync.lookback: a duration such as 0s, 30m, 2h, 1d or 1w",
        sync={"sync": {"lookback": 3}},
    ),
    Case(
        "integer_lookback_that_is_a_duration",
        VALIDATE,
        f"✗ {{sync_file}}: sync.lookback: {_COUNT_OF_IDS}",
        sync={"sync": {**_INTEGER, "lookback": "1h"}},
    ),
    Case(
        "integer_lookback_below_zero",
        VALIDATE,
        "✗ {sync_file}: sync.lookback: must not be negative",
        sync={"sync": {**_INTEGER, "lookback": -5}},
    ),
    Case(
        "run_with_an_integer_lookback_that_is_a_duration",
        RUN,
        f"wsync run: {{sync_file}}: sync.lookback: {_COUNT_OF_IDS}",
        sync={"sync": {**_INTEGER, "lookback": "1h"}},
    ),
    Case(
        "block_on_reject_rate_that_is_not_true_or_false",
        VALIDATE,
        "✗ {sync_file}: checks.block_on_reject_rate: true or false",
        sync={"checks": {"block_on_reject_rate": "sometimes"}},
    ),
    Case(
        "run_with_block_on_reject_rate_that_is_a_number",
        RUN,
        "wsync run: {sync_file}: checks.block_on_reject_rate: true or false",
        sync={"checks": {"block_on_reject_rate": 1}},
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", LOOKBACK_AND_BLOCK_CASES, ids=[case.id for case in LOOKBACK_AND_BLOCK_CASES])
def test_a_bad_lookback_or_reject_rate_block_gets_one_clear_line(
    case: Case, good_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    test_bad_input_gets_one_clear_line_and_changes_nothing(case, good_world, tmp_path, monkeypatch, capsys)
