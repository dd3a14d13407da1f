"""The destination under attack: racing attempts, a frozen attempt waking up, what a dead try left."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from airflow_provider_smart.bulk import BulkExportError, ExportManifest, ExportRequest, ExportWorkflow
from airflow_provider_smart.bulk.storage import LEASE_FILE, DestinationLease

REQUEST = ExportRequest(resource_types=["Patient"])


def ndjson(tag: str, n: int) -> bytes:
    return b"".join(json.dumps({"resourceType": "Patient", "id": f"{tag}-{i}"}).encode() + b"\n" for i in range(n))


def test_attempts_racing_for_one_destination_never_both_hold_the_lease(tmp_path) -> None:
    for round_ in range(40):
        dest = tmp_path / str(round_)
        dest.mkdir()
        if round_ % 2:  # half the rounds race to take over a stale lease rather than a free one
            (dest / LEASE_FILE).write_text(json.dumps({"owner": "dead", "attempt": "dead", "heartbeat": 0}))
        gate = threading.Barrier(4)
        holders: list[DestinationLease] = []

        def race(
            n: int, dest: Any = dest, gate: threading.Barrier = gate, holders: list[DestinationLease] = holders
        ) -> None:
            lease = DestinationLease(dest, f"attempt-{n}")
            gate.wait()
            try:
                lease.acquire()
            except BulkExportError:
                return
            holders.append(lease)

        threads = [threading.Thread(target=race, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        for lease in holders:
            lease._stop.set()
        assert len(holders) == 1, f"round {round_}: {len(holders)} attempts hold the lease"


def test_a_frozen_attempt_that_lost_its_lease_renames_nothing(hostile, plain_client, tmp_path) -> None:
    hostile.files["a1"] = hostile.Body(ndjson("new", 3))
    client = plain_client(hostile)
    frozen = DestinationLease(tmp_path, "frozen-run")
    frozen.acquire()
    frozen._stop.set()  # frozen: no heartbeat any more
    lease = json.loads((tmp_path / LEASE_FILE).read_text())
    lease["heartbeat"] -= 3600
    (tmp_path / LEASE_FILE).write_text(json.dumps(lease))
    owner = DestinationLease(tmp_path, "new-owner")
    owner.acquire()  # takes the stale lease over
    try:
        manifest = ExportManifest.from_json(hostile.default_manifest([hostile.entry("a1")]), hostile.status_url)
        with pytest.raises(BulkExportError, match="taken over by new-owner"):
            client.download(manifest, tmp_path, lease=frozen)  # it wakes up and finishes its download
        assert not (tmp_path / "Patient.1.ndjson").exists()  # the new owner decides what lands there
        assert not list(tmp_path.glob(".*.part"))
        assert json.loads((tmp_path / LEASE_FILE).read_text())["owner"] == "new-owner"
    finally:
        owner.release()


def test_the_next_try_sweeps_what_a_dead_try_left(hostile, plain_client, tmp_path, caplog) -> None:
    hostile.files["a1"] = hostile.Body(ndjson("a", 3))
    client = plain_client(hostile)
    (tmp_path / "error").mkdir()
    left = [
        tmp_path / ".Patient.1.ndjson.deadhost-1-abcd1234.part",
        tmp_path / ".Patient.7.ndjson.deadhost-1-abcd1234.part",
        tmp_path / "error" / ".OperationOutcome.1.ndjson.deadhost-1-abcd1234.part",
        tmp_path / f".{LEASE_FILE}.deadhost-1-abcd1234.part",
        tmp_path / ".manifest.json.part",
    ]
    for path in left:
        path.write_bytes(b'{"resourceType":"Patient"}\n')
    workflow = ExportWorkflow(client, tmp_path, REQUEST.to_dict(), run_id="run-1", delete_on_success=False)
    started = workflow.start(REQUEST)
    workflow.land(started.status_url, client.poll(started.status_url).manifest)
    assert [p for p in left if p.exists()] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Patient.1.ndjson", "error", "manifest.json"]
    assert "temporary file(s) a dead attempt left" in caplog.text


def test_the_sweep_never_follows_a_symlink_out_of_the_destination(hostile, plain_client, tmp_path) -> None:
    hostile.files["a1"] = hostile.Body(ndjson("a", 3))
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / ".precious.part"
    precious.write_text("keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "error").symlink_to(outside)  # a hostile neighbour on a shared volume
    (dest / ".Patient.1.ndjson.x.part").symlink_to(precious)
    client = plain_client(hostile)
    workflow = ExportWorkflow(client, dest, REQUEST.to_dict(), run_id="run-1", delete_on_success=False)
    started = workflow.start(REQUEST)
    workflow.land(started.status_url, client.poll(started.status_url).manifest)
    assert precious.read_text() == "keep me"
    assert not (dest / ".Patient.1.ndjson.x.part").is_symlink()


@pytest.mark.parametrize("form", ["file://localhost{}", "file://{}", "file:{}", "FILE://LOCALHOST{}"])
def test_file_uris_land_where_they_say(hostile, plain_client, tmp_path, form: str, monkeypatch) -> None:
    from airflow_provider_smart.bulk.storage import as_destination

    monkeypatch.chdir(tmp_path)  # where a misread URI would land
    dest = tmp_path / "out dir"
    uri = form.format(str(dest).replace(" ", "%20"))
    assert as_destination(uri) == dest
    hostile.files["a1"] = hostile.Body(ndjson("a", 3))
    client = plain_client(hostile)
    manifest = ExportManifest.from_json(hostile.default_manifest([hostile.entry("a1")]), hostile.status_url)
    client.download(manifest, uri)
    assert (dest / "Patient.1.ndjson").read_bytes() == ndjson("a", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out dir"]


@pytest.mark.parametrize("uri", ["file:relative/dir", "file://otherhost/data", "file:///data?x=1"])
def test_file_uris_that_cannot_be_honoured_are_refused(uri: str) -> None:
    from airflow_provider_smart.bulk.storage import as_destination

    with pytest.raises(BulkExportError, match="not a local file URI"):
        as_destination(uri)
