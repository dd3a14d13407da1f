"""The tables step on real files: full and incremental runs into Delta, Parquet and a DuckDB file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from deltalake import DeltaTable

from airflow_provider_smart.exceptions import TablesError, ViewDefinitionError, ViewRunError
from airflow_provider_smart.operators._lineage_tables import table_extra
from airflow_provider_smart.tables import BUNDLED_VIEWS
from airflow_provider_smart.tables.changes import deleted_ids
from airflow_provider_smart.tables.engine import collect_views
from airflow_provider_smart.tables.files import local_copy
from airflow_provider_smart.tables.landed import LandedExport, LandedFile
from airflow_provider_smart.tables.workflow import TablesWorkflow, plan_shares

from .conftest import land, observation, patient

FINAL_ONLY = {
    "resourceType": "ViewDefinition",
    "name": "final_observations",
    "resource": "Observation",
    "status": "active",
    "where": [{"path": "status = 'final'"}],
    "select": [
        {
            "column": [
                {"name": "id", "path": "id", "type": "id"},
                {"name": "v", "path": "value.ofType(Quantity).value", "type": "decimal"},
            ]
        }
    ],
}
VIEWS = [str(BUNDLED_VIEWS / "observation_codes.json"), str(BUNDLED_VIEWS / "patient_demographics.json"), FINAL_ONLY]


def workflow(export: Path, out: Path, **options: Any) -> TablesWorkflow:
    options.setdefault("formats", ("delta", "parquet"))
    options.setdefault("duckdb_file", out / "tables.duckdb")
    return TablesWorkflow(LandedExport.open(str(export)), collect_views(options.pop("views", VIEWS)), out, **options)


def delta_rows(out: Path, name: str, *columns: str) -> list[tuple[Any, ...]]:
    table = DeltaTable(str(out / "delta" / name)).to_pyarrow_table(columns=list(columns))
    return sorted(tuple(row[c] for c in columns) for row in table.to_pylist())


def parquet_rows(out: Path, name: str, *columns: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(columns)
    return sorted(duckdb.sql(f"SELECT {cols} FROM read_parquet('{out}/parquet/{name}/current/*.parquet')").fetchall())


def duckdb_rows(out: Path, name: str, *columns: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(out / "tables.duckdb"), read_only=True)
    try:
        return sorted(con.sql(f"SELECT {', '.join(columns)} FROM {name}").fetchall())
    finally:
        con.close()


def every_format(out: Path, name: str, *columns: str) -> list[tuple[Any, ...]]:
    rows = delta_rows(out, name, *columns)
    assert parquet_rows(out, name, *columns) == rows
    assert duckdb_rows(out, name, *columns) == rows
    return rows


def first_export(tmp_path: Path) -> Path:
    land(
        tmp_path / "run1",
        {
            "Patient.1.ndjson": [patient("p1"), patient("p2", "male")],
            "Observation.1.ndjson": [observation("o-p1-1", ["a", "b"]), observation("o-p1-2", ["c"])],
            "Observation.2.ndjson": [observation("o-p2-1", ["d", "e", "f"]), observation("o-p2-2", ["g"])],
        },
        transaction_time="2024-05-01T00:00:00Z",
    )
    return tmp_path / "run1"


def test_incremental_run_replaces_each_changed_resource_whole_and_removes_deleted_ones(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    summary = workflow(first_export(tmp_path), out).commit()
    assert summary["incremental"] is False
    assert [r[0] for r in every_format(out, "observation_codes", "observation_id", "code")] == [
        "Observation/o-p1-1", "Observation/o-p1-1", "Observation/o-p1-2", "Observation/o-p2-1",
        "Observation/o-p2-1", "Observation/o-p2-1", "Observation/o-p2-2",
    ]  # fmt: skip
    # Changed since: o-p2-1 now has one coding (its three rows become one), o-p1-2 is amended (the
    # where of final_observations now leaves it out), o-p3-1 is new, o-p2-2 was deleted.
    land(
        tmp_path / "run2",
        {
            "Observation.1.ndjson": [
                observation("o-p2-1", ["z"]),
                observation("o-p1-2", ["c"], status="amended"),
                observation("o-p3-1", ["y", "x"]),
            ]
        },
        since="2024-05-01T00:00:00Z",
        transaction_time="2024-05-02T00:00:00Z",
        deleted=["Observation/o-p2-2", "Patient/p2"],
    )
    summary = workflow(tmp_path / "run2", out).commit()
    assert summary["incremental"] is True and summary["since"] == "2024-05-01T00:00:00Z"
    assert every_format(out, "observation_codes", "observation_id", "code") == [
        ("Observation/o-p1-1", "a"), ("Observation/o-p1-1", "b"), ("Observation/o-p1-2", "c"),
        ("Observation/o-p2-1", "z"), ("Observation/o-p3-1", "x"), ("Observation/o-p3-1", "y"),
    ]  # fmt: skip
    assert every_format(out, "final_observations", "id") == [("o-p1-1",), ("o-p2-1",), ("o-p3-1",)]
    assert every_format(out, "patient_demographics", "id") == [("Patient/p1",)]
    table = summary["tables"]["observation_codes"]
    assert table["resources_replaced"] == 4 and table["rows_staged"] == 4
    assert table["outputs"]["delta"]["version"] == 1 and table["outputs"]["parquet"]["version"] == 2


def test_an_export_whose_server_never_reports_deletions_is_applied_with_a_warning_the_tables_user_sees(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "tables"
    assert workflow(first_export(tmp_path), out).commit()["deletions_not_reported"] is False
    # Medplum: o-p2-2 was deleted on the server, but its deleted list is always empty.
    land(
        tmp_path / "run2",
        {"Observation.1.ndjson": [observation("o-p3-1", ["y"])]},
        since="2024-05-01T00:00:00Z",
        transaction_time="2024-05-02T00:00:00Z",
        checks={"deletions_not_reported": True, "vendor": "medplum"},
    )
    with caplog.at_level("WARNING", logger="airflow_provider_smart.tables"):
        summary = workflow(tmp_path / "run2", out).commit()
    assert summary["deletions_not_reported"] is True
    assert table_extra(summary, "observation_codes")["deletions_not_reported"] is True
    assert "never reports deleted resources" in caplog.text and "full export" in caplog.text
    assert ("Observation/o-p2-2", "g") in every_format(out, "observation_codes", "observation_id", "code")


def test_the_duckdb_file_is_read_once_per_commit_not_once_per_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On an object store every read of the DuckDB file downloads it whole.
    from airflow_provider_smart.tables import duckdb_file

    out = tmp_path / "tables"
    workflow(first_export(tmp_path), out).commit()
    land(
        tmp_path / "run2",
        {"Observation.1.ndjson": [observation("o-p3-1", ["y"])]},
        since="2024-05-01T00:00:00Z",
        transaction_time="2024-05-02T00:00:00Z",
    )
    reads: list[Any] = []

    def counted_copy(source: Any, *args: Any) -> Any:
        reads.append(source)
        return local_copy(source, *args)

    monkeypatch.setattr(duckdb_file, "local_copy", counted_copy)
    summary = workflow(tmp_path / "run2", out).commit()
    assert len(summary["tables"]) == len(VIEWS) == 3
    assert reads == [out / "tables.duckdb", out / "tables.duckdb"]  # its states, then the copy it updates
    assert duckdb_rows(out, "observation_codes", "observation_id")[-1] == ("Observation/o-p3-1",)


def test_columns_keep_their_declared_types(tmp_path: Path) -> None:
    import pyarrow as pa

    out = tmp_path / "tables"
    workflow(first_export(tmp_path), out, views=[FINAL_ONLY, str(BUNDLED_VIEWS / "patient_demographics.json")]).commit()
    schema = DeltaTable(str(out / "delta" / "patient_demographics")).to_pyarrow_table().schema
    assert schema.field("birth_date").type == pa.date32()
    value = DeltaTable(str(out / "delta" / "final_observations")).to_pyarrow_table().schema.field("v").type
    assert pa.types.is_decimal(value)


def test_a_view_over_a_type_the_export_lacks_gives_an_empty_table_with_its_schema(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    condition = str(BUNDLED_VIEWS / "condition_flat.json")
    summary = workflow(first_export(tmp_path), out, views=[condition]).commit()
    assert summary["tables"]["condition_flat"]["outputs"]["delta"]["rows"] == 0
    names = DeltaTable(str(out / "delta" / "condition_flat")).to_pyarrow_table().schema.names
    assert names[:3] == ["id", "patient_id", "clinical_status"] and "onset" in names
    assert parquet_rows(out, "condition_flat", "id") == duckdb_rows(out, "condition_flat", "id") == []


def test_an_incremental_export_after_a_missed_run_is_refused_and_the_tables_stay(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    workflow(first_export(tmp_path), out).commit()
    before = every_format(out, "observation_codes", "observation_id", "code")
    land(
        tmp_path / "run3",
        {"Observation.1.ndjson": [observation("o-p1-1", ["q"])]},
        since="2024-05-02T00:00:00Z",  # the tables hold the export of 2024-05-01: one run is missing
        transaction_time="2024-05-03T00:00:00Z",
    )
    with pytest.raises(TablesError, match="changes in between would be missing"):
        workflow(tmp_path / "run3", out).commit()
    assert every_format(out, "observation_codes", "observation_id", "code") == before
    assert DeltaTable(str(out / "delta" / "observation_codes")).version() == 0


def test_an_incremental_export_since_a_date_without_time_or_zone_applies(tmp_path: Path) -> None:
    # _since is a FHIR instant, but the kick-off also takes 2024-05-01 (or a naive datetime): UTC midnight.
    out = tmp_path / "tables"
    workflow(first_export(tmp_path), out).commit()  # holds the export of 2024-05-01T00:00:00Z
    for run, since in (("run2", "2024-05-01"), ("run3", "2024-05-01T00:00:00")):
        land(
            tmp_path / run,
            {"Observation.1.ndjson": [observation("o-p3-1", ["y"])]},
            since=since,
            transaction_time="2024-05-02T00:00:00Z",
        )
        assert workflow(tmp_path / run, out).commit()["since"] == since
    land(tmp_path / "run4", {}, since="2024-05-03", transaction_time="2024-05-04T00:00:00Z")  # a day missing
    with pytest.raises(TablesError, match="changes in between would be missing"):
        workflow(tmp_path / "run4", out).commit()


def test_an_incremental_export_without_tables_is_refused(tmp_path: Path) -> None:
    land(tmp_path / "inc", {"Observation.1.ndjson": [observation("o-p1-1", ["q"])]}, since="2024-05-02T00:00:00Z")
    with pytest.raises(TablesError, match="does not exist yet"):
        workflow(tmp_path / "inc", tmp_path / "tables", formats=("delta",), duckdb_file=None).commit()
    with pytest.raises(TablesError, match="full export"):
        workflow(first_export(tmp_path), tmp_path / "tables", mode="incremental")


def test_a_run_that_fails_part_way_leaves_the_previous_version_readable(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    workflow(first_export(tmp_path), out).commit()
    before = every_format(out, "observation_codes", "observation_id", "code")
    land(
        tmp_path / "bad",
        {
            "Observation.1.ndjson": [observation("o-p1-1", ["new"])],
            "Observation.2.ndjson": [observation("o-p2-1", ["new"]), '{"resourceType": "Observation", "id": '],
        },
        since="2024-05-01T00:00:00Z",
        transaction_time="2024-05-02T00:00:00Z",
    )
    bad = workflow(tmp_path / "bad", out, shares=2)
    with pytest.raises(ViewRunError):
        bad.commit()
    assert every_format(out, "observation_codes", "observation_id", "code") == before
    assert DeltaTable(str(out / "delta" / "observation_codes")).version() == 0
    # A view whose columns changed cannot be merged into the table: refused, the table kept.
    renamed = {**FINAL_ONLY, "select": [{"column": [{"name": "other", "path": "id", "type": "id"}]}]}
    land(tmp_path / "ok", {"Observation.1.ndjson": [observation("o-p1-1", ["b2"])]}, since="2024-05-01T00:00:00Z")
    with pytest.raises(TablesError, match="cannot change a table's columns"):
        workflow(tmp_path / "ok", out, views=[renamed], formats=("delta",), duckdb_file=None).commit()
    assert delta_rows(out, "final_observations", "id") == [("o-p1-1",), ("o-p1-2",), ("o-p2-1",), ("o-p2-2",)]


def test_shares_staged_apart_commit_as_one(tmp_path: Path) -> None:
    export = first_export(tmp_path)
    whole = workflow(export, tmp_path / "whole").commit()
    shared = workflow(export, tmp_path / "shared", shares=3)
    reports = [shared.convert_share(i) for i in (2, 0, 2)]  # share 2 retried; share 1 left to the commit
    assert sum(r["files"] for r in reports[1:]) == 3 - len(shared.share_files(1))
    summary = workflow(export, tmp_path / "shared", shares=3).commit()
    for name in ("observation_codes", "patient_demographics", "final_observations"):
        assert summary["tables"][name]["rows_staged"] == whole["tables"][name]["rows_staged"]
    assert every_format(tmp_path / "shared", "observation_codes", "observation_id", "code") == every_format(
        tmp_path / "whole", "observation_codes", "observation_id", "code"
    )
    assert not (tmp_path / "shared" / "_staging").exists() or not any((tmp_path / "shared" / "_staging").iterdir())


def test_a_retried_commit_applies_nothing_twice(tmp_path: Path) -> None:
    out = tmp_path / "tables"
    export = first_export(tmp_path)
    workflow(export, out).commit()
    again = workflow(export, out).commit()
    assert DeltaTable(str(out / "delta" / "observation_codes")).version() == 0
    assert json.loads((out / "parquet" / "observation_codes" / "_current.json").read_text())["version"] == 1
    assert "version" not in again["tables"]["observation_codes"]["outputs"]["delta"]


def test_plan_shares_balances_bytes_and_is_the_same_everywhere() -> None:
    files = [
        LandedFile("Observation", f"Observation.{i}.ndjson", bytes=size) for i, size in enumerate([9, 1, 5, 5, 4, 1], 1)
    ]
    plan = plan_shares(files, 3)
    assert plan == plan_shares(list(reversed(files)), 3)
    assert sorted(sum(f.bytes for f in share) for share in plan) == [7, 9, 9]
    assert sorted(f.path for share in plan for f in share) == sorted(f.path for f in files)


def test_deleted_entries_name_resources_however_the_url_is_written() -> None:
    lines = [
        json.dumps({"resourceType": "Bundle", "entry": [
            {"request": {"method": "DELETE", "url": "Observation/a"}},
            {"request": {"method": "DELETE", "url": "https://ehr.example/fhir/Patient/b/_history/3"}},
            {"request": {"method": "PUT", "url": "Patient/c"}},
        ]}),
        "",
    ]  # fmt: skip
    assert list(deleted_ids(lines, "deleted/Bundle.1.ndjson")) == [("Observation", "a"), ("Patient", "b")]
    with pytest.raises(TablesError, match="line 1 is not JSON"):
        list(deleted_ids(["{"], "deleted/Bundle.1.ndjson"))


def test_bad_input_is_named(tmp_path: Path) -> None:
    bad = {**FINAL_ONLY, "select": [{"column": [{"name": "x", "path": "id.where(", "type": "id"}]}]}
    with pytest.raises(ViewDefinitionError) as caught:
        collect_views([bad])
    assert caught.value.path.startswith("select[0].column[0]")
    with pytest.raises(TablesError, match="table name"):
        collect_views([{**FINAL_ONLY, "name": "no spaces"}])
    with pytest.raises(TablesError, match="same table"):
        collect_views([FINAL_ONLY, FINAL_ONLY])
    (tmp_path / "half").mkdir()
    with pytest.raises(TablesError, match=r"manifest\.json"):
        LandedExport.open(str(tmp_path / "half"))


def test_tables_on_s3_full_then_incremental(tmp_path: Path, s3_bucket: str, moto_endpoint: str) -> None:
    from airflow_provider_smart.compat import ObjectStoragePath
    from airflow_provider_smart.operators._destination import delta_storage_options
    from airflow_provider_smart.operators.views import tables_in_duckdb

    from .conftest import upload_tree

    def on_s3(local: Path, prefix: str) -> dict[str, Any]:
        summary = json.loads((local / "manifest.json").read_text())["summary"]
        upload_tree(local, s3_bucket, prefix, moto_endpoint)
        dest = f"s3://aws_default@{s3_bucket}/{prefix}"
        for kind in ("output", "deleted"):
            for entry in summary[kind]:
                entry["path"] = entry["path"].replace(str(local), dest)
        return {**summary, "destination": dest}

    out = ObjectStoragePath(f"s3://aws_default@{s3_bucket}/tables")
    views = collect_views(VIEWS)

    def run(summary: dict[str, Any]) -> dict[str, Any]:
        export = LandedExport.open(summary, ObjectStoragePath)
        flow = TablesWorkflow(
            export, views, out, formats=("delta", "parquet"), duckdb_file=out / "t.duckdb", shares=2,
            storage_options=delta_storage_options(out),
        )  # fmt: skip
        flow.convert_share(0)
        return flow.commit()

    first = run(on_s3(first_export(tmp_path), "exports/run1"))
    land(
        tmp_path / "run2",
        {"Observation.1.ndjson": [observation("o-p2-1", ["z"])]},
        since="2024-05-01T00:00:00Z",
        transaction_time="2024-05-02T00:00:00Z",
        deleted=["Observation/o-p1-2"],
    )
    second = run(on_s3(tmp_path / "run2", "exports/run2"))
    assert second["tables"]["observation_codes"]["outputs"]["delta"]["location"] == (
        f"s3://{s3_bucket}/tables/delta/observation_codes"
    )
    extras = [{"table": n, **t} for n, t in second["tables"].items()]
    con, names = tables_in_duckdb(extras)
    assert sorted(names) == ["final_observations", "observation_codes", "patient_demographics"]
    rows = sorted(con.sql("SELECT observation_id, code FROM observation_codes").fetchall())
    assert rows == [
        ("Observation/o-p1-1", "a"), ("Observation/o-p1-1", "b"), ("Observation/o-p2-1", "z"),
        ("Observation/o-p2-2", "g"),
    ]  # fmt: skip
    parquet = second["tables"]["observation_codes"]["outputs"]["parquet"]
    assert parquet["rows"] == 4 and parquet["version"] == 2
    assert first["tables"]["observation_codes"]["outputs"]["duckdb"]["rows"] == 7
    assert second["tables"]["observation_codes"]["outputs"]["duckdb"]["rows"] == 4
    assert not ObjectStoragePath(f"s3://aws_default@{s3_bucket}/tables/_staging/{second['run_key']}").exists()
