"""Bulk Data kick-off, status, manifest, download and DELETE against the sandbox."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from typing import TYPE_CHECKING, Any

import pytest
import requests

if TYPE_CHECKING:
    from conftest import Helper


def _outcome(response: requests.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def test_system_export_end_to_end(h: Helper) -> None:
    session = h.session()
    kicked = h.kickoff(session=session)
    assert kicked.status_code == 202
    status_url = kicked.headers["Content-Location"]
    assert status_url.startswith(f"{h.sb.url}/bulkstatus/")
    first = session.get(status_url, timeout=10)
    assert first.status_code == 202
    assert first.headers["X-Progress"].endswith("% complete")
    assert first.headers["Retry-After"] == "0"
    done = session.get(status_url, timeout=10)
    assert done.status_code == 200 and done.headers["Content-Type"] == "application/json"
    assert "Expires" in done.headers
    manifest = done.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == f"{h.sb.url}/$export"
    assert manifest["error"] == []
    assert "deleted" not in manifest
    transaction = dt.datetime.fromisoformat(manifest["transactionTime"])
    assert transaction.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - transaction).total_seconds()) < 30
    data = h.download(manifest, session)
    assert {t: len(v) for t, v in data.items()} == {"Patient": 6, "Observation": 24, "Condition": 12, "Encounter": 12}
    # 24 Observations at 5 per file -> Observation.1..5.ndjson
    names = [e["url"].rsplit("/", 1)[1] for e in manifest["output"] if e["type"] == "Observation"]
    assert names == [f"Observation.{i}.ndjson" for i in range(1, 6)]
    assert data["Observation"][0]["subject"]["reference"].startswith("Patient/pat-")
    assert h.sb.status_polls == 2
    assert h.sb.kickoffs[0]["level"] == "system" and h.sb.kickoffs[0]["job_id"] in status_url
    # a second GET of a completed job returns the same manifest
    assert session.get(status_url, timeout=10).json() == manifest


def test_patient_and_group_exports(h: Helper) -> None:
    manifest, session = h.export("/Patient/$export", {"_type": "Patient"})
    assert len(h.download(manifest, session)["Patient"]) == 6
    manifest, session = h.export("/Group/cohort-a/$export", {"_type": "Patient,Condition"})
    data = h.download(manifest, session)
    assert [p["id"] for p in data["Patient"]] == ["pat-0002", "pat-0004", "pat-0006"]
    assert {c["subject"]["reference"] for c in data["Condition"]} == {
        "Patient/pat-0002",
        "Patient/pat-0004",
        "Patient/pat-0006",
    }
    manifest, session = h.export("/Group/all/$export", {"_type": "Encounter"})
    assert len(h.download(manifest, session)["Encounter"]) == 12
    assert [k["level"] for k in h.sb.kickoffs] == ["patient", "group", "group"]
    assert h.sb.kickoffs[1]["group_id"] == "cohort-a"
    unknown = h.kickoff("/Group/nope/$export")
    assert unknown.status_code == 404 and "Group/nope" in _outcome(unknown)


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({"Accept": "application/json"}, "Accept"),
        ({"Accept": "application/fhir+json, application/json"}, "Accept"),
        ({"Prefer": "handling=lenient"}, "respond-async"),
        ({"Prefer": ""}, "respond-async"),
    ],
)
def test_kickoff_header_checks(h: Helper, headers: dict[str, str], needle: str) -> None:
    response = h.kickoff(headers=headers)
    assert response.status_code == 400
    assert needle in _outcome(response)
    assert h.sb.kickoffs[-1]["status"] == 400


def test_kickoff_requires_a_token_and_scope(h: Helper) -> None:
    response = requests.get(
        h.sb.url + "/$export", headers={"Accept": "application/fhir+json", "Prefer": "respond-async"}, timeout=10
    )
    assert response.status_code == 401
    assert h.sb.kickoffs[-1]["status"] == 401 and h.sb.kickoffs[-1]["level"] == "system"
    patient_only = h.session(h.token("system/Patient.rs", client_id="patient-only"))
    forbidden = h.kickoff(params={"_type": "Observation"}, session=patient_only)
    assert forbidden.status_code == 403
    # without _type the export is limited to what the token may read
    manifest, _session = h.export(session=patient_only)
    assert {e["type"] for e in manifest["output"]} == {"Patient"}


def test_post_parameters_with_patient(h: Helper) -> None:
    parameters = [
        {"name": "_type", "valueString": "Patient,Observation"},
        {"name": "patient", "valueReference": {"reference": "Patient/pat-0003"}},
        {"name": "patient", "valueReference": {"reference": "Patient/pat-0005"}},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
    ]
    manifest, session = h.export("/Patient/$export", method="POST", parameters=parameters)
    data = h.download(manifest, session)
    assert [p["id"] for p in data["Patient"]] == ["pat-0003", "pat-0005"]
    assert {o["subject"]["reference"] for o in data["Observation"]} == {"Patient/pat-0003", "Patient/pat-0005"}
    assert manifest["request"] == f"{h.sb.url}/Patient/$export"
    assert h.sb.kickoffs[0]["method"] == "POST"
    assert h.sb.kickoffs[0]["params"]["patient"] == ["Patient/pat-0003", "Patient/pat-0005"]
    # group + patient: intersection
    parameters[1:3] = [{"name": "patient", "valueReference": {"reference": "Patient/pat-0003"}}]
    manifest, session = h.export("/Group/cohort-a/$export", method="POST", parameters=parameters)
    assert manifest["output"] == []


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("/Patient/$export", {"patient": "Patient/pat-0001"}, "POST"),
        ("/$export", {"_outputFormat": "text/csv"}, "_outputFormat"),
        ("/$export", {"_type": "Patient,MedicationRequest"}, "MedicationRequest"),
        ("/$export", {"_since": "2999-01-01T00:00:00Z"}, "future"),
        ("/$export", {"_since": "2024-01-01T00:00:00"}, "timezone"),
        ("/$export", {"organizeOutputBy": "Patient"}, "organizeOutputBy"),
        ("/$export", {"_typeFilter": "Observation?date=gt2020"}, "date"),
        ("/$export", {"_bogus": "1"}, "_bogus"),
        ("/$export", [("_since", "2023-01-01T00:00:00Z"), ("_since", "2023-02-01T00:00:00Z")], "once"),
    ],
)
def test_kickoff_parameter_errors(h: Helper, path: str, params: Any, needle: str) -> None:
    response = h.kickoff(path, params)
    assert response.status_code == 400, response.text
    assert needle in _outcome(response)


def test_patient_parameter_not_at_system_level(h: Helper) -> None:
    parameters = [{"name": "patient", "valueReference": {"reference": "Patient/pat-0001"}}]
    response = h.kickoff("/$export", method="POST", parameters=parameters)
    assert response.status_code == 400 and "system level" in _outcome(response)


def test_lenient_handling_ignores_unsupported_and_reports_it(h: Helper) -> None:
    headers = {"Prefer": "respond-async, handling=lenient"}
    manifest, session = h.export(params={"_type": "Patient,MedicationRequest", "_bogus": "1"}, headers=headers)
    assert {e["type"] for e in manifest["output"]} == {"Patient"}
    assert len(manifest["error"]) == 1
    outcomes = h.download(manifest, session, key="error")["OperationOutcome"]
    assert {o["issue"][0]["severity"] for o in outcomes} == {"warning"}
    assert any("MedicationRequest" in o["issue"][0]["diagnostics"] for o in outcomes)


def test_type_repeated_and_output_format_abbreviations(h: Helper) -> None:
    params = [("_type", "Patient"), ("_type", "Encounter"), ("_outputFormat", "ndjson")]
    manifest, _ = h.export(params=params)
    assert [e["type"] for e in manifest["output"]] == ["Patient"] * 2 + ["Encounter"] * 3
    assert h.sb.kickoffs[0]["params"]["_type"] == ["Patient", "Encounter"]


def test_since_touch_and_deleted(h: Helper) -> None:
    first, session = h.export(params={"_type": "Observation,Patient"})
    since = first["transactionTime"]
    touched = h.sb.touch("Observation", 3)
    assert touched == ["obs-0001-001", "obs-0001-002", "obs-0001-003"]
    h.sb.delete_resource("Observation", "obs-0002-004")
    h.sb.delete_resource("Patient", "pat-0006")
    with pytest.raises(KeyError):
        h.sb.delete_resource("Observation", "obs-9999-001")
    manifest, session = h.export(params={"_type": "Observation,Patient", "_since": since}, session=session)
    data = h.download(manifest, session)
    assert sorted(o["id"] for o in data["Observation"]) == touched
    assert all(o["meta"]["versionId"] == "2" for o in data["Observation"])
    assert "Patient" not in data
    deleted = h.download(manifest, session, key="deleted")["Bundle"]
    urls = sorted(b["entry"][0]["request"]["url"] for b in deleted)
    assert urls == ["Observation/obs-0002-004", "Patient/pat-0006"]
    assert all(b["type"] == "transaction" and b["entry"][0]["request"]["method"] == "DELETE" for b in deleted)
    # deleted resources never reappear in a full export
    full, session = h.export(params={"_type": "Observation"}, session=session)
    ids = {o["id"] for o in h.download(full, session)["Observation"]}
    assert "obs-0002-004" not in ids and len(ids) == 23


def test_since_and_until_filter_on_last_updated(h: Helper) -> None:
    full, session = h.export(params={"_type": "Observation"})
    stamps = sorted(o["meta"]["lastUpdated"] for o in h.download(full, session)["Observation"])
    middle = stamps[len(stamps) // 2]
    manifest, session = h.export(params={"_type": "Observation", "_since": middle}, session=session)
    newer = h.download(manifest, session)["Observation"]
    assert newer and all(o["meta"]["lastUpdated"] > middle for o in newer)
    manifest, session = h.export(params={"_type": "Observation", "_until": middle}, session=session)
    older = h.download(manifest, session)["Observation"]
    assert len(older) + len(newer) == 24


def test_type_filter(h: Helper) -> None:
    lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    manifest, session = h.export(params={"_type": "Observation", "_typeFilter": f"Observation?category={lab}"})
    labs = h.download(manifest, session)["Observation"]
    assert labs and all(o["category"][0]["coding"][0]["code"] == "laboratory" for o in labs)
    assert sum(e["count"] for e in manifest["output"]) == len(labs) < 24
    # repeated _typeFilter = OR; several params in one query = AND
    params = [
        ("_type", "Observation,Patient"),
        ("_typeFilter", "Observation?code=http://loinc.org|8867-4"),
        ("_typeFilter", "Observation?code=2339-0&subject=Patient/pat-0001"),
        ("_typeFilter", "Patient?gender=female"),
    ]
    manifest, session = h.export(params=params, session=session)
    data = h.download(manifest, session)
    for o in data["Observation"]:
        code = o["code"]["coding"][0]["code"]
        assert code == "8867-4" or (code == "2339-0" and o["subject"]["reference"] == "Patient/pat-0001")
    assert {p["gender"] for p in data["Patient"]} == {"female"}
    # v2 style: one comma-separated value of queries
    manifest, session = h.export(
        params={"_typeFilter": "Patient?gender=male,Encounter?status=finished", "_type": "Patient"}, session=session
    )
    assert {p["gender"] for p in h.download(manifest, session)["Patient"]} == {"male"}


def test_elements_subsets(h: Helper) -> None:
    manifest, session = h.export(params={"_type": "Patient,Observation", "_elements": "gender,Observation.status"})
    data = h.download(manifest, session)
    assert set(data["Patient"][0]) == {"resourceType", "id", "meta", "gender"}
    assert set(data["Observation"][0]) == {"resourceType", "id", "meta", "status"}
    assert data["Patient"][0]["meta"]["tag"][0]["code"] == "SUBSETTED"


def test_gzip_is_honoured(h: Helper) -> None:
    manifest, session = h.export(params={"_type": "Observation"})
    url = manifest["output"][0]["url"]
    raw = session.get(url, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10)
    assert raw.headers["Content-Encoding"] == "gzip"
    body = raw.raw.read(decode_content=False)
    assert len(body) == int(raw.headers["Content-Length"])
    assert len(gzip.decompress(body).splitlines()) == manifest["output"][0]["count"]
    plain = session.get(url, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "Content-Encoding" not in plain.headers
    assert plain.content == gzip.decompress(body)
    refused = session.get(url, headers={"Accept-Encoding": "gzip;q=0"}, timeout=10)
    assert "Content-Encoding" not in refused.headers


def test_gzip_disabled(make_sb) -> None:
    h = make_sb(gzip=False)
    manifest, session = h.export(params={"_type": "Patient"})
    response = session.get(manifest["output"][0]["url"], headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert "Content-Encoding" not in response.headers


def test_paged_manifest(make_sb) -> None:
    h = make_sb(manifest_page_size=2, page_poll_202=True)
    manifest, session = h.export(params={"_type": "Observation,Patient"})
    outputs = list(manifest["output"])
    assert len(outputs) == 2
    pages = 1
    while manifest.get("link"):
        (link,) = manifest["link"]
        assert link["relation"] == "next" and "?page=" in link["url"]
        assert session.get(link["url"], timeout=10).status_code == 202  # page_poll_202: once
        response = session.get(link["url"], timeout=10)
        assert response.status_code == 200
        manifest = response.json()
        outputs += manifest["output"]
        pages += 1
    assert pages == 4  # 5 Observation files + 2 Patient files, 2 per page
    assert sum(e["count"] for e in outputs) == 30
    assert session.get(link["url"].replace("page=4", "page=9"), timeout=10).status_code == 404


def test_delete_job(h: Helper) -> None:
    session = h.session()
    status_url = h.kickoff(session=session).headers["Content-Location"]
    manifest = h.wait(status_url, session).json()
    job_id = status_url.rsplit("/", 1)[1]
    assert (h.sb.data_dir / job_id).is_dir()
    deleted = session.delete(status_url, timeout=10)
    assert deleted.status_code == 202
    assert deleted.json()["issue"][0]["severity"] == "information"
    assert session.get(status_url, timeout=10).status_code == 404
    assert session.get(manifest["output"][0]["url"], timeout=10).status_code == 404
    assert session.delete(status_url, timeout=10).status_code == 404
    assert not (h.sb.data_dir / job_id).exists()
    assert [e["route"] for e in h.sb.requests_log if e["method"] == "DELETE"] == ["delete", "delete"]
    assert requests.delete(status_url, timeout=10).status_code == 401


def test_status_polls_and_no_retry_after(make_sb) -> None:
    h = make_sb(status_polls_before_ready=3, retry_after=None)
    session = h.session()
    status_url = h.kickoff(session=session).headers["Content-Location"]
    answers = [session.get(status_url, timeout=10) for _ in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 200]
    assert all("Retry-After" not in a.headers for a in answers[:3])
    assert h.sb.status_polls == 4
    assert requests.get(status_url, timeout=10).status_code == 401
    assert session.get(h.sb.url + "/bulkstatus/unknown", timeout=10).status_code == 404


def test_files_need_token_and_unknown_files_404(h: Helper) -> None:
    manifest, session = h.export(params={"_type": "Patient"})
    url = manifest["output"][0]["url"]
    assert requests.get(url, timeout=10).status_code == 401
    assert session.get(url.replace("Patient.1", "Patient.7"), timeout=10).status_code == 404
    obs_only = h.session(h.token("system/Observation.rs"))
    assert obs_only.get(url, timeout=10).status_code == 403
    assert session.get(url.rsplit("/", 1)[0] + "/..%2F..%2Fmetadata", timeout=10).status_code in (404,)


def test_requires_access_token_false(make_sb) -> None:
    h = make_sb(requires_access_token=False)
    manifest, _ = h.export(params={"_type": "Patient"})
    assert manifest["requiresAccessToken"] is False
    response = requests.get(manifest["output"][0]["url"], timeout=10)
    assert response.status_code == 200
    assert h.sb.requests_log[-1]["authorization"] is False


def test_churn_per_export(make_sb) -> None:
    h = make_sb(churn_per_export=2)
    first, session = h.export(params={"_type": "Observation"})
    second, session = h.export(params={"_type": "Observation", "_since": first["transactionTime"]}, session=session)
    changed = h.download(second, session)["Observation"]
    assert len(changed) == 2
    deleted = h.download(second, session, key="deleted")["Bundle"]
    assert [b["entry"][0]["request"]["url"] for b in deleted] == ["Observation/obs-0001-004"]


def test_patient_search_and_read(h: Helper) -> None:
    session = h.session()
    bundle = session.get(h.sb.url + "/Patient", params={"_count": 4}, timeout=10).json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset" and bundle["total"] == 6
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["pat-0001", "pat-0002", "pat-0003", "pat-0004"]
    assert any(link["relation"] == "next" for link in bundle["link"])
    patient = session.get(h.sb.url + "/Patient/pat-0002", timeout=10)
    assert patient.status_code == 200 and patient.json()["id"] == "pat-0002"
    assert session.get(h.sb.url + "/Patient/pat-0099", timeout=10).status_code == 404
    obs_only = h.session(h.token("system/Observation.rs"))
    assert obs_only.get(h.sb.url + "/Patient", timeout=10).status_code == 403


def test_files_are_written_once(h: Helper) -> None:
    manifest, _session = h.export(params={"_type": "Patient"})
    job_dir = h.sb.data_dir / manifest["output"][0]["url"].split("/")[-2]
    names = ["Patient.1.ndjson", "Patient.1.ndjson.gz", "Patient.2.ndjson", "Patient.2.ndjson.gz"]
    assert sorted(p.name for p in job_dir.iterdir()) == names
    lines = (job_dir / "Patient.1.ndjson").read_text().splitlines()
    lines += (job_dir / "Patient.2.ndjson").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"pat-000{i}" for i in range(1, 7)]


def test_finish_exports_completes_exports_kept_waiting(make_sb: Any) -> None:
    h = make_sb(status_polls_before_ready=10**6)
    session = h.session()
    status_url = h.kickoff(session=session).headers["Content-Location"]
    assert session.get(status_url, timeout=10).status_code == 202
    assert h.sb.finish_exports() == 1
    assert session.get(status_url, timeout=10).status_code == 200
    assert h.sb.finish_exports() == 0
