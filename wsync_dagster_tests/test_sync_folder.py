"""One bad sync file never stops the others: the code location, `wsync validate` and `wsync run`."""

from __future__ import annotations

import json

import pytest
import yaml
from dagster import AssetKey, Definitions

from wsync_dagster.cli import main
from wsync_dagster_tests.conftest import USERS_SQL, code_location, user_sync


def _invalid_file_asset(defs: Definitions, name: str):
    """The asset the UI shows for an invalid sync file: its group, description and metadata."""
    return defs.resolve_asset_graph().get(AssetKey(["invalid_sync_files", name]))


def _write_good_and_typo(make_warehouse, write_sync):
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse))
    typo = user_sync(warehouse, name="crm_leads", sync={"frequence": "daily"})
    return write_sync(typo, name="crm_leads.yaml")


def test_a_typo_in_one_file_leaves_every_other_sync_in_the_code_location(make_warehouse, write_sync):
    typo = _write_good_and_typo(make_warehouse, write_sync)
    defs = code_location()
    keys = {node.key for node in defs.resolve_asset_graph().asset_nodes}
    assert {AssetKey(["crm_users", "mapped_batches"]), AssetKey(["crm_users", "delivery"])} <= keys
    assert defs.resolve_job_def("crm_users_job") is not None
    assert [schedule.name for schedule in defs.schedules] == ["crm_users_schedule"]
    assert not any(key.path[0] == "crm_leads" for key in keys)

    spec = _invalid_file_asset(defs, "crm_leads_yaml")
    assert spec.group_name == "invalid_sync_files"
    assert spec.description.startswith("**crm_leads.yaml is not loaded**: sync 'crm_leads' has no assets")
    assert "- sync.frequence: unknown key; allowed: mode, iterator" in spec.description
    assert spec.metadata["sync_file"].value == str(typo)
    assert "sync.frequence: unknown key" in spec.metadata["errors"].value


def test_a_file_that_is_not_yaml_shows_as_an_invalid_file_too(make_warehouse, write_sync):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    write_sync("name: broken\ndata_type: [user\n", name="broken.yml")
    defs = code_location()
    spec = _invalid_file_asset(defs, "broken_yml")
    assert "- invalid YAML at line 2, column 12 (key 'data_type'): while parsing a flow sequence" in (
        spec.description
    )
    assert defs.resolve_job_def("crm_users_job") is not None


def test_two_files_with_one_name_load_the_first_and_show_the_second(make_warehouse, write_sync):
    warehouse = make_warehouse(USERS_SQL)
    first = write_sync(user_sync(warehouse), name="a.yaml")
    write_sync(user_sync(warehouse), name="b.yaml")
    defs = code_location()
    assert defs.resolve_job_def("crm_users_job") is not None
    spec = _invalid_file_asset(defs, "b_yaml")
    assert f"- name: 'crm_users' is already used by {first}" in spec.description


def test_validate_names_each_invalid_file_checks_the_rest_and_exits_1(make_warehouse, write_sync, capsys):
    typo = _write_good_and_typo(make_warehouse, write_sync)
    assert main(["validate"]) == 1
    out, err = capsys.readouterr()
    assert "✓ crm_users: 2 identities, 2 attributes" in out
    assert err.splitlines()[0].startswith(f"✗ {typo}: sync.frequence: unknown key; allowed: mode,")


def test_run_of_a_good_sync_works_and_warns_about_the_invalid_file(make_warehouse, write_sync, capsys):
    typo = _write_good_and_typo(make_warehouse, write_sync)
    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    out, err = capsys.readouterr()
    assert "crm_users: partitions 2024-01-01" in out
    assert err.splitlines()[0].startswith(
        f"wsync: warning: not loaded (see `wsync validate`): {typo}: sync.frequence: unknown key"
    )
    assert main(["profile", "--identity", "email=ada@example.com"]) == 0


def test_run_of_the_invalid_sync_says_what_is_wrong_with_its_file(make_warehouse, write_sync, capsys):
    typo = _write_good_and_typo(make_warehouse, write_sync)
    assert main(["run", "crm_leads"]) == 1
    assert capsys.readouterr().err.startswith(f"wsync run: {typo}: sync.frequence: unknown key")


def test_a_folder_of_only_valid_files_has_no_invalid_assets(make_warehouse, write_sync):
    write_sync(user_sync(make_warehouse(USERS_SQL)))
    defs = code_location()
    groups = {node.group_name for node in defs.resolve_asset_graph().asset_nodes}
    assert groups == {"crm_users", "warehouse"}


# A model or a date that used to take down the whole folder (sqlglot's TokenError and RecursionError,
# yaml's ValueError), each with a literal that no output may repeat.
_BROKEN = {
    "unterminated_string": ("sql", "SELECT customer_id, 'PLNT-secret-1 AS note FROM crm.users"),
    "unterminated_dollar_string": ("sql", "SELECT customer_id, $$PLNT-secret-1 AS note FROM crm.users"),
    "unterminated_comment": ("sql", "SELECT customer_id /* 'PLNT-secret-1' FROM crm.users"),
    "nested_parentheses": (
        "sql",
        "SELECT " + "(" * 200 + "'PLNT-secret-1'" + ")" * 200 + " AS x FROM crm.users",
    ),
    "impossible_date": ("start", "2024-02-30"),
}


@pytest.mark.parametrize("broken", list(_BROKEN))
def test_a_file_that_broke_the_loader_is_one_invalid_file_beside_a_working_sync(
    broken, make_warehouse, write_sync, capsys
):
    warehouse = make_warehouse(USERS_SQL)
    write_sync(user_sync(warehouse))
    field, value = _BROKEN[broken]
    leads = yaml.safe_dump(user_sync(warehouse, name="crm_leads"), sort_keys=False)
    if field == "sql":
        leads = leads.replace(user_sync(warehouse)["data_model"]["sql"], json.dumps(value))
    else:
        leads = leads.replace("start: '2024-01-01T00:00:00Z'", f"start: {value}")
    bad = write_sync(leads, name="crm_leads.yaml")

    assert main(["validate"]) == 1
    validated = capsys.readouterr()
    assert "✓ crm_users: 2 identities, 2 attributes" in validated.out
    assert validated.err.startswith(f"✗ {bad}: {'data_model.sql' if field == 'sql' else 'sync.start'}")

    assert main(["run", "crm_users", "--partition", "2024-01-01"]) == 0
    ran = capsys.readouterr()
    assert "crm_users: partitions 2024-01-01" in ran.out
    assert ran.err.startswith(f"wsync: warning: not loaded (see `wsync validate`): {bad}: ")
    assert main(["profile", "--identity", "email=ada@example.com"]) == 0

    defs = code_location()
    keys = {node.key for node in defs.resolve_asset_graph().asset_nodes}
    assert {AssetKey(["crm_users", "mapped_batches"]), AssetKey(["crm_users", "delivery"])} <= keys
    assert defs.resolve_job_def("crm_users_job") is not None
    assert _invalid_file_asset(defs, "crm_leads_yaml").description.startswith(
        "**crm_leads.yaml is not loaded**"
    )
    shown = [
        validated.out,
        validated.err,
        ran.out,
        ran.err,
        _invalid_file_asset(defs, "crm_leads_yaml").description,
    ]
    assert not any("PLNT" in text for text in shown)
