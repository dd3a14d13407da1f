"""SmartViewsOperator in real DAG runs: an export from the sandbox, mapped conversion, one commit; then an
incremental run that updates and deletes rows. Asset events per table, OpenLineage outputs with schemas."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from metadb import asset_events, register_assets, xcom_value

from airflow_provider_smart.operators._lineage_tables import emit_table_events, table_extra, tables_lineage
from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS

DAGS = Path(__file__).resolve().parent.parent / "dags"


def _load(monkeypatch: pytest.MonkeyPatch, dest: Path) -> Any:
    monkeypatch.setenv("SMART_TEST_DEST", str(dest))
    spec = importlib.util.spec_from_file_location("smart_tables_test", DAGS / "smart_tables_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _xcom(run: Any, task_id: str, map_index: int = -1) -> Any:
    return xcom_value(run_id=run.run_id, task_id=task_id, map_index=map_index)


def _rows(dest: Path, view: str) -> dict[str, str]:
    table = DeltaTable(str(dest / "tables" / "delta" / view)).to_pyarrow_table(columns=["id", "status"])
    return {row["id"]: row["status"] for row in table.to_pylist()}


def test_export_into_tables_then_an_incremental_run_updates_and_deletes_rows(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dags = _load(monkeypatch, tmp_path)
    register_assets(dags.tables_dag)
    first = dags.tables_dag.test()
    assert first.state == "success"
    summary = _xcom(first, "commit")
    assert summary["incremental"] is False
    rows = _rows(tmp_path, "observation_flat")
    assert len(rows) == 30 and set(rows.values()) <= {"final", "preliminary"}  # 10 patients x 3
    patients = DeltaTable(str(tmp_path / "tables" / "delta" / "patient_demographics")).to_pyarrow_table()
    assert patients.num_rows == 10
    # The view file's {{ params.status }} was rendered before it was parsed.
    final = _rows(tmp_path, "status_observations")
    assert set(final.values()) == {"final"} and len(final) == sum(s == "final" for s in rows.values())
    shares = [_xcom(first, "convert", i) for i in (0, 1)]
    assert sum(s["files"] for s in shares) == 2  # one Patient file and one Observation file, one per share

    # One asset event per table through the alias, and the named Asset gets its table's extra.
    events = asset_events(first.run_id)
    by_name = {name: extra for _, name, extra in events}
    assert by_name["smart-table://test/observation_flat"] == table_extra(summary, "observation_flat")  # URI-named
    if AIRFLOW_V_3_0_PLUS:
        delta_uris = {f"file://{tmp_path}/tables/delta/{v}" for v in ("observation_flat", "patient_demographics")}
        assert set(by_name) >= delta_uris  # a table's asset through the alias is named by its URI
        assert len(events) == 4  # the named Asset, and one per table through the alias
    else:
        assert len(events) == 1  # 2.x: no events through a DatasetAlias under dags test (README)

    touched = sandbox.touch("Observation", 2)
    sandbox.delete_resource("Observation", "obs-0005-003")
    second = dags.tables_dag.test()
    assert second.state == "success"
    summary = _xcom(second, "commit")
    assert summary["incremental"] is True
    rows = _rows(tmp_path, "observation_flat")
    assert len(rows) == 29 and "Observation/obs-0005-003" not in rows
    assert {rid for rid, status in rows.items() if status == "amended"} == {f"Observation/{t}" for t in touched}
    table = summary["tables"]["observation_flat"]
    assert table["outputs"]["delta"]["version"] == 1 and table["outputs"]["parquet"]["rows"] == 29
    assert table["resources_replaced"] == 3  # two updated, one deleted

    # OpenLineage: the export folder in, every table in every format out, each with its schema.
    operator = dags.tables_dag.get_task("commit")
    operator._smart_tables_summary = summary
    lineage = tables_lineage(operator)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", summary["export"])]
    outputs = {(d.namespace, d.name): d for d in lineage.outputs}
    assert len(outputs) == 6  # three tables, Delta and Parquet each
    flat = outputs[("file", f"{tmp_path}/tables/delta/observation_flat")]
    assert [f.name for f in flat.facets["schema"].fields][:4] == ["id", "patient_id", "encounter_id", "status"]
    assert flat.outputFacets["outputStatistics"].rowCount == 29


def test_the_commit_summary_reaches_the_operator_the_lineage_listener_calls() -> None:
    # Airflow 3.0's OpenLineage listener calls the operator of the task instance, not the context's task.
    from types import SimpleNamespace

    run_task, listener_task = SimpleNamespace(), SimpleNamespace()
    summary = {"export": "/x", "tables": {}}
    emit_table_events({"task": run_task, "ti": SimpleNamespace(task=listener_task)}, None, summary)
    assert run_task._smart_tables_summary is summary and listener_task._smart_tables_summary is summary
