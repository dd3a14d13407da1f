"""Kick-off, status, manifests, wait and cancel against the real sandbox server over HTTP."""

from __future__ import annotations

import pytest

from airflow_provider_smart.bulk import BulkExportError, DownloadOptions, ExportRequest, ExportTimeoutError
from airflow_provider_smart.testing import operation_outcome

COUNTS = {"Patient": 20, "Observation": 100, "Condition": 40, "Encounter": 40}  # 20 patients


def kickoff_log(sb) -> list[dict]:
    return [r for r in sb.requests_log if r["route"] == "kickoff"]


def test_system_export_get_end_to_end(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    request = ExportRequest(resource_types=["Patient", "Observation"], since="2020-01-01T00:00:00Z")
    status_url = client.kick_off(request)
    assert status_url.startswith(f"{sb.url}/bulkstatus/")
    sent = sb.kickoffs[-1]
    assert sent["method"] == "GET" and sent["level"] == "system"
    assert sent["params"]["_type"] == ["Patient,Observation"]  # the spec's comma-delimited form
    assert sent["headers"]["accept"] == "application/fhir+json"
    assert sent["headers"]["prefer"] == "respond-async"
    manifest = client.wait(status_url)
    assert {f.type: f.count for f in manifest.output} == {"Patient": 20, "Observation": 100}
    report = client.download(manifest, tmp_path)
    assert {f.type: f.lines for f in report.files} == {"Patient": 20, "Observation": 100}
    assert (tmp_path / "Patient.1.ndjson").read_bytes().count(b"\n") == 20


def test_comma_joined_types_by_default_repeated_when_asked(sb, make_client) -> None:
    make_client(sb).kick_off(ExportRequest(resource_types=["Patient", "Condition"]))
    assert "_type=Patient,Condition" in kickoff_log(sb)[-1]["query"]
    make_client(sb, comma_join_repeats=False).kick_off(ExportRequest(resource_types=["Patient", "Condition"]))
    assert "_type=Patient&_type=Condition" in kickoff_log(sb)[-1]["query"]


def test_patient_export_by_post_with_patients(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    request = ExportRequest(
        level="patient", patients=["pat-0001", "Patient/pat-0002"], resource_types="Patient,Condition"
    )
    status_url = client.kick_off(request)
    sent = sb.kickoffs[-1]
    assert sent["method"] == "POST" and sent["level"] == "patient"
    assert sent["params"]["patient"] == ["Patient/pat-0001", "Patient/pat-0002"]
    assert sent["headers"]["content-type"] == "application/fhir+json"
    report = client.download(client.wait(status_url), tmp_path)
    assert {f.type: f.lines for f in report.files} == {"Patient": 2, "Condition": 4}


def test_group_export_end_to_end(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest(level="group", group_id="cohort-a"))  # the even patients
    assert sb.kickoffs[-1]["group_id"] == "cohort-a"
    report = client.download(client.wait(status_url), tmp_path)
    assert {f.type: f.lines for f in report.files} == {t: n // 2 for t, n in COUNTS.items()}
    assert all(f.lines == f.count for f in report.files)


def test_unknown_group_is_a_fatal_kickoff_error(sb, make_client) -> None:
    with pytest.raises(BulkExportError, match=r"HTTP 404.*Group/nope does not exist") as info:
        make_client(sb).kick_off(ExportRequest(level="group", group_id="nope"))
    assert info.value.status == 404
    assert info.value.context["outcome"]["resourceType"] == "OperationOutcome"


def test_429_at_kickoff_is_waited_out(sb, make_client, fake_time) -> None:
    sb.add_fault("kickoff", status=429, headers={"Retry-After": "7"}, times=2)
    status_url = make_client(sb).kick_off(ExportRequest())
    assert status_url.startswith(sb.url)
    assert fake_time.sleeps == [7.0, 7.0]
    assert [r["status"] for r in kickoff_log(sb)] == [429, 429, 202]


def test_429_at_kickoff_with_an_epoch_retry_after_is_clamped(sb, make_client, fake_time) -> None:
    sb.add_fault("kickoff", status=429, headers={"Retry-After": "99999999999999"})
    make_client(sb, max_retry_after=120).kick_off(ExportRequest())
    assert fake_time.sleeps == [120.0]


def test_429_at_kickoff_gives_up_after_the_retries(sb, make_client) -> None:
    sb.add_fault("kickoff", status=429, headers={"Retry-After": "1"}, times=5)
    with pytest.raises(BulkExportError, match=r"HTTP 429.*one at a time"):
        make_client(sb, attempts=2).kick_off(ExportRequest())


def test_kickoff_without_content_location(sb, make_client) -> None:
    sb.add_fault("kickoff", status=202, body=operation_outcome("informational", "ok", "information"))
    with pytest.raises(BulkExportError, match="no Content-Location"):
        make_client(sb).kick_off(ExportRequest())


def test_relative_content_location_is_made_absolute(sb, make_client) -> None:
    sb.add_fault("kickoff", status=202, body=b"", headers={"Content-Location": "bulkstatus/abc"})
    assert make_client(sb).kick_off(ExportRequest()) == f"{sb.url}/bulkstatus/abc"


def test_poll_reports_progress_then_the_manifest(sb, make_client) -> None:
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest())
    first = client.poll(status_url)
    assert first.state == "in_progress" and first.progress == "50% complete" and first.retry_after == 1.0
    assert sb.requests_log[-1]["headers"]["accept"] == "application/json"
    assert sb.requests_log[-1]["authorization"] is True
    done = client.poll(status_url)
    assert done.state == "complete" and done.manifest is not None
    assert done.manifest.status_url == status_url
    assert sorted(f.type for f in done.manifest.output) == sorted(COUNTS)


def test_wait_honours_retry_after_and_reports_progress(sandbox_factory, make_client, fake_time) -> None:
    sb = sandbox_factory(status_polls_before_ready=3, retry_after="5")
    client = make_client(sb)
    seen: list[str | None] = []
    manifest = client.wait(client.kick_off(ExportRequest()), on_progress=lambda r: seen.append(r.progress))
    assert len(seen) == 3 and fake_time.sleeps == [5.0, 5.0, 5.0]
    assert manifest.transaction_time


def test_wait_backs_off_without_retry_after(sandbox_factory, make_client, fake_time) -> None:
    sb = sandbox_factory(status_polls_before_ready=4, retry_after=None)
    client = make_client(sb)
    client.wait(client.kick_off(ExportRequest()), poll_interval=2, max_poll_interval=10)
    assert fake_time.sleeps == [2.0, 4.0, 8.0, 10.0]


def test_wait_times_out_with_the_status_url_and_few_polls(sandbox_factory, make_client, fake_time) -> None:
    sb = sandbox_factory(status_polls_before_ready=10_000, retry_after="10")
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest())
    with pytest.raises(ExportTimeoutError, match=r"still running.*resume") as info:
        client.wait(status_url, timeout=95)
    assert info.value.kind == "smart.bulk_export.timeout"
    assert info.value.context["status_url"] == status_url
    assert sb.status_polls <= 95 / 10 + 2
    assert sum(fake_time.sleeps) == pytest.approx(95)


def test_transient_status_faults_are_retried(sb, make_client, fake_time) -> None:
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest(resource_types=["Patient"]))
    sb.add_fault("status", status=503, headers={"Retry-After": "3"})
    sb.add_fault("status", status=500, body=operation_outcome("transient", "database busy"))
    sb.add_fault("status", status=429, headers={"Retry-After": "4"})
    manifest = client.wait(status_url)
    assert [f.type for f in manifest.output] == ["Patient"]
    assert 3.0 in fake_time.sleeps and 4.0 in fake_time.sleeps


def test_transient_status_faults_give_up_after_the_retries(sb, make_client) -> None:
    client = make_client(sb, attempts=2)
    status_url = client.kick_off(ExportRequest())
    sb.add_fault("status", status=503, times=3)
    with pytest.raises(BulkExportError, match=r"kept failing.*after 3 attempts"):
        client.poll(status_url)


def test_a_failed_export_is_fatal_with_its_diagnostics(sb, make_client) -> None:
    sb.fail_next_export("disk full on the export server")
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest())
    with pytest.raises(BulkExportError, match="disk full on the export server") as info:
        client.wait(status_url)
    assert info.value.status == 500
    assert info.value.context["status_url"] == status_url


def test_a_non_transient_status_error_is_fatal_at_once(sb, make_client, fake_time) -> None:
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest())
    sb.add_fault("status", status=400, body=operation_outcome("invalid", "bad job"))
    with pytest.raises(BulkExportError, match=r"HTTP 400.*bad job"):
        client.poll(status_url)
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("not_json", "not JSON"), ("no_output", "no 'output' list"), ("bad_url", "not http(s)")],
)
def test_malformed_manifests_are_fatal(sb, make_client, kind: str, fragment: str) -> None:
    sb.malform_next_manifest(kind)
    client = make_client(sb)
    with pytest.raises(BulkExportError, match="manifest is malformed") as info:
        client.wait(client.kick_off(ExportRequest()))
    assert fragment in str(info.value)


def test_paged_manifest_is_followed_and_merged(sandbox_factory, make_client, fake_time, tmp_path) -> None:
    sb = sandbox_factory(manifest_page_size=1, page_poll_202=True, resources_per_file=15)
    client = make_client(sb)
    manifest = client.wait(client.kick_off(ExportRequest()))
    # 20 Patients, 100 Observations, 40 Conditions, 40 Encounters at 15 per file
    assert len(manifest.output) == 2 + 7 + 3 + 3
    assert len({f.url for f in manifest.output}) == len(manifest.output)
    assert sum(1 for r in sb.requests_log if "page=" in r["query"]) >= 2 * (len(manifest.output) - 1)
    report = client.download(manifest, tmp_path, DownloadOptions(max_concurrent_downloads=8))
    assert sum(f.lines for f in report.files if f.type == "Observation") == 100
    assert sorted(p.name for p in tmp_path.glob("Observation.*"))[-1] == "Observation.7.ndjson"


def test_cancel(sb, make_client) -> None:
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest())
    assert client.cancel(status_url) is True
    assert sb.requests_log[-1]["method"] == "DELETE" and sb.requests_log[-1]["authorization"] is True
    with pytest.raises(BulkExportError, match="no longer exists") as info:
        client.poll(status_url)
    assert info.value.status == 404
    assert client.cancel(status_url) is False


def test_cancel_error(sb, make_client) -> None:
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest())
    sb.add_fault("delete", status=403, body=operation_outcome("forbidden", "not yours"))
    with pytest.raises(BulkExportError, match="not yours"):
        client.cancel(status_url)


def test_a_fresh_client_can_poll_a_status_url_it_did_not_kick_off(sb, make_client) -> None:
    # The Airflow trigger re-creates the client from the connection and only knows the status URL.
    status_url = make_client(sb).kick_off(ExportRequest())
    other = make_client(sb)
    assert other.poll(status_url).state == "in_progress"
    assert sb.requests_log[-1]["authorization"] is True


def test_status_is_the_cheap_poll_without_manifest_pages(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(status_polls_before_ready=1, manifest_page_size=2)
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest())
    assert client.status(status_url).state == "in_progress"
    before = len(sb.requests_log)
    done = client.status(status_url)
    assert done.complete and done.manifest is None
    assert len(sb.requests_log) == before + 1  # the status URL only: no manifest page was read
    assert client.poll(status_url).manifest is not None
