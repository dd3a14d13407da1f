"""log.ndjson (the bulk-data-client / Cumulus ETL export log) and download progress, against the sandbox."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest
import requests

from airflow_provider_smart.bulk import BulkExportError, ExportRequest, ExportWorkflow
from airflow_provider_smart.bulk.export_log import LOG_FILE, request_parameters
from airflow_provider_smart.bulk.models import DownloadOptions
from airflow_provider_smart.bulk.progress import TransferProgress, format_bytes

GROUP = ExportRequest(level="group", group_id="cohort-a", resource_types=["Patient", "Observation"])


def events(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cumulus_reads(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """What Cumulus ETL's BulkExportLogParser takes from the log: the last kick-off's Group (parsed from
    exportUrl) and status_complete's transactionTime."""
    group = time = None
    for row in rows:
        if row["eventId"] == "kickoff":
            group = re.search(r"/Group/([^/]+)/\$export", row["eventDetail"]["exportUrl"]).group(1)  # type: ignore[union-attr]
        elif row["eventId"] == "status_complete":
            time = row["eventDetail"]["transactionTime"]
    assert group is not None and time is not None
    return group, time


def run(client: Any, destination: Any, request: ExportRequest = GROUP, **kwargs: Any) -> dict[str, Any]:
    flow = ExportWorkflow(client, destination, request.to_dict(), **kwargs)
    started = flow.start(request)
    return flow.land(started.status_url, flow.wait(started.status_url, poll_interval=0.01))


def test_a_landed_export_writes_the_standard_log(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(status_polls_before_ready=2, resources_per_file=20)
    summary = run(make_client(sb), tmp_path)
    rows = events(tmp_path / LOG_FILE)
    kinds = [r["eventId"] for r in rows]
    assert kinds[:3] == ["kickoff", "status_progress", "status_progress"]
    assert kinds[3:6] == ["status_complete", "status_page_complete", "manifest_complete"]
    assert kinds[-1] == "export_complete"
    assert {r["exportId"] for r in rows} == {summary["status_url"]}  # one id: the export's status URL
    assert all(set(r) >= {"exportId", "timestamp", "eventId", "eventDetail"} for r in rows)
    assert cumulus_reads(rows) == ("cohort-a", summary["transaction_time"])
    kickoff = rows[0]
    assert kickoff["_client"] == "airflow-provider-smart" and kickoff["eventDetail"]["errorCode"] is None
    software = requests.get(f"{sb.url}/metadata", timeout=10).json()["software"]
    assert kickoff["eventDetail"]["softwareName"] == software["name"]
    assert kickoff["eventDetail"]["requestParameters"]["_type"] == "Patient,Observation"
    files = [*summary["output"], *summary["deleted"], *summary["error"]]
    complete = [r["eventDetail"] for r in rows if r["eventId"] == "download_complete"]
    requested = [r["eventDetail"] for r in rows if r["eventId"] == "download_request"]
    assert len(complete) == len(requested) == len(files) > 2
    assert sorted(c["fileSize"] for c in complete) == sorted(f["bytes"] for f in files)
    assert {r["itemType"] for r in requested} == {"output"}
    totals = rows[-1]["eventDetail"]
    assert totals["files"] == len(files) and totals["resources"] == sum(f["lines"] for f in files)
    assert totals["bytes"] == sum(f["bytes"] for f in files) and totals["duration"] >= 0
    progress = rows[1]["eventDetail"]
    assert set(progress) == {"body", "xProgress", "retryAfter"} and progress["retryAfter"] == "1"


def test_a_retried_land_continues_the_log_without_logging_files_twice(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(resources_per_file=7)  # 20 patients: 3 files
    client = make_client(sb)
    request = ExportRequest(resource_types=["Patient"])
    flow = ExportWorkflow(client, tmp_path, request.to_dict())
    started = flow.start(request)
    manifest = flow.wait(started.status_url)
    assert len(manifest.output) == 3
    sb.add_fault("file", status=400, path_contains="Patient.2", times=1)  # neither transient nor expired: fails
    with pytest.raises(BulkExportError):
        flow.land(started.status_url, manifest)
    ExportWorkflow(client, tmp_path, request.to_dict()).land(started.status_url, manifest)
    rows = events(tmp_path / LOG_FILE)
    kinds = [r["eventId"] for r in rows]
    assert kinds.count("kickoff") == kinds.count("status_complete") == kinds.count("download_error") == 1
    assert kinds.count("download_complete") == 3  # two by the first try, the third by the retry
    assert kinds[-1] == "export_complete" and rows[-1]["eventDetail"]["files"] == 3
    assert len({r["exportId"] for r in rows}) == 1
    error = next(r["eventDetail"] for r in rows if r["eventId"] == "download_error")
    assert error["fileUrl"].endswith("Patient.2.ndjson") and "400" in error["message"]


def test_a_refused_kickoff_is_logged_with_its_error(sb, make_client, tmp_path) -> None:
    sb.add_fault("kickoff", status=422, body=sb.operation_outcome("not-supported", "no such type: Foo"))
    with pytest.raises(BulkExportError):
        ExportWorkflow(make_client(sb), tmp_path, GROUP.to_dict()).start(GROUP)
    (row,) = events(tmp_path / LOG_FILE)
    assert row["eventId"] == "kickoff" and row["eventDetail"]["errorCode"] == 422
    assert "no such type: Foo" in json.dumps(row["eventDetail"]["errorBody"])


def object_store(mem_path: Any) -> Any:
    """The tests' in-memory path with text modes, as ObjectStoragePath has them (and no local Path)."""
    base = type(mem_path)

    class ObjectStore(base):  # type: ignore[misc, valid-type]
        def __truediv__(self, other: str) -> Any:
            return ObjectStore(self.store, f"{self.path}/{other}")

        @property
        def parent(self) -> Any:
            return ObjectStore(self.store, self.path.rsplit("/", 1)[0])

        def open(self, mode: str = "rb") -> Any:
            handle = super().open(mode.replace("b", "") + "b")
            return handle if "b" in mode else io.TextIOWrapper(handle, encoding="utf-8")

    return ObjectStore(mem_path.store, mem_path.path)


def test_a_kickoff_made_elsewhere_is_taken_from_the_manifest(sb, make_client, mem_path) -> None:
    """The split export's finishing step never saw the kick-off; on object stores the log is rewritten whole."""
    mem_path = object_store(mem_path)
    client = make_client(sb)
    status_url = client.kick_off(GROUP)
    flow = ExportWorkflow(client, mem_path, {"status_url": status_url})
    flow.land(status_url, client.wait(status_url))
    rows = [json.loads(line) for line in mem_path.files()["mem://bucket/log.ndjson"].splitlines()]
    assert cumulus_reads(rows)[0] == "cohort-a"
    assert rows[0]["eventDetail"]["requestParameters"]["_type"] == "Patient,Observation"
    assert not [k for k in mem_path.files() if k.endswith(".part")]


def test_no_log_when_turned_off_and_no_secret_query_in_it(sb, make_client, tmp_path) -> None:
    run(make_client(sb), tmp_path / "off", export_log=False)
    assert not (tmp_path / "off" / LOG_FILE).exists()
    sb.redirect_files = True  # files answer 307 to pre-signed URLs
    run(make_client(sb), tmp_path / "on")
    assert "Signature" not in (tmp_path / "on" / LOG_FILE).read_text()


def test_request_parameters_join_repeats_and_leave_patient_out() -> None:
    body = {
        "parameter": [
            {"name": "patient", "valueReference": {"reference": "Patient/1"}},
            {"name": "_type", "valueString": "B"},
        ]
    }
    assert request_parameters([("_type", "A")], body) == {"_type": "A,B"}


def test_progress_counts_every_file_and_byte_and_is_logged(sb, make_client, tmp_path, caplog) -> None:
    progress = TransferProgress()
    caplog.set_level(logging.INFO, logger="airflow_provider_smart.bulk")
    flow_options = DownloadOptions(progress_log_interval=0.001)
    summary = run(make_client(sb), tmp_path, options=flow_options, progress=progress)
    snap = progress.snapshot()
    files = [*summary["output"], *summary["deleted"], *summary["error"]]
    assert snap.files_total == snap.files_done == len(files) and snap.files_skipped == 0
    assert snap.bytes == sum(f["bytes"] for f in files) and snap.rate > 0
    assert any(r.getMessage().startswith("Download progress: ") for r in caplog.records)
    assert f"{len(files)}/{len(files)} files" in snap.describe()
    assert format_bytes(1536) == "1.5 KB" and format_bytes(12) == "12 B" and format_bytes(3e9) == "3.0 GB"
