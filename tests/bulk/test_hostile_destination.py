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


# -- adoption and recorded state: an export's identity includes its server and connection -----------------
def flow(client: Any, dest: Any, run_id: str = "manual__1", connection: str = "smart_a") -> ExportWorkflow:
    return ExportWorkflow(client, dest, REQUEST.to_dict(), run_id=run_id, connection=connection)


def test_another_servers_dag_never_adopts_an_export(hostile, another_hostile, plain_client, tmp_path) -> None:
    other = another_hostile
    hostile.files["a1"] = other.files["a1"] = hostile.Body(ndjson("a", 3))
    flow(plain_client(hostile), tmp_path).start(REQUEST)  # DAG 1 on server A: kicked off, then failed
    with pytest.raises(BulkExportError, match="another export in progress"):
        flow(plain_client(other), tmp_path).start(REQUEST)  # DAG 2 on server B, same run id and destination
    assert other.kickoffs == 0 and hostile.count("GET", "/fhir/status") == 0  # nothing went to A


def test_another_connections_dag_never_reuses_a_summary(hostile, plain_client, tmp_path) -> None:
    hostile.files["a1"] = hostile.Body(ndjson("a", 3))
    client = plain_client(hostile)
    first = flow(client, tmp_path, connection="smart_a")
    started = first.start(REQUEST)
    first.land(started.status_url, client.poll(started.status_url).manifest)
    assert flow(client, tmp_path, connection="smart_a").completed_summary() is not None  # its own retry
    with pytest.raises(BulkExportError, match="completed export with other parameters"):
        flow(client, tmp_path, connection="smart_b").completed_summary()


def test_a_recorded_status_url_on_an_untrusted_origin_is_never_polled(
    hostile, another_hostile, plain_client, tmp_path
) -> None:
    attacker = another_hostile
    hostile.files["a1"] = hostile.Body(ndjson("a", 3))
    client = plain_client(hostile)
    mine = flow(client, tmp_path)
    # Someone with write access to the shared bucket rewrites the record to point at their server.
    state = {"status_url": attacker.status_url, "fingerprint": mine.fingerprint, "run_id": "manual__1"}
    (tmp_path / ".smart-export.json").write_text(json.dumps({**state, "server": mine.server}))
    started = mine.start(REQUEST)
    assert attacker.requests == [] and hostile.kickoffs == 1 and not started.reattached
    assert not client.transport.trusts(attacker.status_url)


def test_a_record_from_before_server_and_connection_counted_still_resumes(hostile, plain_client, tmp_path) -> None:
    """Guard: an export in flight across the upgrade re-attaches (its status URL is on our server)."""
    from airflow_provider_smart.bulk.workflow import fingerprint

    client = plain_client(hostile)
    old = {"status_url": hostile.status_url, "fingerprint": fingerprint(REQUEST.to_dict()), "run_id": "manual__1"}
    (tmp_path / ".smart-export.json").write_text(json.dumps(old))
    assert flow(client, tmp_path).start(REQUEST).reattached and hostile.kickoffs == 0
