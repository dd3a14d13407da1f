"""Origins, the token-free session, connection pools, and the cheap package import (no server)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from airflow_provider_smart.bulk import BulkExportClient
from airflow_provider_smart.bulk.urls import OriginPolicy, origin_of, redact_url
from airflow_provider_smart.sessions import ensure_pool_size, token_free_copy


def test_origin_of_makes_default_ports_explicit() -> None:
    assert origin_of("https://EHR.example/fhir") == origin_of("https://ehr.example:443/x") == "https://ehr.example:443"
    assert origin_of("http://h:8080/a") == "http://h:8080"


def test_trusted_origins_forms() -> None:
    trusted = OriginPolicy(["https://ehr.example/fhir"], ["files.example", "s3.example:9000", "https://cdn.example"])
    assert trusted.allows("https://ehr.example/other/path")
    assert not trusted.allows("http://ehr.example/fhir")  # scheme is part of an origin
    assert not trusted.allows("https://ehr.example:8443/fhir")
    assert trusted.allows("https://files.example/a")
    assert not trusted.allows("http://files.example/a")  # https base: a bare host matches https only
    assert trusted.allows("https://s3.example:9000/b") and not trusted.allows("https://s3.example/b")
    assert trusted.allows("https://cdn.example/x") and not trusted.allows("https://evil.example/x")
    assert not trusted.allows("file:///etc/passwd")
    trusted.add("https://status.example/job/1")
    assert trusted.allows("https://status.example/other")


def test_redact_url_drops_signatures() -> None:
    assert redact_url("https://u:p@s3.example/b/k?X-Amz-Signature=s") == "https://s3.example/b/k?..."
    assert redact_url("http://h:8080/f") == "http://h:8080/f"


def test_plain_session_copies_settings_but_no_credentials() -> None:
    session = requests.Session()
    session.auth = ("user", "secret")
    session.verify = "/etc/ca.pem"
    session.proxies = {"https": "http://proxy:3128"}
    session.headers.update({"Authorization": "Bearer x", "Epic-Client-ID": "abc"})
    plain = token_free_copy(session)
    assert plain.verify == "/etc/ca.pem"
    assert plain.proxies == {"https": "http://proxy:3128"}
    assert plain.headers["Epic-Client-ID"] == "abc"
    assert "Authorization" not in plain.headers
    request = requests.Request("GET", "https://h/x", headers={"Authorization": "Bearer y"})
    prepared = plain.prepare_request(request)
    assert "Authorization" not in prepared.headers  # not even a per-request one, nor ~/.netrc's


def test_pool_size_is_raised_and_retries_kept() -> None:
    session = requests.Session()
    retries = Retry(connect=3, read=0)
    session.mount("https://", HTTPAdapter(pool_maxsize=4, max_retries=retries))
    ensure_pool_size(session, 16)
    adapter = session.get_adapter("https://h/")
    assert adapter._pool_maxsize == 16 and adapter.max_retries is retries
    ensure_pool_size(session, 8)  # never shrinks
    assert session.get_adapter("https://h/")._pool_maxsize == 16


def test_client_and_auth_share_one_origin_policy() -> None:
    from airflow_provider_smart.auth import BackendServicesAuth, generate_private_key, private_key_to_pem

    auth = BackendServicesAuth(
        client_id="c",
        private_key=private_key_to_pem(generate_private_key("ES384")),
        kid="k",
        fhir_base_url="https://ehr.example/fhir",
        scope="system/*.rs",
    )
    session = requests.Session()
    session.auth = auth
    client = BulkExportClient(session, "https://ehr.example/fhir/", allowed_hosts=["files.example"])
    assert client.fhir_base_url == "https://ehr.example/fhir"
    assert client.transport.origins is auth.origins
    assert auth.is_allowed("https://files.example/y")  # the client's allowed hosts reach the auth too
    client.allow_origin("https://status.example/job")
    assert auth.is_allowed("https://status.example/other") and client.transport.trusts("https://status.example/x")
    assert not auth.is_allowed("https://evil.example/x")
    # An explicit policy wins, and a session without a token auth is fine too.
    shared = OriginPolicy()
    other = BulkExportClient(requests.Session(), "https://ehr.example/fhir", origins=shared)
    other.allow_origin("https://x/y")
    assert other.transport.origins is shared and shared.allows("https://x/z")


def test_importing_the_package_is_cheap() -> None:
    code = (
        "import sys, airflow_provider_smart.bulk, airflow_provider_smart.bulk.retry;"
        "from airflow_provider_smart.bulk import plan_files, batch, ExportRequest;"
        "bad = [m for m in ('airflow', 'requests', 'jwt', 'cryptography') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_https_server_handing_out_http_urls_is_refused_before_any_request(tmp_path) -> None:
    from airflow_provider_smart.bulk import BulkDownloadError, BulkExportError

    client = BulkExportClient(requests.Session(), "https://ehr.example/fhir")
    with pytest.raises(BulkExportError, match=r"status URL http://ehr.example/status/1 is plain http.*https"):
        client.poll("http://ehr.example/status/1")
    entry = {
        "kind": "output",
        "type": "Patient",
        "url": "http://ehr.example/f/1",
        "count": 1,
        "path": "Patient.1.ndjson",
    }
    with pytest.raises(BulkDownloadError, match="plain http while the FHIR base URL is https"):
        client.download_batch([entry], tmp_path, requires_access_token=True)
    assert not list(tmp_path.iterdir())
