"""ExportWorkflow without Airflow: start or re-attach, land, record, refuse, batches."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_smart.bulk import BulkExportError, ExportRequest, ExportWorkflow, plan_batches
from airflow_provider_smart.bulk.workflow import MANIFEST_FILE, STATE_FILE, raise_for_error_issues, summary_table

REQUEST = ExportRequest(resource_types=["Patient", "Observation"])


def workflow(client: Any, destination: Any, identity: dict[str, Any] | None = None, **kwargs: Any) -> ExportWorkflow:
    return ExportWorkflow(client, destination, identity or REQUEST.to_dict(), **kwargs)


def test_start_land_and_record(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    flow = workflow(client, tmp_path)
    assert flow.completed_summary() is None and flow.export_in_flight() is None
    started = flow.start(REQUEST)
    assert not started.reattached and flow.export_in_flight() == started.status_url
    summary = flow.land(started.status_url, client.wait(started.status_url))
    assert not (tmp_path / STATE_FILE).exists()  # the kick-off record gives way to manifest.json
    assert not (tmp_path / ".smart-files").exists()  # so do the per-file records: only data and manifest.json
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    saved = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert saved["summary"] == summary and saved["manifest"]["transactionTime"] == summary["transaction_time"]
    assert {e["type"] for e in summary["output"]} == {"Patient", "Observation"}
    assert all(e["lines"] == e["count"] for e in summary["output"])
    assert sb.requests_log[-1]["method"] == "DELETE"  # delete_on_success frees the server's slot
    assert flow.completed_summary() == summary
    assert "Observation" in summary_table(summary)


def test_a_second_attempt_reattaches_instead_of_kicking_off_again(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    first = workflow(client, tmp_path).start(REQUEST)
    kickoffs = sum(1 for r in sb.requests_log if r["path"].endswith("$export"))
    again = workflow(make_client(sb), tmp_path).start(REQUEST)
    assert again.reattached and again.status_url == first.status_url and again.first_status is not None
    assert sum(1 for r in sb.requests_log if r["path"].endswith("$export")) == kickoffs


def test_an_export_that_is_gone_is_started_afresh(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    first = workflow(client, tmp_path).start(REQUEST)
    client.cancel(first.status_url)
    again = workflow(client, tmp_path).start(REQUEST)
    assert not again.reattached and again.status_url != first.status_url


def test_a_destination_holding_another_export_is_refused(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    workflow(client, tmp_path).start(REQUEST)
    other = workflow(client, tmp_path, {"something": "else"})
    with pytest.raises(BulkExportError, match="another export in progress"):
        other.start(REQUEST)


def test_a_completed_export_with_other_parameters_is_refused(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    flow = workflow(client, tmp_path, delete_on_success=False)
    started = flow.start(REQUEST)
    flow.land(started.status_url, client.wait(started.status_url))
    with pytest.raises(BulkExportError, match=r"already holds a completed export.*\{\{ ds \}\}"):
        workflow(client, tmp_path, {"other": 1}).completed_summary()


def test_land_completed_refuses_an_export_still_running(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(status_polls_before_ready=100)
    client = make_client(sb)
    status_url = client.kick_off(REQUEST)
    with pytest.raises(BulkExportError, match="not complete yet"):
        workflow(client, tmp_path, {"status_url": status_url}).land_completed(status_url)


def test_batches_land_and_a_vanished_path_is_named(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    status_url = client.kick_off(REQUEST)
    manifest = client.wait(status_url)
    batches = plan_batches(manifest, status_url, max_batches=2)
    assert len(batches) == 2 and sum(len(b["paths"]) for b in batches) == len(manifest.output)
    flow = workflow(client, tmp_path, {"status_url": status_url})
    for item in batches:
        report = flow.land_batch(item["status_url"], item["paths"])
        assert report.totals()["lines"] == item["count"]
    with pytest.raises(BulkExportError, match=r"1 file.*no longer in the export's manifest"):
        flow.land_batch(status_url, ["Patient.99.ndjson"])


def test_error_issues_fail_with_a_listing() -> None:
    raise_for_error_issues({"error_issues": []})
    issue = {"severity": "error", "code": "processing", "diagnostics": "Patient/7 could not be read"}
    with pytest.raises(BulkExportError, match=r"1 error issue.*Patient/7"):
        raise_for_error_issues({"error_issues": [issue], "destination": "/x"})


def test_error_issues_are_logged_at_error_level_by_default(caplog) -> None:
    from airflow_provider_smart.bulk.workflow import log_error_issues

    issue = {"severity": "error", "code": "processing", "diagnostics": "Patient/7 could not be read"}
    with caplog.at_level("ERROR", "airflow_provider_smart"):
        log_error_issues({"error_issues": [issue], "error_issue_count": 3})
    assert "3 error issue(s)" in caplog.text and "fail_on_error_issues=True" in caplog.text
