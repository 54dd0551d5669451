"""Data delay alerting: a warning check when the warehouse's newest iterator value is older than delay_alert."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetCheckSeverity

from wsync_dagster.cli import main
from wsync_dagster.iterators import iterator_moment
from wsync_dagster.spec import SyncSpecError, load_sync_file
from wsync_dagster_tests.conftest import user_sync

SCHEMA = """
CREATE SCHEMA crm;
CREATE TABLE crm.users (
    customer_id VARCHAR, email VARCHAR, first_name VARCHAR, plan VARCHAR, updated_at TIMESTAMP
);
"""


def users_updated(*ago: timedelta) -> str:
    """One user in the 2024-01-01 partition, and one more updated this long ago for each `ago`."""
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = ["('C001', 'ada@example.com', 'Ada', 'pro', TIMESTAMP '2024-01-01 10:00:00')"]
    rows += [
        f"('C{n + 2:03}', NULL, 'Bo', 'free', TIMESTAMP '{(now - span).isoformat(sep=' ', timespec='seconds')}')"
        for n, span in enumerate(ago)
    ]
    return SCHEMA + f"INSERT INTO crm.users VALUES {', '.join(rows)};"


def test_stale_data_warns_in_wsync_run_without_failing_it(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Newest row 3 days old on a daily sync (limit twice daily): exit 0, one warning naming the column and limit."""
    write_sync(user_sync(make_warehouse(users_updated(timedelta(days=3)))))
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    error = capsys.readouterr().err
    warning = next(line for line in error.splitlines() if "warning:" in line)
    assert "crm_users/mapped_batches:data_delay data delay: the newest updated_at is" in warning
    assert "3.0 d ago; the limit is 2.0 d (sync.delay_alert)" in warning


def test_fresh_data_passes_the_delay_check(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A row updated 30 minutes ago is within a 2h delay_alert: no warning."""
    sync = user_sync(make_warehouse(users_updated(timedelta(minutes=30))), sync={"delay_alert": "2h"})
    write_sync(sync)
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    assert "warning:" not in capsys.readouterr().err


def test_the_check_is_a_warning_with_the_newest_value_and_delay_in_its_metadata(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path]
) -> None:
    """What the UI shows: severity WARN, not passed, the newest value, the delay and the limit."""
    from dagster import DagsterInstance, materialize

    from wsync_dagster.defs import build_definitions
    from wsync_dagster.defs.assets import DATA_DELAY_CHECK, build_sync_assets, data_delay_result

    spec = load_sync_file(
        write_sync(user_sync(make_warehouse(users_updated(timedelta(hours=3))), sync={"delay_alert": "2h"}))
    )
    result = data_delay_result(spec)
    assert result.check_name == DATA_DELAY_CHECK
    assert result.severity == AssetCheckSeverity.WARN and not result.passed
    assert result.metadata["delay_limit_hours"].value == 2.0
    assert 2.9 < result.metadata["delay_hours"].value < 3.1
    assert "the limit is 2.0 h" in (result.description or "")

    run = materialize(
        build_sync_assets(spec),
        partition_key="2024-01-01",
        instance=DagsterInstance.ephemeral(),
        resources=build_definitions([spec]).resources,
    )
    evaluations = {e.check_name: e for e in run.get_asset_check_evaluations()}
    assert not evaluations[DATA_DELAY_CHECK].passed
    assert evaluations[DATA_DELAY_CHECK].severity == AssetCheckSeverity.WARN


def test_an_empty_model_warns_that_no_data_arrived(
    make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path]
) -> None:
    """No rows at all: the newest value is missing, which is the worst delay there is."""
    from wsync_dagster.defs.assets import data_delay_result

    spec = load_sync_file(write_sync(user_sync(make_warehouse(SCHEMA))))
    result = data_delay_result(spec)
    assert not result.passed and result.description == "the data model has no rows: no iterator value arrived"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "a duration such as 0s, 30m, 2h, 1d or 1w"),
        ("0s", "delay_alert: must be a positive duration"),
    ],
)
def test_a_delay_alert_that_is_not_a_positive_duration_is_refused(
    value: str, message: str, make_warehouse: Callable[[str], Path], write_sync: Callable[..., Path]
) -> None:
    """The error names the file, the field and what is allowed."""
    path = write_sync(user_sync(make_warehouse(users_updated()), sync={"delay_alert": value}))
    with pytest.raises(SyncSpecError) as error:
        load_sync_file(path)
    assert str(path) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize(
    ("value", "iterator_type", "moment"),
    [
        (datetime(2024, 1, 2, 3, 4, 5), "timestamp", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (date(2024, 1, 2), "date", datetime(2024, 1, 2, tzinfo=UTC)),
        (1_704_164_645_000, "timestamp_unixtime_ms", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (1_704_164_645, "timestamp_unixtime_s", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (None, "timestamp", None),
    ],
)
def test_iterator_values_of_every_type_become_utc_moments(
    value: object, iterator_type: str, moment: datetime | None
) -> None:
    """The delay is measured from the same moment whatever the iterator's type."""
    assert iterator_moment(value, iterator_type) == moment


def test_a_cdc_sync_warns_when_its_tables_newest_commit_is_older_than_the_limit(
    tmp_path: Path, write_sync: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A cdc sync's delay is its table's newest commit: fresh, `wsync run` warns of nothing; three days on, it would."""
    from deltalake import DeltaTable, write_deltalake

    from wsync_dagster.defs.assets import DATA_DELAY_CHECK, build_sync_assets, data_delay_result, mapped_key

    path = tmp_path / "lake" / "users"
    write_deltalake(
        str(path),
        pa.table({"customer_id": ["C001"], "plan": ["free"]}),
        configuration={"delta.enableChangeDataFeed": "true"},
    )
    sync = {
        "name": "crm_changes",
        "data_type": "user",
        "connection": {"type": "delta", "tables": {"crm.users": str(path)}},
        "data_model": {"sql": "SELECT customer_id, plan FROM crm.users"},
        "sync": {"mode": "cdc"},
    }
    spec = load_sync_file(write_sync(sync))
    [mapped] = [a for a in build_sync_assets(spec) if mapped_key(spec) in a.keys]
    assert DATA_DELAY_CHECK in {key.name for key in mapped.check_keys}

    assert main(["run", "crm_changes"]) == 0
    assert "warning:" not in capsys.readouterr().err

    committed = datetime.fromtimestamp(DeltaTable(str(path)).history(1)[0]["timestamp"] / 1000, UTC)
    result = data_delay_result(spec, now=committed + timedelta(days=3))
    assert result.severity == AssetCheckSeverity.WARN and not result.passed
    assert result.metadata["newest_commit"].value == committed.isoformat()
    assert result.description == (
        f"data delay: the newest commit to the table is {committed.isoformat()}, 3.0 d ago; "
        "the limit is 2.0 d (sync.delay_alert)"
    )
