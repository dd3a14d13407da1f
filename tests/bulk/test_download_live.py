"""Downloads against the real sandbox server: checks, retries, token rules, redirects, destinations."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from airflow_provider_smart.bulk import BulkDownloadError, DownloadOptions, ExportRequest, plan_files
from airflow_provider_smart.bulk.download import CHUNK_SIZE


def export(client, **kwargs):
    return client.wait(client.kick_off(ExportRequest(**kwargs)))


def file_requests(sb) -> list[dict]:
    return [r for r in sb.requests_log if r["route"] == "file"]


def test_download_layout_counts_and_report(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    manifest = export(client)
    done = []
    report = client.download(manifest, tmp_path, on_file_done=done.append)
    assert sorted(os.listdir(tmp_path)) == [
        "Condition.1.ndjson",
        "Encounter.1.ndjson",
        "Observation.1.ndjson",
        "Patient.1.ndjson",
    ]
    assert sorted(f.path for f in done) == sorted(f.path for f in report.files)
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    entry = next(f for f in data["files"] if f["type"] == "Patient")
    assert entry["kind"] == "output" and entry["count"] == entry["lines"] == 20 and not entry["skipped"]
    assert entry["bytes"] == (tmp_path / "Patient.1.ndjson").stat().st_size
    assert entry["path"] == str(tmp_path / "Patient.1.ndjson")
    assert data["totals"]["lines"] == 200 and data["totals"]["downloaded"] == 4
    assert data["error_issues"] == []
    for line in (tmp_path / "Observation.1.ndjson").read_bytes().splitlines():
        assert json.loads(line)["resourceType"] == "Observation"
    assert all(r["headers"]["accept"] == "application/fhir+ndjson" for r in file_requests(sb))


def test_gzip_is_requested_and_decoded(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(gzip=True, patients=300)
    client = make_client(sb)
    report = client.download(export(client, resource_types=["Observation"]), tmp_path)
    assert all(r["headers"]["accept-encoding"] == "gzip" for r in file_requests(sb))
    job = next(iter(sb._bulk.jobs.values()))
    served = job.files["Observation.1.ndjson"]
    assert gzip.decompress(served.gz_path.read_bytes()) == (tmp_path / "Observation.1.ndjson").read_bytes()
    assert report.files[0].lines == 1000


def test_connection_cut_mid_file_is_retried(sb, make_client, tmp_path, fake_time) -> None:
    client = make_client(sb)
    manifest = export(client, resource_types=["Observation"])
    fake_time.sleeps.clear()
    sb.add_fault("file", after_bytes=5000)
    report = client.download(manifest, tmp_path)
    assert report.files[0].attempts == 2 and report.files[0].lines == 100
    assert len(fake_time.sleeps) == 1
    assert not list(tmp_path.glob(".*.part"))


def test_5xx_and_429_on_files_are_retried_with_retry_after(sb, make_client, tmp_path, fake_time) -> None:
    client = make_client(sb)
    manifest = export(client, resource_types=["Patient"])
    fake_time.sleeps.clear()
    sb.add_fault("file", status=503, headers={"Retry-After": "9"})
    sb.add_fault("file", status=429, headers={"Retry-After": "2"})
    report = client.download(manifest, tmp_path)
    assert report.files[0].attempts == 3
    assert fake_time.sleeps == [9.0, 2.0]


def test_a_file_that_keeps_failing_fails_alone(sb, make_client, tmp_path) -> None:
    client = make_client(sb, attempts=1)
    manifest = export(client, resource_types=["Patient", "Condition"])
    bad = next(f.url for f in manifest.output if f.type == "Condition")
    sb.add_fault("file", after_bytes=10, times=2, path_contains=bad.rsplit("/", 1)[-1])
    with pytest.raises(BulkDownloadError) as info:
        client.download(manifest, tmp_path, DownloadOptions(max_concurrent_downloads=1))
    message = str(info.value)
    assert "1 of 2 file(s) failed" in message and "gave up after 2 attempts" in message
    failed = info.value.context["failures"]
    assert len(failed) == 1 and failed[0]["url"] == bad
    # The file that succeeded stays; the failed one leaves nothing behind.
    assert len(list(tmp_path.glob("*.ndjson"))) == 1
    assert not list(tmp_path.glob(".*.part"))
    assert len(info.value.report.files) == 1


def test_fatal_file_errors_are_not_retried(sb, make_client, tmp_path, fake_time) -> None:
    client = make_client(sb)
    manifest = export(client)
    fake_time.sleeps.clear()
    sb.add_fault("file", status=404, times=2)
    with pytest.raises(BulkDownloadError, match="2 of 4 file") as info:
        client.download(manifest, tmp_path)
    assert "HTTP 404" in str(info.value) and "kick off a new export" in str(info.value)
    assert fake_time.sleeps == []
    assert len(list(tmp_path.glob("*.ndjson"))) == 2
    assert len(file_requests(sb)) == 4


def test_count_mismatch_fails_the_file_only_with_strict_counts(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    manifest = export(client, resource_types=["Patient"])
    manifest.output[0].count = 21
    with pytest.raises(BulkDownloadError, match=r"20 resources but the manifest says 21.*strict_counts=False"):
        client.download(manifest, tmp_path, DownloadOptions(strict_counts=True))
    assert list(tmp_path.iterdir()) == []
    report = client.download(manifest, tmp_path)  # by default: downloaded twice, kept, reported
    assert report.files[0].lines == 20 and report.files[0].count_mismatch
    assert len(file_requests(sb)) == 4
    report = client.download(manifest, tmp_path / "x", DownloadOptions(check_counts=False))
    assert report.files[0].lines == 20 and not report.files[0].count_mismatch


def test_resource_type_mismatch_fails_the_file(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    manifest = export(client, resource_types=["Patient"])
    manifest.output[0].type = "Condition"
    with pytest.raises(BulkDownloadError, match=r"resourceType 'Patient'.*'Condition'"):
        client.download(manifest, tmp_path, DownloadOptions(check_resource_types=True))
    report = client.download(manifest, tmp_path)  # the check is opt-in
    assert report.files[0].path.endswith("Condition.1.ndjson")


def test_token_expired_mid_download_is_renewed_once(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    manifest = export(client)
    minted = sb.token_requests
    sb.expire_tokens()
    report = client.download(manifest, tmp_path, DownloadOptions(max_concurrent_downloads=4))
    assert report.totals()["lines"] == 200
    assert sb.token_requests == minted + 1  # concurrent 401s share one renewal
    statuses = [r["status"] for r in file_requests(sb)]
    assert 401 in statuses and statuses.count(200) == 4


def test_no_token_when_the_manifest_does_not_require_it(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(requires_access_token=False)
    client = make_client(sb)
    manifest = export(client)
    assert manifest.requires_access_token is False
    client.download(manifest, tmp_path)
    assert file_requests(sb) and not any(r["authorization"] for r in file_requests(sb))


def test_no_token_to_a_foreign_file_origin(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(file_origin="localhost")  # files on http://localhost:PORT, FHIR on 127.0.0.1
    client = make_client(sb)
    manifest = export(client, resource_types=["Patient"])
    assert manifest.output[0].url.startswith("http://localhost:")
    with pytest.raises(BulkDownloadError, match="HTTP 401"):
        client.download(manifest, tmp_path)
    assert not any(r["authorization"] for r in file_requests(sb))


def test_allowed_hosts_let_the_token_go_to_a_file_origin(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(file_origin="localhost")
    client = make_client(sb, allowed_hosts=[f"localhost:{sb.port}"])
    report = client.download(export(client, resource_types=["Patient"]), tmp_path)
    assert report.files[0].lines == 20
    assert all(r["authorization"] for r in file_requests(sb))


def test_redirect_to_another_origin_drops_the_token(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(redirect_files=True)  # 307 to a pre-signed URL on http://localhost:PORT
    client = make_client(sb)
    report = client.download(export(client), tmp_path)
    assert report.totals()["lines"] == 200
    hops = file_requests(sb)
    first = [r for r in hops if r["path"].startswith("/fhir/bulkfiles/")]
    second = [r for r in hops if r["path"].startswith("/presigned/")]
    assert len(first) == len(second) == 4
    assert all(r["authorization"] and r["status"] == 307 for r in first)
    assert all(not r["authorization"] and r["status"] == 200 for r in second)


def test_path_traversal_in_the_manifest_stays_inside_the_destination(sb, make_client, tmp_path) -> None:
    sb.malform_next_manifest("path_traversal")
    client = make_client(sb)
    manifest = export(client, resource_types=["Patient"])
    evil = next(f for f in manifest.output if f.type == "../../evil")
    assert evil.url.endswith("/../../x")
    assert [e["path"] for e in plan_files(manifest)] == ["Patient.1.ndjson", "invalid_evil.1.ndjson"]
    destination = tmp_path / "a" / "b" / "dest"
    with pytest.raises(BulkDownloadError, match="invalid_evil"):
        client.download(manifest, destination)
    everything = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert everything == [os.path.join("a", "b", "dest", "Patient.1.ndjson")]


def test_error_files_are_classified(sb, make_client, tmp_path) -> None:
    sb.add_error_file("error")
    client = make_client(sb)
    manifest = export(client, resource_types=["Patient"])
    report = client.download(manifest, tmp_path)
    assert (tmp_path / "error" / "OperationOutcome.1.ndjson").exists()
    assert [i["severity"] for i in report.error_issues] == ["error", "error"]
    assert {i["code"] for i in report.error_issues} == {"processing", "exception"}
    assert "could not be exported" in report.error_issues[0]["diagnostics"]
    assert report.to_dict()["totals"]["error_issues"] == 2


def test_warning_files_are_only_warnings(sb, make_client, tmp_path) -> None:
    sb.add_error_file("warning")
    client = make_client(sb)
    report = client.download(export(client, resource_types=["Patient"]), tmp_path)
    assert report.error_issues == [] and len(report.warnings) == 2


def test_deleted_files_go_to_their_folder(sb, make_client, tmp_path) -> None:
    sb.delete_resource("Observation", "obs-0001-001")
    client = make_client(sb)
    manifest = export(client, resource_types=["Observation"], since="2000-01-01T00:00:00Z")
    assert len(manifest.deleted) == 1
    report = client.download(manifest, tmp_path)
    deleted = next(f for f in report.files if f.kind == "deleted")
    assert deleted.path == str(tmp_path / "deleted" / "Bundle.1.ndjson") and deleted.lines == 1


def test_skip_existing_on_a_second_download(sb, make_client, tmp_path) -> None:
    client = make_client(sb)
    manifest = export(client)
    client.download(manifest, tmp_path)
    before = len(file_requests(sb))
    (tmp_path / ".Patient.1.ndjson.part").write_bytes(b"left over by a crash")
    report = client.download(manifest, tmp_path)
    assert len(file_requests(sb)) == before
    assert all(f.skipped for f in report.files)
    assert report.totals()["skipped"] == 4 and report.totals()["lines"] == 200
    assert report.files[0].bytes == (tmp_path / "Patient.1.ndjson").stat().st_size
    (tmp_path / "Patient.1.ndjson").unlink()
    report = client.download(manifest, tmp_path)
    assert [f.type for f in report.files if not f.skipped] == ["Patient"]
    # Temporary files are per attempt now: another attempt's leftover is neither used nor renamed.
    assert (tmp_path / "Patient.1.ndjson").read_bytes().count(b"\n") == 20
    assert not [p for p in tmp_path.glob(".*.part") if p.name != ".Patient.1.ndjson.part"]
    again = client.download(manifest, tmp_path, DownloadOptions(skip_existing=False))
    assert not any(f.skipped for f in again.files)


def test_batches_download_the_same_files_as_a_whole_download(sb, make_client, tmp_path) -> None:
    from airflow_provider_smart.bulk import batch

    client = make_client(sb)
    manifest = export(client)
    batches = batch(json.loads(json.dumps(plan_files(manifest))), max_batches=3)  # as through XCom
    for files in batches:
        client.download_batch(
            files,
            tmp_path / "batched",
            requires_access_token=True,
            status_url=manifest.status_url,
        )
    client.download(manifest, tmp_path / "whole")
    assert sorted(os.listdir(tmp_path / "batched")) == sorted(os.listdir(tmp_path / "whole"))
    assert client.download(manifest, tmp_path / "batched").totals()["skipped"] == 4


def test_object_storage_like_destination(sb, make_client, mem_path) -> None:
    sb.add_error_file("warning")
    client = make_client(sb)
    manifest = export(client)
    report = client.download(manifest, mem_path / "exports" / "run1")
    files = mem_path.files()
    assert sorted(files) == [
        "mem://bucket/exports/run1/Condition.1.ndjson",
        "mem://bucket/exports/run1/Encounter.1.ndjson",
        "mem://bucket/exports/run1/Observation.1.ndjson",
        "mem://bucket/exports/run1/Patient.1.ndjson",
        "mem://bucket/exports/run1/error/OperationOutcome.1.ndjson",
    ]
    assert files["mem://bucket/exports/run1/Patient.1.ndjson"].count(b"\n") == 20
    assert len(report.warnings) == 2
    skipped = client.download(manifest, mem_path / "exports" / "run1")
    assert all(f.skipped and f.bytes is None for f in skipped.files)  # MemPath has no stat()


def test_airflow_object_storage_path(sb, make_client, tmp_path) -> None:
    pytest.importorskip("airflow")
    from airflow_provider_smart.compat import ObjectStoragePath

    client = make_client(sb)
    destination = ObjectStoragePath(f"file://{tmp_path}/bulk-test")
    report = client.download(export(client, resource_types=["Patient"]), destination)
    target = destination / "Patient.1.ndjson"
    assert target.exists() and target.read_bytes().count(b"\n") == 20
    assert report.files[0].path == str(target)
    assert client.download(export(client, resource_types=["Patient"]), destination).files[0].skipped


def test_memory_stays_bounded_for_big_files(sandbox_factory, make_client, tmp_path, peak_memory) -> None:
    sb = sandbox_factory(patients=3000, resources_per_file=100_000, gzip=False)
    client = make_client(sb)
    manifest = export(client, resource_types=["Observation"])
    # Warm up the connection and imports so the measurement sees only the streaming.
    client.download(export(client, resource_types=["Patient"]), tmp_path / "warmup")
    report, peak = peak_memory(client.download, manifest, tmp_path)
    size = report.files[0].bytes
    assert size > 8 * CHUNK_SIZE
    assert peak < 4 * CHUNK_SIZE, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
