"""Vendor profiles against the sandbox behaving as each vendor is documented to (testing/vendor_quirks.py).

Each test names the behaviour it covers; the README's "Vendors" table lists the same behaviours and sources.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from airflow_provider_smart.auth.keys import public_jwks
from airflow_provider_smart.bulk import BulkExportError, ExportRequest, ExportWorkflow
from airflow_provider_smart.bulk.inflight import InFlightRegistry, MemoryRecords
from airflow_provider_smart.bulk.protocol import Response
from airflow_provider_smart.bulk.retry import RetryPolicy
from airflow_provider_smart.bulk.vendors import PROFILES, detect_profile, profile_named, resolve_profile
from airflow_provider_smart.exceptions import ExportWindowError, SmartConfigError
from airflow_provider_smart.testing.vendor_quirks import VENDOR_QUIRKS, VendorQuirks

FOUR = ["Patient", "Observation", "Condition", "Encounter"]
COUNTS = {"Patient": 20, "Observation": 100, "Condition": 40, "Encounter": 40}


def land(client: Any, destination: Any, request: ExportRequest, **kwargs: Any) -> dict[str, Any]:
    flow = ExportWorkflow(client, destination, request.to_dict(), **kwargs)
    started = flow.start(request)
    return flow.land(started.status_url, client.wait(started.status_url))


def landed_types(summary: dict[str, Any]) -> dict[str, int]:
    return {e["type"]: e["lines"] for e in summary["output"]}


def file_gets(sb: Any) -> list[str]:
    return [r["path"] for r in sb.requests_log if r["route"] == "file" and r["status"] == 200]


# -- detection --------------------------------------------------------------------------------------
@pytest.mark.parametrize("vendor", sorted(VENDOR_QUIRKS))
def test_each_vendor_is_detected_from_the_servers_metadata(sandbox_factory, make_client, vendor) -> None:
    sb = sandbox_factory(quirks=vendor)
    profile = resolve_profile("auto", session=make_client(sb).session, fhir_base_url=sb.url)
    assert profile.name == vendor


def test_detection_falls_back_to_the_smart_configuration_then_generic() -> None:
    assert detect_profile({}, {"token_endpoint": "https://authorization.cerner.com/tenants/x/token"}).name == "cerner"
    assert detect_profile(None, {"token_endpoint": "https://fhir.example/oauth2/token"}).name == "generic"
    assert detect_profile({"software": {"name": "Epic"}}, None).name == "epic"  # what cumulus-fhir-support reads
    assert detect_profile({"publisher": "Cerner"}, None).name == "cerner"


def test_a_vendor_named_in_the_connection_wins_and_an_unknown_name_is_refused() -> None:
    assert profile_named("Oracle").name == "cerner" and profile_named("auto") is None
    with pytest.raises(SmartConfigError, match="vendor 'nextgen' is unknown"):
        profile_named("nextgen")


# -- Medplum ------------------------------------------------------------------------------------------
def test_medplum_keeps_the_first_repeated_type_so_defaults_send_the_spec_form(
    sandbox_factory, make_client, tmp_path
) -> None:
    """With defaults, a four-type export from a server that keeps only the first repeated _type lands all four."""
    sb = sandbox_factory(quirks="medplum")
    summary = land(make_client(sb), tmp_path / "spec", ExportRequest(resource_types=FOUR))
    assert landed_types(summary) == COUNTS
    sent = [r["query"] for r in sb.requests_log if r["route"] == "kickoff"]
    assert "_type=Patient,Observation,Condition,Encounter" in sent[-1]
    # The old repeated form loses three types on this server: the test above can fail.
    repeated = land(make_client(sb, comma_join_repeats=False), tmp_path / "old", ExportRequest(resource_types=FOUR))
    assert landed_types(repeated) == {"Patient": 20}


def test_types_a_server_dropped_from_a_repeated_type_are_reported_not_silent(
    sandbox_factory, make_client, tmp_path
) -> None:
    """A server that keeps only the first repeated _type returns one type's files: the summary says so."""
    sb = sandbox_factory(quirks="medplum")
    summary = land(make_client(sb, comma_join_repeats=False), tmp_path / "old", ExportRequest(resource_types=FOUR))
    assert landed_types(summary) == {"Patient": 20}
    assert summary["types_without_files"] == ["Observation", "Condition", "Encounter"]
    assert {"parameter": "_type", "evidence": "observed: only the first of the repeated _type values came back"} in (
        summary["server_ignored"]
    )
    honest = land(make_client(sb), tmp_path / "spec", ExportRequest(resource_types=FOUR))
    assert honest["types_without_files"] == [] and not any(i["parameter"] == "_type" for i in honest["server_ignored"])


def test_which_kick_offs_send_type_repeated() -> None:
    from dataclasses import replace

    from airflow_provider_smart.bulk.requested import sends_repeated_types

    generic = PROFILES["generic"]
    assert not sends_repeated_types({"resource_types": FOUR}, generic)  # the spec's comma-joined GET
    assert sends_repeated_types({"resource_types": FOUR, "method": "POST"}, generic)  # one Parameters entry each
    assert sends_repeated_types({"resource_types": FOUR, "patients": ["Patient/1"]}, generic)  # auto -> POST
    assert sends_repeated_types({"resource_types": FOUR}, replace(generic, comma_join_repeats=False))
    assert sends_repeated_types({"resource_types": FOUR}, replace(generic, list_encoding="repeat"))


def test_types_the_server_returns_unasked_are_not_downloaded(sandbox_factory, make_client, tmp_path) -> None:
    """Never land what was not asked for: a server that ignores _type (Medplum without a working _type)."""
    sb = sandbox_factory(quirks=VendorQuirks(ignored_params=frozenset({"_type"})))
    summary = land(make_client(sb), tmp_path, ExportRequest(resource_types=["Patient"]))
    assert landed_types(summary) == {"Patient": 20}
    assert [d["type"] for d in summary["unrequested_types"]] == ["Condition", "Encounter", "Observation"]
    assert {"parameter": "_type", "evidence": "observed: the server returned types that were not requested"} in (
        summary["server_ignored"]
    )
    assert not any("Observation" in path for path in file_gets(sb))
    assert sorted(p.name for p in tmp_path.glob("*.ndjson") if p.name != "log.ndjson") == ["Patient.1.ndjson"]


def test_ignored_elements_are_reported_and_honoured_ones_are_not(sandbox_factory, make_client, tmp_path) -> None:
    request = ExportRequest(resource_types=["Patient"], elements=["id", "gender"])
    ignoring = sandbox_factory(quirks=VendorQuirks(ignored_params=frozenset({"_elements"})))
    summary = land(make_client(ignoring), tmp_path / "a", request)
    assert [i["parameter"] for i in summary["server_ignored"]] == ["_elements"]
    honouring = sandbox_factory()
    assert land(make_client(honouring), tmp_path / "b", request)["server_ignored"] == []


def test_medplum_profile_reports_documented_ignores_and_missing_deletions(
    sandbox_factory, make_client, tmp_path
) -> None:
    sb = sandbox_factory(quirks="medplum")
    request = ExportRequest(
        resource_types=["Observation"], type_filters=["Observation?status=final"], since="2000-01-01T00:00:00Z"
    )
    summary = land(make_client(sb, profile=PROFILES["medplum"]), tmp_path, request)
    assert {"parameter": "_typeFilter", "evidence": "documented for Medplum (vendor profile)"} in summary[
        "server_ignored"
    ]
    assert summary["deletions_not_reported"] is True and summary["vendor"] == "medplum"


def test_medplum_profile_uses_get_because_post_bodies_are_ignored(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(quirks="medplum")
    make_client(sb, profile=PROFILES["medplum"]).kick_off(ExportRequest(resource_types=FOUR, method="auto"))
    assert sb.kickoffs[-1]["method"] == "GET"


def test_a_retry_against_a_server_that_resigns_its_urls_downloads_nothing_twice(
    sandbox_factory, make_client, tmp_path
) -> None:
    sb = sandbox_factory(quirks="medplum", requires_access_token=False)
    request = ExportRequest(resource_types=FOUR)
    client = make_client(sb, attempts=1)
    flow = ExportWorkflow(client, tmp_path, request.to_dict())
    started = flow.start(request)
    manifest = client.wait(started.status_url)
    sb.add_fault("file", status=500, times=5, path_contains="Encounter")
    with pytest.raises(BulkExportError):
        flow.land(started.status_url, manifest)
    first = file_gets(sb)
    assert len(first) == 3  # three types landed before the failure
    retry = ExportWorkflow(make_client(sb), tmp_path, request.to_dict())
    again = retry.start(request)  # re-attaches; this manifest read signs every URL anew
    new_manifest = client.wait(again.status_url)
    assert {f.url for f in new_manifest.output}.isdisjoint({f.url for f in manifest.output})
    summary = retry.land(again.status_url, new_manifest)
    assert landed_types(summary) == COUNTS
    gets = file_gets(sb)
    assert len(gets) == 4 and len(set(gets)) == 4  # every file fetched once, in all


def test_expired_links_make_the_workflow_read_the_manifest_again(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(quirks="medplum", requires_access_token=False)
    client = make_client(sb)
    request = ExportRequest(resource_types=["Patient", "Condition"])
    flow = ExportWorkflow(client, tmp_path, request.to_dict())
    started = flow.start(request)
    manifest = client.wait(started.status_url)
    sb.expire_signed_urls()  # every link in hand now answers 403, as an expired S3 link does
    summary = flow.land(started.status_url, manifest)
    assert landed_types(summary) == {"Patient": 20, "Condition": 40}
    refused = [r for r in sb.requests_log if r["route"] == "file" and r["status"] == 403]
    assert len(refused) == 2 and len(file_gets(sb)) == 2


def test_medplum_refuses_read_scopes_and_the_error_says_which_scope_was_granted(
    sandbox_factory, make_client, signing_key
) -> None:
    jwks = public_jwks(signing_key, kid="k1", alg="ES384")
    sb = sandbox_factory(quirks="medplum", clients={"reader": {"jwks": jwks, "scopes": "system/*.read"}})
    client = make_client(sb, client_id="reader", scope="system/*.read")
    with pytest.raises(BulkExportError) as caught:
        client.kick_off(ExportRequest(resource_types=["Patient"]))
    message = str(caught.value)
    assert "HTTP 403" in message and "granted scope 'system/*.read'" in message and "system/*.cruds" in message
    assert caught.value.context["granted_scope"] == "system/*.read"


# -- Oracle Health / Cerner --------------------------------------------------------------------------
def test_cerner_rejects_repeated_parameters_and_its_profile_comma_joins_typefilter(
    sandbox_factory, make_client, tmp_path
) -> None:
    sb = sandbox_factory(quirks="cerner")
    filters = ["Condition?code=http://snomed.info/sct|44054006,http://snomed.info/sct|38341003", "Condition?_id=x"]
    request = ExportRequest(resource_types=["Condition"], type_filters=filters)
    with pytest.raises(BulkExportError, match="Repeated parameter _typeFilter is not supported"):
        make_client(sb).kick_off(request)  # the generic profile sends one _typeFilter per query (STU3)
    summary = land(make_client(sb, profile=PROFILES["cerner"]), tmp_path / "cerner", request)
    sent = sb.kickoffs[-1]["params"]["_typeFilter"]
    assert len(sent) == 1 and sent[0].count(",") == 1 and "44054006%2Chttp" in sent[0]  # the query's own comma
    reference = land(make_client(sandbox_factory()), tmp_path / "spec", request)
    assert landed_types(summary) == landed_types(reference) and 0 < summary["output"][0]["lines"] < 40


def test_cerner_403_names_the_per_type_read_scopes(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(quirks="cerner")
    sb.add_fault("kickoff", status=403)
    with pytest.raises(BulkExportError) as caught:
        make_client(sb, profile=PROFILES["cerner"]).kick_off(ExportRequest(resource_types=["Patient", "Encounter"]))
    assert "system/Patient.read system/Encounter.read" in str(caught.value)
    assert "granted scope 'system/*.rs'" in str(caught.value)


def test_cerner_retry_after_of_hours_is_capped_and_its_cadence_is_slow() -> None:
    cerner = PROFILES["cerner"]
    answer = Response(202, {"Retry-After": str(5 * 3600)}, b"", "https://x")
    assert cerner.retry_after(answer, RetryPolicy(max_retry_after=6 * 3600)) == 1800
    assert cerner.poll_delay(None, 1, 2.0, 3600) == 600  # polls every 10 minutes at the fastest


def test_422_and_operation_outcome_text_are_shown(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(quirks="cerner")
    outcome = sb.operation_outcome("not-supported", "The _typeFilter search parameter 'foo' is unsupported")
    sb.add_fault("kickoff", status=422, body=outcome)
    with pytest.raises(BulkExportError) as caught:
        make_client(sb, profile=PROFILES["cerner"]).kick_off(ExportRequest(resource_types=["Patient"]))
    assert "HTTP 422" in str(caught.value) and "parameter 'foo' is unsupported" in str(caught.value)
    assert "Oracle/Cerner answer 422" in str(caught.value)


# -- Microsoft ----------------------------------------------------------------------------------------
def test_microsoft_opaque_500_shows_the_operation_outcome_text(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(quirks="microsoft")
    text = "The export storage account is not configured or the service lacks the Storage Blob Data Contributor role"
    sb.add_fault("kickoff", status=500, body=sb.operation_outcome("exception", text), times=10)
    with pytest.raises(BulkExportError) as caught:
        make_client(sb, profile=PROFILES["microsoft"], attempts=1).kick_off(ExportRequest(resource_types=["Patient"]))
    assert "HTTP 500" in str(caught.value) and "Storage Blob Data Contributor" in str(caught.value)


# -- Epic ---------------------------------------------------------------------------------------------
def test_epic_gets_its_client_id_header(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(quirks=VENDOR_QUIRKS["epic"].copy(request_window=None, single_slot=False))
    with pytest.raises(BulkExportError, match="Epic-Client-ID header is required"):
        make_client(sb).kick_off(ExportRequest(level="group", group_id="all"))
    status_url = make_client(sb, profile=PROFILES["epic"]).kick_off(ExportRequest(level="group", group_id="all"))
    assert sb.kickoffs[-1]["headers"]["epic-client-id"] == "c1"
    make_client(sb, profile=PROFILES["epic"]).poll(status_url)
    assert sb.requests_log[-1]["headers"]["epic-client-id"] == "c1"  # on status requests too


def test_epic_too_recently_says_when_the_export_may_run_again(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(quirks=VENDOR_QUIRKS["epic"].copy(single_slot=False))
    client = make_client(sb, profile=PROFILES["epic"])
    request = ExportRequest(level="group", group_id="all", resource_types=["Patient"])
    client.cancel(client.kick_off(request))
    with pytest.raises(ExportWindowError) as caught:
        client.kick_off(request)
    assert "too recently" in str(caught.value) and "24 h window" in str(caught.value)
    assert caught.value.not_before is not None and caught.value.not_before > 23 * 3600 + time.time()


def test_single_slot_reattaches_to_our_export_from_another_destination(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(quirks=VENDOR_QUIRKS["epic"].copy(request_window=None))
    registry = InFlightRegistry(MemoryRecords(), sb.url, "c1")
    request = ExportRequest(level="group", group_id="all", resource_types=["Patient"])

    def flow(name: str, req: ExportRequest = request) -> ExportWorkflow:
        client = make_client(sb, profile=PROFILES["epic"])
        return ExportWorkflow(client, tmp_path / name, req.to_dict(), registry=registry)

    first = flow("day1").start(request)
    again = flow("day1-retry").start(request)  # a new destination: the registry, not the folder, knows it
    assert again.reattached and again.status_url == first.status_url
    assert sum(1 for k in sb.kickoffs if k["status"] == 202) == 1
    other = ExportRequest(level="group", group_id="all", resource_types=["Condition"])
    with pytest.raises(BulkExportError, match=r"holds the slot.*airflow-smart cancel-export"):
        flow("other", other).start(other)
    summary = flow("day1-retry").land(again.status_url, make_client(sb).wait(again.status_url))
    assert landed_types(summary) == {"Patient": 20} and registry.records() == []
    assert not flow("other", other).start(other).reattached  # the slot is free once ours landed


def test_without_the_registry_a_busy_single_slot_server_says_how_to_cancel(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(quirks="cerner")
    client = make_client(sb, profile=PROFILES["cerner"], attempts=1)
    client.kick_off(ExportRequest(resource_types=["Patient"]))
    with pytest.raises(BulkExportError) as caught:
        client.kick_off(ExportRequest(resource_types=["Condition"]))
    assert "HTTP 429" in str(caught.value) and "Only one bulk export request" in str(caught.value)
    assert "airflow-smart cancel-export" in str(caught.value)


def test_epic_and_athena_poll_at_most_once_a_minute(sandbox_factory, make_client, fake_time) -> None:
    sb = sandbox_factory(status_polls_before_ready=2, retry_after=1)
    for name in ("epic", "athena"):
        client = make_client(sb, profile=PROFILES[name])
        fake_time.sleeps.clear()
        client.wait(client.kick_off(ExportRequest(resource_types=["Patient"])), poll_interval=1)
        assert fake_time.sleeps and min(fake_time.sleeps) >= 60


# -- HAPI ---------------------------------------------------------------------------------------------
def test_hapi_reuses_a_cached_job_unless_told_no_cache(sandbox_factory, make_client) -> None:
    sb = sandbox_factory(quirks="hapi")
    request = ExportRequest(resource_types=["Patient"])
    plain = make_client(sb)
    assert plain.kick_off(request) == plain.kick_off(request)  # the server's cache: an old job comes back
    hapi = make_client(sb, profile=PROFILES["hapi"])
    assert hapi.kick_off(request) != hapi.kick_off(request)
    assert sb.kickoffs[-1]["headers"]["cache-control"] == "no-cache"


# -- eClinicalWorks -------------------------------------------------------------------------------------
def test_ecw_needs_group_read_and_honours_long_retry_after() -> None:
    ecw = PROFILES["ecw"]
    assert ecw.required_scopes(ExportRequest(level="group", group_id="g")) == ["system/Group.read"]
    answer = Response(202, {"Retry-After": "7200"}, b"", "https://x")
    assert ecw.retry_after(answer, RetryPolicy(max_retry_after=3 * 3600)) == 7200


def test_every_profile_documents_its_quirks() -> None:
    from airflow_provider_smart.bulk.vendors import FEATURES

    for name, profile in PROFILES.items():
        assert name == "generic" or profile.sources, name
        assert profile.ignores <= set(FEATURES), name  # only features the summary knows how to report
        json.dumps(dict(profile.sources))


def test_a_mapped_batch_renews_expired_links_too(sandbox_factory, make_client, tmp_path) -> None:
    from airflow_provider_smart.bulk import plan_batches

    sb = sandbox_factory(quirks="medplum", requires_access_token=False)
    client = make_client(sb)
    status_url = client.kick_off(ExportRequest(resource_types=["Patient", "Condition"]))
    [batch] = plan_batches(client.wait(status_url), status_url, 1)
    flow = ExportWorkflow(client, tmp_path, {"status_url": status_url})
    sb.add_fault("file", status=410, times=2)  # as a store answers for links it expired meanwhile
    report = flow.land_batch(status_url, batch["paths"], batch["keys"])
    assert sorted(f.type for f in report.files) == ["Condition", "Patient"]
    assert len(file_gets(sb)) == 2


def test_a_level_the_vendor_does_not_offer_is_warned_about(caplog) -> None:
    with caplog.at_level("WARNING", logger="airflow_provider_smart.bulk"):
        PROFILES["epic"].kickoff(ExportRequest(resource_types=["Patient"]), "https://epic.example/fhir")
    assert "Epic offers group exports only" in caplog.text
    caplog.clear()
    PROFILES["epic"].kickoff(ExportRequest(level="group", group_id="g"), "https://epic.example/fhir")
    assert caplog.text == ""


def test_microsoft_container_and_other_extras_pass_through(sandbox_factory, make_client, tmp_path) -> None:
    sb = sandbox_factory(quirks="microsoft")
    request = ExportRequest(resource_types=["Patient"], extra_parameters={"_container": "exports"})
    summary = land(make_client(sb, profile=PROFILES["microsoft"]), tmp_path, request)
    assert sb.kickoffs[-1]["params"]["_container"] == ["exports"] and landed_types(summary) == {"Patient": 20}
    with pytest.raises(BulkExportError, match="unsupported kick-off parameter '_container'"):
        make_client(sandbox_factory()).kick_off(request)  # a server that does not know it says so
    with pytest.raises(BulkExportError, match="extra_parameters may not set '_type'"):
        make_client(sb).kick_off(ExportRequest(extra_parameters={"_type": "Patient"}))
    assert "extra_parameters" not in ExportRequest().to_dict()  # identities of plain requests are unchanged


def test_epic_since_is_reported_as_unreliable(sandbox_factory, make_client, tmp_path) -> None:
    """Epic has no meta.lastUpdated: an incremental export's summary says _since may not have filtered."""
    sb = sandbox_factory()
    request = ExportRequest(level="group", group_id="all", resource_types=["Patient"], since="2000-01-01T00:00:00Z")
    summary = land(make_client(sb, profile=PROFILES["epic"]), tmp_path, request)
    assert {"parameter": "_since", "evidence": "documented for Epic (vendor profile)"} in summary["server_ignored"]
    assert land(make_client(sb), tmp_path / "spec", request)["server_ignored"] == []


def test_cerner_kick_off_warns_when_the_granted_scope_lacks_a_types_read_scope(
    sandbox_factory, make_client, caplog
) -> None:
    sb = sandbox_factory(quirks="cerner")
    client = make_client(sb, profile=PROFILES["cerner"], scope="system/Patient.rs")
    with caplog.at_level("WARNING", logger="airflow_provider_smart.bulk"), pytest.raises(BulkExportError, match="403"):
        client.kick_off(ExportRequest(resource_types=["Patient", "Encounter"]))
    assert "documented to need system/Encounter.read" in caplog.text and "system/Patient.read" not in caplog.text
    caplog.clear()
    make_client(sb, profile=PROFILES["cerner"], comma_join_repeats=None).kick_off(
        ExportRequest(resource_types=["Patient"])
    )
    assert "documented to need" not in caplog.text  # system/*.rs covers system/Patient.read
