"""Asset events and OpenLineage facets of the export operators, in real DAG runs against the sandbox."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from metadb import asset_events, register_assets, xcom_value

from airflow_provider_smart.operators._lineage_assets import (
    asset_event_extra,
    destination_dataset_id,
    fhir_dataset_id,
    openlineage_facets,
)

DAGS = Path(__file__).resolve().parent.parent / "dags"

SUMMARY: dict[str, Any] = {
    "status_url": "http://127.0.0.1:1/fhir/bulkstatus/abc",
    "transaction_time": "2026-01-02T03:04:05Z",
    "request": "http://127.0.0.1:1/fhir/Group/g1/$export?_type=Patient,Observation",
    "destination": "s3://aws_default@bucket/fhir/run1",
    "output": [
        {"type": "Patient", "path": "p", "count": 3, "lines": 3, "bytes": 30},
        {"type": "Observation", "path": "o1", "count": 5, "lines": 5, "bytes": 50},
        {"type": "Observation", "path": "o2", "count": 2, "lines": 2, "bytes": 20},
    ],
    "deleted": [{"type": "Bundle", "path": "d", "count": 1, "lines": 1, "bytes": 9}],
    "error": [{"type": "OperationOutcome", "path": "e", "count": 2, "lines": 2, "bytes": 8}],
    "error_issues": [],
}


def test_asset_event_extra_summarises_an_export() -> None:
    extra = asset_event_extra(SUMMARY)
    assert extra["destination"] == "s3://aws_default@bucket/fhir/run1"
    assert extra["transactionTime"] == "2026-01-02T03:04:05Z"
    assert extra["counts"] == {"Observation": 7, "Patient": 3}
    assert extra["files"]["Observation"] == {"files": 2, "resources": 7, "bytes": 70}
    assert (extra["deleted_total"], extra["error_total"], extra["error_issues"]) == (1, 2, 0)
    assert (extra["files_total"], extra["bytes_total"]) == (5, 117)
    json.dumps(extra)  # plain JSON: it is stored in the metadata DB
    assert "bulkstatus" not in json.dumps(extra)


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("s3://aws_default@bucket/fhir/run1", ("s3://bucket", "fhir/run1")),
        ("s3://bucket/fhir/run1/", ("s3://bucket", "fhir/run1/")),
        ("gs://b/x", ("gs://b", "x")),
        ("/data/exports/run1", ("file", "/data/exports/run1")),
        ("file:///data/x", ("file", "/data/x")),
    ],
)
def test_destination_dataset_ids_follow_object_storage_path(destination: str, expected: tuple[str, str]) -> None:
    assert destination_dataset_id(destination) == expected


def test_fhir_dataset_id_drops_query_and_userinfo() -> None:
    assert fhir_dataset_id("https://u:p@fhir.example.org/r4/Group/1/$export?_type=Patient") == (
        "https://fhir.example.org",
        "/r4/Group/1/$export",
    )


def test_no_openlineage_provider_means_no_facets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", None)  # import raises ImportError
    assert openlineage_facets(object(), None) is None


def _asset_events(run_id: str) -> list[Any]:
    return asset_events(run_id)


def _xcom(run: Any, task_id: str) -> Any:
    return xcom_value(run_id=run.run_id, task_id=task_id)


def _load_dags(monkeypatch: pytest.MonkeyPatch, dest: Path) -> Any:
    monkeypatch.setenv("SMART_TEST_DEST", str(dest))
    spec = importlib.util.spec_from_file_location("smart_assets_test", DAGS / "smart_assets_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    register_assets(module.export_dag, module.split_dag)
    return module


def test_export_operator_emits_one_asset_event_with_the_summary(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _load_dags(monkeypatch, tmp_path).export_dag.test()
    assert run.state == "success"
    summary = _xcom(run, "export")
    [(task_id, name, extra)] = _asset_events(run.run_id)
    assert (task_id, name.rstrip("/")) == ("export", "smart-bulk://test-export")  # 2.x adds the slash
    assert extra == asset_event_extra(summary)
    assert extra["destination"] == str(tmp_path / "export")
    assert extra["counts"] == {"Observation": 30, "Patient": 10}  # the sandbox fixture: 10 patients x 3
    assert extra["transactionTime"] == summary["transaction_time"]


def test_download_operator_emits_when_it_finishes_the_export_not_the_kickoff(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _load_dags(monkeypatch, tmp_path).split_dag.test()
    assert run.state == "success"
    [(task_id, name, extra)] = _asset_events(run.run_id)
    assert (task_id, name.rstrip("/")) == ("finish", "smart-bulk://test-split")
    assert extra["counts"] == {"Patient": 10}
    assert extra["destination"] == str(tmp_path / "split")
    assert any(e["route"] == "delete" for e in sandbox.requests_log)


def test_openlineage_events_name_the_fhir_export_and_the_destination(
    airflow_db: str, sandbox: Any, es384: Any, tmp_path: Path
) -> None:
    """A real ``airflow dags test`` with the OpenLineage provider's file transport: read what it emitted."""
    events_dir = tmp_path / "ol"
    events_dir.mkdir()
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW_CONN_SMART_DEFAULT": json.dumps(
            {
                "conn_type": "smart",
                "host": sandbox.url,
                "login": "es-client",
                "extra": {"private_key": es384.pem, "kid": es384.kid, "scope": "system/*.rs"},
            }
        ),
        "SMART_TEST_DEST": str(tmp_path / "export"),
        "SMART_TEST_EXPORT": json.dumps({"resource_types": ["Patient"]}),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events_dir / "ev")}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "test",
        "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120",  # a busy 2-core CI machine
    }
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "smart_export_test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    events = [json.loads(p.read_text()) for p in sorted(events_dir.iterdir())]
    complete = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == "smart_export_test.export"]
    assert complete, [(e["eventType"], e["job"]["name"]) for e in events]
    [inp] = complete[-1]["inputs"]
    [outp] = complete[-1]["outputs"]
    assert (inp["namespace"], inp["name"]) == (sandbox.origin, "/fhir/$export")
    assert "_type=Patient" in inp["facets"]["documentation"]["description"]
    assert (outp["namespace"], outp["name"]) == ("file", str(tmp_path / "export"))
    stats = outp["outputFacets"]["outputStatistics"]
    assert stats["rowCount"] == 10 and stats["fileCount"] == 1 and stats["size"] > 0  # 10 patients
    for token in sandbox.issued_tokens():
        assert token not in json.dumps(events)


def test_an_echoed_token_reaches_no_xcom_asset_extra_or_lineage(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server echoing the caller's token (request URL, an error file's diagnostics): masked everywhere."""
    sandbox.echo_token_next_export()
    module = _load_dags(monkeypatch, tmp_path)
    run = module.export_dag.test()
    assert run.state == "success"
    summary = _xcom(run, "export")
    [(_, _, extra)] = _asset_events(run.run_id)
    tokens = sandbox.issued_tokens()
    assert tokens
    for leaked in (summary, extra, asset_event_extra(summary)):
        assert not any(token in json.dumps(leaked) for token in tokens)
    assert "Bearer ***" in json.dumps(summary["error_issues"]) and "access_token=***" in summary["request"]


def test_an_echoed_token_never_reaches_a_failure_message(smart_conn: Any, sandbox: Any, tmp_path: Path) -> None:
    from airflow_provider_smart.exceptions import BulkExportError
    from airflow_provider_smart.operators.bulk_export import SmartBulkExportOperator

    class TaskInstance:
        def xcom_push(self, key: str, value: Any) -> None:
            pass

        def xcom_pull(self, *args: Any, **kwargs: Any) -> None:
            return None

    sandbox.fail_next_export("export failed")
    sandbox.echo_token_next_export()
    op = SmartBulkExportOperator(
        task_id="export", destination=str(tmp_path), deferrable=False, poll_interval=1, cancel_on_kill=False
    )
    with pytest.raises(BulkExportError) as err:
        op.execute({"ti": TaskInstance(), "run_id": "manual__1"})  # type: ignore[arg-type]
    tokens = sandbox.issued_tokens()
    assert tokens and "Bearer ***" in str(err.value)
    assert not any(token in str(err.value) or token in json.dumps(err.value.to_dict()) for token in tokens)


def test_an_alias_event_extra_is_flat_where_airflow_freezes_it() -> None:
    """2.x and 3.0 hash an alias event's extra (frozenset(extra.items())): the export's nested counts would
    fail the task there."""
    from airflow_provider_smart.operators._lineage_assets import alias_event_extra
    from airflow_provider_smart.version_compat import AIRFLOW_V_3_1_PLUS

    extra = {"destination": "/exports/1", "counts": {"Patient": 3}, "files": {"Patient": {"files": 1}}}
    sent = alias_event_extra(extra)
    if AIRFLOW_V_3_1_PLUS:
        assert sent == extra
    else:
        assert sent == {"destination": "/exports/1", "counts": '{"Patient": 3}', "files": '{"Patient": {"files": 1}}'}
        hash(frozenset(sent.items()))
