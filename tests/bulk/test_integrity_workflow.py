"""Data integrity of whole exports against a hostile server: mixed exports, reordered manifests,
two attempts on one destination, another run's destination, sloppy manifests."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import pytest

from airflow_provider_smart.bulk import BulkExportError, ExportManifest, ExportRequest, ExportWorkflow, plan_batches
from airflow_provider_smart.bulk.storage import LEASE_FILE, DestinationLease

REQUEST = ExportRequest(resource_types=["Patient"])


def ndjson(tag: str, n: int) -> bytes:
    return b"".join(json.dumps({"resourceType": "Patient", "id": f"{tag}-{i}"}).encode() + b"\n" for i in range(n))


def flow(client: Any, dest: Any, run_id: str | None = "run-1", **kwargs: Any) -> ExportWorkflow:
    return ExportWorkflow(client, dest, REQUEST.to_dict(), run_id=run_id, **kwargs)


# -- item 4: a retry never mixes two exports ---------------------------------------------------------------
def test_a_retry_after_the_export_expired_does_not_keep_the_old_exports_files(hostile, plain_client, tmp_path) -> None:
    exports = {"1": ["a1", "b1"], "2": ["a2"]}
    hostile.manifest = lambda s: s.default_manifest([s.entry(n) for n in exports[s.current]])
    hostile.files.update(a1=hostile.Body(ndjson("a1", 5)), a2=hostile.Body(ndjson("a2", 2)))
    client = plain_client(hostile, attempts=0)
    first = flow(client, tmp_path)
    started = first.start(REQUEST)
    with pytest.raises(BulkExportError):  # b1 is missing (404): the first try fails after landing a1
        first.land(started.status_url, client.poll(started.status_url).manifest)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == ndjson("a1", 5)
    hostile.gone.add("1")  # the export expired before the retry
    retry = flow(client, tmp_path)
    again = retry.start(REQUEST)
    assert not again.reattached and again.status_url.endswith("/status/2")
    summary = retry.land(again.status_url, client.poll(again.status_url).manifest)
    assert sorted(p.name for p in tmp_path.glob("*.ndjson") if p.name != "log.ndjson") == ["Patient.1.ndjson"]
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == ndjson("a2", 2)
    assert [(e["lines"], e["bytes"]) for e in summary["output"]] == [(2, len(ndjson("a2", 2)))]
    assert hostile.served("a2") == 1


def test_files_of_another_export_with_the_same_names_are_replaced(hostile, plain_client, tmp_path) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("new", 3)))
    (tmp_path / "Patient.1.ndjson").write_bytes(ndjson("old", 7))  # no record: not this export's file
    client = plain_client(hostile)
    started = flow(client, tmp_path).start(REQUEST)
    summary = flow(client, tmp_path).land(started.status_url, client.poll(started.status_url).manifest)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == ndjson("new", 3)
    assert summary["output"][0]["lines"] == 3


def test_a_skipped_file_reports_what_is_on_disk(hostile, plain_client, tmp_path) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    hostile.manifest = lambda s: s.default_manifest([s.entry("a1", count=50)])  # a wrong count
    client = plain_client(hostile)
    workflow = flow(client, tmp_path, delete_on_success=False)
    started = workflow.start(REQUEST)
    manifest = client.poll(started.status_url).manifest
    client.download(manifest, tmp_path, ledger=workflow._ledger(started.status_url, manifest))
    summary = workflow.land(started.status_url, manifest)
    assert hostile.served("a1") == 2  # the second opinion only, no third download
    assert summary["output"][0]["lines"] == 3 and summary["count_mismatches"][0]["path"] == "Patient.1.ndjson"


# -- item 5: files are keyed by URL, not manifest order ----------------------------------------------------
def test_mapped_batches_over_a_manifest_reordered_on_every_read(hostile, plain_client, tmp_path) -> None:
    names = [f"f{i:02d}" for i in range(12)]
    for i, name in enumerate(names):
        hostile.files[name] = hostile.Body(ndjson(name, i + 1))

    def reordered(s: Any) -> dict[str, Any]:
        shift = s.manifest_reads * 5
        order = names[shift % 12 :] + names[: shift % 12]
        return s.default_manifest([s.entry(n, count=names.index(n) + 1) for n in order])

    hostile.manifest = reordered
    client = plain_client(hostile)
    status_url = client.kick_off(REQUEST)
    batches = json.loads(json.dumps(plan_batches(client.poll(status_url).manifest, status_url, max_batches=4)))
    assert all("keys" in b and not any("http" in k for k in b["keys"]) for b in batches)
    workflow = ExportWorkflow(client, tmp_path, {"status_url": status_url}, run_id="run-1")
    for item in batches:
        workflow.land_batch(item["status_url"], item["paths"], item["keys"])
    summary = workflow.land_completed(status_url)
    assert [hostile.served(n) for n in names] == [1] * 12  # each fetched once: none skipped, none twice
    contents = sorted(p.read_bytes() for p in tmp_path.glob("*.ndjson") if p.name != "log.ndjson")
    assert contents == sorted(ndjson(n, i + 1) for i, n in enumerate(names))
    assert sum(e["lines"] for e in summary["output"]) == sum(range(1, 13))
    assert hostile.count("DELETE") == 1


def test_the_same_url_listed_twice_is_downloaded_once(hostile, plain_client, tmp_path) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)), b1=hostile.Body(ndjson("b", 1)))
    hostile.manifest = lambda s: s.default_manifest([s.entry("a1"), s.entry("b1"), s.entry("a1")])
    client = plain_client(hostile)
    started = flow(client, tmp_path).start(REQUEST)
    summary = flow(client, tmp_path).land(started.status_url, client.poll(started.status_url).manifest)
    assert hostile.served("a1") == 1 and len(summary["output"]) == 2


def test_the_finishing_step_refuses_to_delete_when_a_file_did_not_land(hostile, plain_client, tmp_path) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    client = plain_client(hostile)
    started = flow(client, tmp_path).start(REQUEST)
    manifest = client.poll(started.status_url).manifest
    workflow = flow(client, tmp_path)
    ledger = workflow._ledger(started.status_url, manifest)
    with pytest.raises(BulkExportError, match=r"1 of 1 file.*not deleted"):
        workflow._verify_landed(started.status_url, manifest, ledger)


# -- item 6: two attempts on one destination ----------------------------------------------------------------
def test_a_zombie_writing_the_old_shared_part_name_cannot_corrupt_the_file(hostile, plain_client, tmp_path) -> None:
    full = ndjson("a", 30_000)  # ~1 MB: the first half fills a read chunk, so it is on disk at the pause
    resume, paused = threading.Event(), threading.Event()
    hostile.files["a1"] = hostile.Body(full, pause_at=len(full) // 2, resume=resume, paused=paused)
    client = plain_client(hostile)
    manifest = ExportManifest.from_json(hostile.default_manifest([hostile.entry("a1")]), hostile.status_url)
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(client.download(manifest, tmp_path)))
    worker.start()
    assert paused.wait(10)
    time.sleep(0.2)
    (tmp_path / ".Patient.1.ndjson.part").write_bytes(b"\0" * 10)  # another attempt, same file, same moment
    resume.set()
    worker.join(10)
    assert done and (tmp_path / "Patient.1.ndjson").read_bytes() == full


def test_a_destination_leased_by_a_live_attempt_is_refused_and_a_stale_lease_taken_over(
    hostile, plain_client, tmp_path
) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    client = plain_client(hostile)
    other = DestinationLease(tmp_path, "zombie-run")
    other.acquire()
    try:
        with pytest.raises(BulkExportError, match=r"in use by zombie-run.*pid"):
            flow(client, tmp_path).start(REQUEST)
        assert hostile.kickoffs == 0
    finally:
        other._stop.set()
    lease = json.loads((tmp_path / LEASE_FILE).read_text())
    assert {"owner", "host", "pid", "heartbeat"} <= set(lease)
    lease["heartbeat"] -= 3600  # the zombie died an hour ago
    (tmp_path / LEASE_FILE).write_text(json.dumps(lease))
    started = flow(client, tmp_path).start(REQUEST)
    flow(client, tmp_path).land(started.status_url, client.poll(started.status_url).manifest)
    assert not (tmp_path / LEASE_FILE).exists()  # released


def test_files_and_their_directory_are_fsynced_around_the_rename(hostile, plain_client, tmp_path, monkeypatch) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    synced: list[str] = []
    real_open, real_fsync = os.open, os.fsync
    names: dict[int, str] = {}

    def tracking_open(path: Any, flags: int, *args: Any) -> int:
        fd = real_open(path, flags, *args)
        names[fd] = os.fspath(path)
        return fd

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(names.get(fd, "?")), real_fsync(fd))[1])
    client = plain_client(hostile)
    manifest = ExportManifest.from_json(hostile.default_manifest([hostile.entry("a1")]), hostile.status_url)
    client.download(manifest, tmp_path)
    assert any(s.endswith(".part") for s in synced) and str(tmp_path) in synced


# -- item 8: another run's destination ---------------------------------------------------------------------
def test_a_destination_holding_another_runs_export_is_refused(hostile, plain_client, tmp_path) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    client = plain_client(hostile)
    yesterday = flow(client, tmp_path, run_id="scheduled__2024-05-01")
    started = yesterday.start(REQUEST)
    summary = yesterday.land(started.status_url, client.poll(started.status_url).manifest)
    assert summary["run_id"] == "scheduled__2024-05-01"
    assert flow(client, tmp_path, run_id="scheduled__2024-05-01").completed_summary() == summary  # its retry
    with pytest.raises(BulkExportError, match=r"another run \(scheduled__2024-05-01\).*template it.*\{\{ ds \}\}"):
        flow(client, tmp_path, run_id="scheduled__2024-05-02").completed_summary()


def test_an_unfinished_export_of_another_run_is_adopted_then_owned(hostile, plain_client, tmp_path, caplog) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    client = plain_client(hostile)
    flow(client, tmp_path, run_id="r1").start(REQUEST)
    with caplog.at_level(logging.WARNING, "airflow_provider_smart"):
        started = flow(client, tmp_path, run_id="r2").start(REQUEST)  # r1 failed; r2 re-triggered it
    assert started.reattached and hostile.kickoffs == 1 and "Adopting the unfinished export run r1" in caplog.text
    summary = flow(client, tmp_path, run_id="r2").land(started.status_url, client.poll(started.status_url).manifest)
    assert summary["run_id"] == "r2"
    with pytest.raises(BulkExportError, match=r"another run \(r2\)"):
        flow(client, tmp_path, run_id="r1").completed_summary()


# -- item 9: sloppy manifests ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["yesterday", "2024-05-01", 1714521600, "2024-05-01T00:00:00"])
def test_a_transaction_time_that_is_not_an_instant_is_rejected(hostile, plain_client, tmp_path, bad: Any) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    hostile.transaction_time = bad
    client = plain_client(hostile)
    started = flow(client, tmp_path).start(REQUEST)
    with pytest.raises(BulkExportError, match="not a FHIR instant"):
        flow(client, tmp_path).land(started.status_url, client.poll(started.status_url).manifest)
    assert not (tmp_path / "manifest.json").exists() and hostile.count("DELETE") == 0


def test_a_manifest_without_transaction_time_warns(hostile, plain_client, tmp_path, caplog) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    hostile.transaction_time = None
    client = plain_client(hostile)
    started = flow(client, tmp_path).start(REQUEST)
    with caplog.at_level(logging.WARNING, "airflow_provider_smart"):
        flow(client, tmp_path).land(started.status_url, client.poll(started.status_url).manifest)
    assert "no transactionTime" in caplog.text and "export everything again" in caplog.text


@pytest.mark.parametrize("status", [404, 405])
def test_a_refused_delete_after_landing_is_a_warning(hostile, plain_client, tmp_path, caplog, status: int) -> None:
    hostile.files.update(a1=hostile.Body(ndjson("a", 3)))
    hostile.delete_status = status
    client = plain_client(hostile)
    started = flow(client, tmp_path).start(REQUEST)
    with caplog.at_level(logging.WARNING, "airflow_provider_smart"):
        summary = flow(client, tmp_path).land(started.status_url, client.poll(started.status_url).manifest)
    assert summary["output"][0]["lines"] == 3 and (tmp_path / "manifest.json").exists()
    assert hostile.count("DELETE") == 1 and "WARNING" in caplog.text


def test_an_unwritable_destination_is_detected_before_kick_off(hostile, plain_client, tmp_path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    client = plain_client(hostile)
    with pytest.raises(BulkExportError, match=r"Cannot write to the destination.*nothing was started"):
        flow(client, tmp_path / "a-file" / "export").start(REQUEST)
    assert hostile.kickoffs == 0
