"""Every bad sync file is one file's problem: random truncations and mutations of valid sync files.

Each case writes one mutated file beside a valid neighbour and loads the folder. Loading never raises;
the neighbour always loads; the mutated file either loads or is that file's error, in lines that name
the file and never repeat a literal planted in the SQL. Seeded: a failure names its case, and the same
case comes back on every run.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetKey

from wsync_dagster.defs import build_folder_definitions
from wsync_dagster.spec import load_sync_folder

SECRETS = ("PLNT-k9Zq-7781-secret", "PLNT-dollar-5512-secret")
CASES_PER_FILE = 700
# Building a code location takes some 40 ms: the valid mutants of dates and numbers, up to this many.
DEFINITIONS_SAMPLE = 40
SEED = 20240229

NEIGHBOUR = """name: neighbour
data_type: user
connection: {type: duckdb, path: ../data/warehouse.duckdb}
data_model: {sql: "SELECT customer_id, updated_at FROM crm.users"}
sync: {mode: full}
"""

# Valid files whose SQL holds the planted literals in the ways a model holds values: quoted strings,
# a $$ string, comments, nested parentheses, CASE; and whose YAML holds dates and times.
DUCKDB_USERS = """name: crm_users
description: CRM customers, refreshed daily
data_type: user
connection:
  type: duckdb
  path: ../data/warehouse.duckdb
data_model:
  sql: |
    -- customers on a paid plan
    SELECT customer_id,
           lower(trim(email)) AS email,
           CASE WHEN plan = 'PLNT-k9Zq-7781-secret' THEN 'pro' ELSE coalesce(plan, 'free') END AS plan,
           /* the iterator */ updated_at
    FROM crm.users
    WHERE note <> $$PLNT-dollar-5512-secret$$
      AND (updated_at >= TIMESTAMP '2020-01-01 00:00:00' OR (email IS NULL AND (plan IN ('a', 'b'))))
mapping:
  - {type: column, column: customer_id, field: user_identities.customer_id}
  - {type: column, column: email, field: user_identities.email}
  - {type: static, value: crm, field: user_attributes.source}
  - {type: column, column: $unmapped, field: user_attributes.*}
sync:
  mode: incremental
  iterator: updated_at
  iterator_type: timestamp
  schedule: interval
  frequency: daily
  start: 2024-01-02T00:00:00Z
  historical_start: 2024-01-01
  lookback: 2h
  delay_alert: 2d
checks:
  max_reject_rate: 0.1
"""

POSTGRES_EVENTS = """name: crm_events
data_type: event
connection:
  type: postgres
  host: 127.0.0.1
  database: analytics
  user: wsync
  password: {env: WSYNC_PG_PASSWORD}
data_model:
  sql: "SELECT e.id AS message_id, e.customer_id, 'PLNT-k9Zq-7781-secret' AS token_hint, e.name, e.at
    FROM crm.events AS e WHERE e.kind <> $$PLNT-dollar-5512-secret$$ /* no test events */
    AND e.at < DATE '2030-12-31' -- events only"
mapping:
  - {type: column, column: customer_id, field: user_identities.customer_id}
  - {type: column, column: name, field: events.data.event_name}
  - {type: static, value: custom_event, field: events.event_type}
  - {type: static, value: other, field: events.data.custom_event_type}
  - {type: column, column: at, field: events.data.timestamp_unixtime_ms}
  - {type: column, column: message_id, field: events.data.source_message_id}
  - {type: ignore, column: token_hint}
sync:
  mode: incremental
  iterator: at
  iterator_type: timestamp
  schedule: once
  start: 2024-03-01 06:30:00+01:00
  historical_start: 2023-12-31
"""

SNOWFLAKE_USERS = """name: sf_users
data_type: user
connection:
  type: snowflake
  account: xy12345
  user: WSYNC
  password: {env: SF_PASSWORD}
  warehouse: WH
  database: ANALYTICS
data_model:
  sql: >-
    SELECT "CUSTOMER_ID", EMAIL, UPDATED_AT
    FROM CRM.USERS // a Snowflake comment
    WHERE NOTE <> 'PLNT-k9Zq-7781-secret' AND TAG <> $$PLNT-dollar-5512-secret$$
mapping:
  - {type: column, column: CUSTOMER_ID, field: user_identities.customer_id}
  - {type: column, column: EMAIL, field: user_identities.email}
  - {type: ignore, column: UPDATED_AT}
sync:
  mode: full
  schedule: interval
  frequency: monthly
  start: 2024-01-01
"""

# What a person or an editor puts in by mistake, and what breaks a tokenizer, a parser or a date.
SNIPPETS = (
    "'",
    '"',
    "`",
    "$$",
    "$tag$",
    "/*",
    "*/",
    "--",
    "//",
    "(",
    ")",
    "((((((((((((((((((((((((((((((",
    "[",
    "]",
    "{",
    "}",
    "CASE WHEN ",
    " END",
    "NOT NOT NOT ",
    "::INT",
    ";",
    ",",
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\t",
    "#",
    "&a ",
    "*a",
    "!!int ",
    "!!timestamp ",
    "!!bool ",
    "!!binary ",
    "2024-02-30",
    "2023-02-29",
    "2024-13-01",
    "9999-12-31",
    "0000-01-01",
    "25:61:00",
    "+99:00",
    "\\",
    "\x00",
    "\x85",
    "\ufeff",
    "é",
    "SELECT ",
    " FROM ",
    " UNION ALL ",
    " WHERE ",
    "E'",
    "x'zz'",
    "U&'",
    "%",
    "?",
    "@",
    "~",
    "1" * 5000,
)
# Dates that do not exist, and real ones at the edges of what a sync may hold.
DATES = (
    "2024-02-30",
    "2023-02-29",
    "2024-13-01",
    "2024-00-10",
    "2024-04-31",
    "0000-01-01",
    "0001-01-01",
    "1899-12-31",
    "1900-01-01",
    "2999-12-31",
    "9999-12-31",
)


@dataclass(frozen=True)
class Case:
    """One mutated sync file, from a base file and a seeded random draw."""

    base: str
    index: int
    text: str
    kinds: tuple[str, ...]


def _mutate(text: str, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    """One to three random edits, half of them aimed at the SQL; the text and the kinds of edit."""
    sql_start = text.index("data_model:")
    sql_end = text.index("mapping:") if "mapping:" in text else len(text)
    kinds = []
    for _ in range(rng.randint(1, 3)):
        if not text:
            break
        in_sql = rng.random() < 0.5 and sql_start < min(sql_end, len(text))
        at = rng.randrange(sql_start, min(sql_end, len(text))) if in_sql else rng.randrange(len(text) + 1)
        span = rng.randint(1, 24)
        kind = rng.choice(
            ("truncate", "delete", "insert", "insert", "replace", "duplicate", "swap_lines", "date", "number")
        )
        kinds.append(kind)
        dates = list(re.finditer(r"\d{4}-\d\d-\d\d", text))
        numbers = list(re.finditer(r"\d+", text))
        if kind == "date" and dates:
            found = rng.choice(dates)
            text = text[: found.start()] + rng.choice(DATES) + text[found.end() :]
        elif kind == "number" and numbers:
            found = rng.choice(numbers)
            text = text[: found.start()] + "9" * rng.randint(1, 30) + text[found.end() :]
        elif kind == "truncate":
            text = text[:at]
        elif kind == "delete":
            text = text[:at] + text[at + span :]
        elif kind == "insert":
            text = text[:at] + rng.choice(SNIPPETS) + text[at:]
        elif kind == "replace":
            text = text[:at] + rng.choice(SNIPPETS)[:1] + text[at + 1 :]
        elif kind == "duplicate":
            text = text[:at] + text[at : at + span] + text[at:]
        elif kind == "swap_lines":
            lines = text.splitlines(keepends=True)
            first, second = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[first], lines[second] = lines[second], lines[first]
            text = "".join(lines)
    return text, tuple(kinds)


def _cases() -> list[Case]:
    rng = random.Random(SEED)
    cases = []
    for base_name, base in (
        ("duckdb", DUCKDB_USERS),
        ("postgres", POSTGRES_EVENTS),
        ("snowflake", SNOWFLAKE_USERS),
    ):
        cases += [Case(base_name, index, *_mutate(base, rng)) for index in range(CASES_PER_FILE)]
    return cases


@pytest.mark.parametrize("base", [DUCKDB_USERS, POSTGRES_EVENTS, SNOWFLAKE_USERS])
def test_every_base_file_is_valid(base: str, tmp_path: Path):
    (tmp_path / "neighbour.yaml").write_text(NEIGHBOUR)
    (tmp_path / "sync.yaml").write_text(base)
    folder = load_sync_folder(tmp_path)
    assert folder.invalid == []
    assert len(folder.specs) == 2


def test_a_mutated_sync_file_is_its_own_error_and_never_stops_the_neighbour(tmp_path: Path):
    (tmp_path / "neighbour.yaml").write_text(NEIGHBOUR)
    mutant = tmp_path / "sync.yaml"
    outcomes = {"loaded": 0, "refused": 0}
    for case in _cases():
        mutant.write_bytes(case.text.encode())
        where = f"case {case.base}[{case.index}] (seed {SEED}): {case.text!r}"
        try:
            folder = load_sync_folder(tmp_path)
        except Exception as error:  # the failure this test exists to find
            pytest.fail(f"{where}\nloading the folder raised {type(error).__name__}: {error}")
        assert "neighbour" in {spec.name for spec in folder.specs}, where
        refused = [file for file in folder.invalid if file.path == mutant]
        assert [file.path for file in folder.invalid] == [file.path for file in refused], where
        outcomes["refused" if refused else "loaded"] += 1
        for line in (line for file in refused for line in file.errors):
            assert line.startswith(f"{mutant}: "), f"{where}\n{line}"
            assert not any(secret in line for secret in SECRETS), f"{where}\n{line}"
            assert "<Token" not in line and "Traceback" not in line, f"{where}\n{line}"
    # Both outcomes happen often: the mutations are neither all harmless nor all fatal.
    assert min(outcomes.values()) > len(_cases()) // 20, outcomes


def test_a_mutated_file_that_loads_builds_into_the_code_location_beside_the_neighbour(tmp_path: Path):
    (tmp_path / "neighbour.yaml").write_text(NEIGHBOUR)
    mutant = tmp_path / "sync.yaml"
    built: set[str] = set()
    for case in _cases():
        if len(built) == DEFINITIONS_SAMPLE:
            break
        if case.text in built or not {"date", "number"} & set(case.kinds):
            continue
        mutant.write_bytes(case.text.encode())
        folder = load_sync_folder(tmp_path)
        if folder.invalid:
            continue
        built.add(case.text)
        where = f"case {case.base}[{case.index}] (seed {SEED}): {case.text!r}"
        try:
            defs = build_folder_definitions(folder)
            keys = {node.key for node in defs.resolve_asset_graph().asset_nodes}
            defs.get_repository_def()
        except Exception as error:  # the failure this test exists to find
            pytest.fail(f"{where}\nbuilding the code location raised {type(error).__name__}: {error}")
        for spec in folder.specs:
            assert AssetKey([spec.name, "delivery"]) in keys, where
    assert len(built) == DEFINITIONS_SAMPLE
