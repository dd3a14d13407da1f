"""Fault injection and test hooks: injected statuses, cut connections, broken manifests, odd file hosts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    from conftest import Helper


def test_token_fault_then_recovery(h: Helper) -> None:
    h.sb.add_fault("token", status=503, headers={"Retry-After": "2"}, times=2)
    for _ in range(2):
        response = h.token_request()
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.json()["error"] == "temporarily_unavailable"
    assert h.token_request().status_code == 200
    assert h.sb.token_requests == 1
    assert [e["ok"] for e in h.sb.token_log] == [False, False, True]


def test_kickoff_fault_with_custom_body(h: Helper) -> None:
    body = h.sb.operation_outcome("throttled", "one export at a time")
    h.sb.add_fault("kickoff", status=429, body=body, headers={"Retry-After": "5"})
    session = h.session()
    busy = h.kickoff(session=session)
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "5"
    assert busy.headers["Content-Type"] == "application/fhir+json"
    assert busy.json() == body
    assert h.kickoff(session=session).status_code == 202
    assert [(k["status"], k["job_id"] is not None) for k in h.sb.kickoffs] == [(429, False), (202, True)]


def test_status_transient_fault(h: Helper) -> None:
    session = h.session()
    status_url = h.kickoff(session=session).headers["Content-Location"]
    h.sb.add_fault("status", status=500, body=h.sb.operation_outcome("transient", "try later"))
    failed = session.get(status_url, timeout=10)
    assert failed.status_code == 500 and failed.json()["issue"][0]["code"] == "transient"
    assert h.wait(status_url, session).status_code == 200


def test_patient_delete_and_file_faults_and_plain_text_body(h: Helper) -> None:
    session = h.session()
    h.sb.add_fault("patient", status=502, body="bad gateway")
    response = session.get(h.sb.url + "/Patient", timeout=10)
    assert response.status_code == 502 and response.text == "bad gateway"
    assert response.headers["Content-Type"].startswith("text/plain")
    manifest, session = h.export(params={"_type": "Patient"}, session=session)
    h.sb.add_fault("file", status=410)
    url = manifest["output"][0]["url"]
    assert session.get(url, timeout=10).status_code == 410
    assert session.get(url, timeout=10).status_code == 200
    h.sb.add_fault("delete", status=500)
    status_url = f"{h.sb.url}/bulkstatus/{url.split('/')[-2]}"
    assert session.delete(status_url, timeout=10).status_code == 500
    assert session.delete(status_url, timeout=10).status_code == 202


def test_delay_fault(h: Helper) -> None:
    h.sb.add_fault("patient", delay=0.3)
    session = h.session()
    started = time.monotonic()
    assert session.get(h.sb.url + "/Patient", timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_file_cut_after_bytes(h: Helper) -> None:
    manifest, session = h.export(params={"_type": "Observation"})
    url = manifest["output"][0]["url"]
    h.sb.add_fault("file", after_bytes=100)
    response = session.get(url, headers={"Accept-Encoding": "identity"}, stream=True, timeout=10)
    assert response.status_code == 200
    declared = int(response.headers["Content-Length"])
    assert declared > 100
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        response.content  # noqa: B018 - reading the body raises
    # the next download is complete, on a fresh connection
    whole = session.get(url, timeout=10)
    assert len(whole.content) == declared


def test_fault_validation(h: Helper) -> None:
    with pytest.raises(ValueError):
        h.sb.add_fault("metadata", status=500)
    with pytest.raises(ValueError):
        h.sb.add_fault("status", after_bytes=10)
    with pytest.raises(ValueError):
        h.sb.add_fault("file")


def test_fail_next_export(h: Helper) -> None:
    h.sb.fail_next_export("disk on fire")
    session = h.session()
    status_url = h.kickoff(session=session).headers["Content-Location"]
    assert session.get(status_url, timeout=10).status_code == 202
    failed = session.get(status_url, timeout=10)
    assert failed.status_code == 500
    issue = failed.json()["issue"][0]
    assert issue["code"] == "processing" and issue["diagnostics"] == "disk on fire"
    assert session.get(status_url, timeout=10).status_code == 500
    manifest, _ = h.export(session=session)  # only the next export fails
    assert manifest["output"]


@pytest.mark.parametrize("kind", ["not_json", "no_output", "bad_url", "path_traversal"])
def test_malform_next_manifest(h: Helper, kind: str) -> None:
    h.sb.malform_next_manifest(kind)
    session = h.session()
    status_url = h.kickoff(params={"_type": "Patient"}, session=session).headers["Content-Location"]
    response = h.wait(status_url, session)
    assert response.status_code == 200
    if kind == "not_json":
        with pytest.raises(ValueError):
            response.json()
        return
    manifest = response.json()
    if kind == "no_output":
        assert "output" not in manifest
    elif kind == "bad_url":
        assert manifest["output"][-1]["url"] == "file:///etc/passwd"
    else:
        assert manifest["output"][-1]["type"] == "../../evil"
        assert manifest["output"][-1]["url"].endswith("/../../x")
    healthy, _ = h.export(params={"_type": "Patient"}, session=session)
    assert all(e["url"].startswith(h.sb.origin) for e in healthy["output"])


@pytest.mark.parametrize("severity", ["error", "warning", "fatal"])
def test_add_error_file(h: Helper, severity: str) -> None:
    h.sb.add_error_file(severity)
    manifest, session = h.export(params={"_type": "Patient"})
    assert [e["type"] for e in manifest["error"]] == ["OperationOutcome"]
    outcomes = h.download(manifest, session, key="error")["OperationOutcome"]
    assert {o["issue"][0]["severity"] for o in outcomes} == {severity}
    assert manifest["output"]  # partial success: 200 with data and errors
    assert h.export(params={"_type": "Patient"}, session=session)[0]["error"] == []


def test_file_origin_is_a_different_origin_on_the_same_socket(make_sb) -> None:
    h = make_sb(file_origin="localhost")
    manifest, session = h.export(params={"_type": "Patient"})
    url = manifest["output"][0]["url"]
    assert url.startswith(f"http://localhost:{h.sb.port}/fhir/bulkfiles/")
    assert manifest["requiresAccessToken"] is True
    assert requests.get(url, timeout=10).status_code == 401
    assert session.get(url, timeout=10).status_code == 200


def test_redirect_files_to_presigned_url(make_sb) -> None:
    h = make_sb(redirect_files=True)
    manifest, session = h.export(params={"_type": "Patient"})
    url = manifest["output"][0]["url"]
    assert url.startswith(h.sb.origin)
    first = session.get(url, allow_redirects=False, timeout=10)
    assert first.status_code == 307
    presigned = first.headers["Location"]
    assert presigned.startswith(f"http://localhost:{h.sb.port}/presigned/") and "sig=" in presigned
    # the presigned URL rejects any Authorization header, like S3
    with_token = requests.get(presigned, headers={"Authorization": session.headers["Authorization"]}, timeout=10)
    assert with_token.status_code == 400 and "InvalidArgument" in with_token.text
    clean = requests.get(presigned, timeout=10)
    assert clean.status_code == 200 and len(clean.text.splitlines()) == manifest["output"][0]["count"]
    assert requests.get(presigned.replace("sig=", "sig=0"), timeout=10).status_code == 403
    # requests strips Authorization on a cross-host redirect, so following it works end to end
    assert session.get(url, timeout=10).status_code == 200
    presigned_logs = [e for e in h.sb.requests_log if e["path"].startswith("/presigned/")]
    assert [e["authorization"] for e in presigned_logs] == [True, False, False, False]
    # a cut on the data transfer applies to the presigned download, not the 307
    h.sb.add_fault("file", after_bytes=10)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        session.get(url, timeout=10)
