"""SmartBulkExportOperator in real DAG runs (dag.test()) against the sandbox over HTTP."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from metadb import delete_xcoms, xcom_value
from task_output import checked_output

DAGS = Path(__file__).resolve().parent.parent / "dags"

pytestmark = pytest.mark.slow  # dag.test() runs on the migrated metadata DB


def run_export(monkeypatch: pytest.MonkeyPatch, dest: Path, **options: Any) -> tuple[Any, Any]:
    monkeypatch.setenv("SMART_TEST_DEST", str(dest))
    monkeypatch.setenv("SMART_TEST_EXPORT", json.dumps(options))
    spec = importlib.util.spec_from_file_location("smart_export_test", DAGS / "smart_export_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.dag.test()
    return run, xcom_value(dag_id="smart_export_test", run_id=run.run_id, task_id="export")


def ndjson_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("deferrable", [False, True])
def test_system_export_lands_complete_and_checked(
    airflow_db: str,
    smart_conn: Any,
    sandbox: Any,
    es384: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: Any,
    deferrable: bool,
) -> None:
    dest = tmp_path / "export"
    run, summary = run_export(monkeypatch, dest, deferrable=deferrable, resource_types=["Patient", "Observation"])
    output = checked_output(capfd.readouterr().out)
    assert run.state == "success", output[-3000:]
    if deferrable:
        # 3.x logs the state change; 2.11's dag.test() says it runs the trigger in line
        assert "DEFERRED" in output or "deferred" in output or "running trigger in line" in output
    assert {e["type"] for e in summary["output"]} == {"Patient", "Observation"}
    for entry in summary["output"]:
        path = Path(entry["path"])
        assert path.parent == dest and path.name.endswith(".ndjson")
        resources = ndjson_lines(path)
        assert len(resources) == entry["lines"] == entry["count"]
        assert {r["resourceType"] for r in resources} == {entry["type"]}
    assert summary["transaction_time"] and summary["status_url"].startswith(sandbox.url)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["summary"]["output"] == summary["output"]
    assert not (dest / ".smart-export.json").exists()
    assert not list(dest.glob(".*.part"))
    assert [k["params"].get("_type") for k in sandbox.kickoffs] in (
        [["Patient,Observation"]],
        [["Patient", "Observation"]],
    )
    assert any(e["route"] == "delete" for e in sandbox.requests_log)  # delete_on_success freed the server slot
    for token in sandbox.issued_tokens():
        assert token not in output and token not in json.dumps(summary)
    assert es384.pem.splitlines()[1] not in output  # no line of the private key in the task logs


def test_since_auto_exports_only_changes_on_the_second_run(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delete_xcoms("smart_export_test")  # earlier tests' runs of this DAG would count as "the last run"
    first_run, first = run_export(monkeypatch, tmp_path / "one", since="auto", resource_types=["Observation"])
    assert first_run.state == "success"
    assert "_since" not in sandbox.kickoffs[-1]["params"]
    touched = sandbox.touch("Observation", 3)
    second_run, second = run_export(monkeypatch, tmp_path / "two", since="auto", resource_types=["Observation"])
    assert second_run.state == "success"
    assert sandbox.kickoffs[-1]["params"]["_since"] == [first["transaction_time"]]
    ids = {r["id"] for e in second["output"] for r in ndjson_lines(Path(e["path"]))}
    assert ids == set(touched)


def test_retry_reattaches_to_the_export_and_skips_finished_files(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "resumed"
    # Both attempts at the Condition file fail, so the first task run saves the Patient file, then fails.
    busy = sandbox.operation_outcome("transient", "busy")
    sandbox.add_fault("file", status=503, times=2, body=busy, path_contains="Condition")
    options = {
        "resource_types": ["Patient", "Condition"],
        "delete_on_success": False,
        "max_concurrent_downloads": 1,
        "transient_retries": 1,
    }
    failed, _ = run_export(monkeypatch, dest, **options)
    assert failed.state == "failed"
    state = json.loads((dest / ".smart-export.json").read_text())
    landed = sorted(p.name for p in dest.glob("*.ndjson") if p.name != "log.ndjson")
    assert len(landed) == 1 and len(sandbox.kickoffs) == 1
    sandbox.reset_logs()
    resumed, summary = run_export(monkeypatch, dest, **options)
    assert resumed.state == "success"
    assert len(sandbox.kickoffs) == 0  # no second kick-off: it re-attached to the recorded status URL
    assert summary["status_url"] == state["status_url"]
    assert sorted(p.name for p in dest.glob("*.ndjson") if p.name != "log.ndjson") == [
        "Condition.1.ndjson",
        "Patient.1.ndjson",
    ]
    fetched = [e["path"] for e in sandbox.requests_log if e["route"] == "file"]
    assert len(fetched) == 1  # the file saved by the failed run was not downloaded again


def test_destination_holding_another_export_is_refused(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    dest = tmp_path / "shared"
    ok, summary = run_export(monkeypatch, dest, resource_types=["Patient"])
    assert ok.state == "success" and summary["run_id"] == ok.run_id
    # The next run (same parameters, non-templated destination) is refused, not "already landed".
    again, _ = run_export(monkeypatch, dest, resource_types=["Patient"])
    assert again.state == "failed"
    out = capfd.readouterr().out
    assert f"another run ({ok.run_id})" in out and "template it" in out
    assert len(sandbox.kickoffs) == 1


def test_failed_export_fails_the_task_with_the_server_diagnostics(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    sandbox.fail_next_export("Group too large")
    run, _ = run_export(monkeypatch, tmp_path / "x", deferrable=True)
    assert run.state == "failed"
    assert "Group too large" in capfd.readouterr().out
    # A retry does not re-attach to the failed export forever: it kicks off a new one.
    again, summary = run_export(monkeypatch, tmp_path / "x", deferrable=True)
    assert again.state == "success" and summary["output"]
    assert len(sandbox.kickoffs) == 2


def test_error_file_issues_are_logged_not_fatal_unless_asked(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    sandbox.add_error_file("error")
    dest = tmp_path / "with-errors"
    run, summary = run_export(monkeypatch, dest, resource_types=["Patient"])
    assert run.state == "success"
    assert summary["error_issue_count"] == 2 and len(summary["error_issues"]) == 2
    sandbox.add_error_file("error")
    dest = tmp_path / "with-errors-strict"
    run, _ = run_export(monkeypatch, dest, resource_types=["Patient"], fail_on_error_issues=True)
    assert run.state == "failed"
    assert "error issue" in capfd.readouterr().out
    assert (dest / "Patient.1.ndjson").exists() and list((dest / "error").glob("*.ndjson"))
    assert (dest / "manifest.json").exists()


def test_wait_timeout_cancels_the_export(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.status_polls_before_ready = 50  # read at kick-off: this export will not finish in time
    run, _ = run_export(monkeypatch, tmp_path / "slow", timeout=1.5, resource_types=["Patient"])
    assert run.state == "failed"
    assert any(e["route"] == "delete" for e in sandbox.requests_log)


def test_export_to_an_object_storage_destination(
    airflow_db: str, smart_conn: Any, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any ObjectStoragePath works as destination; memory:// stands in for s3:// (no cloud here)."""
    from fsspec.implementations.memory import MemoryFileSystem

    from airflow_provider_smart.compat import ObjectStoragePath, attach_store

    attach_store("memory", fs=MemoryFileSystem())
    run, summary = run_export(monkeypatch, "memory://bucket/fhir/run-1", resource_types=["Patient", "Condition"])  # type: ignore[arg-type]
    assert run.state == "success"
    root = ObjectStoragePath("memory://bucket/fhir/run-1")
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))  # .smart-files: records
    assert names == ["Condition.1.ndjson", "Patient.1.ndjson", "log.ndjson", "manifest.json"]
    events = [json.loads(line) for line in (root / "log.ndjson").read_text().splitlines()]  # rewritten whole
    assert events[0]["eventId"] == "kickoff" and events[-1]["eventId"] == "export_complete"
    lines = (root / "Patient.1.ndjson").read_text().splitlines()
    assert len(lines) == summary["output"][[e["type"] for e in summary["output"]].index("Patient")]["count"]
    assert json.loads((root / "manifest.json").read_text())["summary"]["destination"].startswith("memory://")


def test_with_defaults_a_server_keeping_the_first_repeated_type_lands_all_four_types(
    airflow_db: str, smart_conn: Any, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    """The issue's finding on Medplum 5: a four-type export returned Patient alone, and the run succeeded.
    With the connection's defaults (vendor auto) the vendor is detected and every type lands; pre-signed links
    that change on every poll do not matter."""
    from airflow_provider_smart.testing.vendor_quirks import VENDOR_QUIRKS

    sandbox.quirks = VENDOR_QUIRKS["medplum"].copy(forbidden_scopes=frozenset())
    four = ["Patient", "Observation", "Condition", "Encounter"]
    run, summary = run_export(monkeypatch, tmp_path / "export", resource_types=four)
    assert run.state == "success", capfd.readouterr().out[-3000:]
    assert sorted(e["type"] for e in summary["output"]) == sorted(four)
    assert summary["vendor"] == "medplum" and summary["unrequested_types"] == []
    assert all(e["lines"] == e["count"] for e in summary["output"])
