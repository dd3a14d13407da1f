"""Discovery, metadata, HTTP behaviour, logs, synthetic data and the command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from airflow_provider_smart.testing import SmartSandbox
from airflow_provider_smart.testing.data import RESOURCE_TYPES, Dataset, DataState

if TYPE_CHECKING:
    from conftest import Helper


def test_addresses(h: Helper) -> None:
    sb = h.sb
    assert sb.origin == f"http://127.0.0.1:{sb.port}"
    assert sb.url == sb.origin + "/fhir"
    assert sb.token_url == sb.origin + "/auth/token"


def test_smart_configuration(h: Helper) -> None:
    response = requests.get(h.sb.url + "/.well-known/smart-configuration", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    config = response.json()
    assert config["token_endpoint"] == h.sb.token_url
    assert config["token_endpoint_auth_methods_supported"] == [
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
    ]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384", "ES256", "RS256"]
    assert config["grant_types_supported"] == ["client_credentials"]
    assert {"system/*.rs", "system/*.read"} <= set(config["scopes_supported"])
    assert set(config["capabilities"]) == {
        "client-confidential-asymmetric",
        "client-confidential-symmetric",
        "permission-v1",
        "permission-v2",
    }
    assert "authorization_endpoint" not in config


def test_metadata_and_well_known_off(make_sb) -> None:
    h = make_sb(well_known=False, signing_algs=["ES384"])
    assert requests.get(h.sb.url + "/.well-known/smart-configuration", timeout=10).status_code == 404
    response = requests.get(h.sb.url + "/metadata", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/fhir+json"
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    (oauth,) = statement["rest"][0]["security"]["extension"]
    assert oauth["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert oauth["extension"] == [{"url": "token", "valueUri": h.sb.token_url}]
    assert statement["rest"][0]["operation"][0]["name"] == "export"
    # signing_algs is enforced: RS384 is no longer accepted
    rs = h.token_request(assertion=h.assertion("rs-client", "rs"))
    assert rs.status_code == 401 and "not accepted" in rs.json()["error_description"]


def test_requests_log_and_routes(h: Helper) -> None:
    token = h.token()
    h.sb.reset_logs()
    requests.get(h.sb.url + "/metadata", timeout=10)
    requests.get(h.sb.url + "/Patient", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    requests.get(h.sb.origin + "/nowhere?x=1", timeout=10)
    requests.put(h.sb.token_url, timeout=10)
    log = h.sb.requests_log
    assert [(e["route"], e["status"], e["authorization"]) for e in log] == [
        ("metadata", 200, False),
        ("patient", 200, True),
        ("other", 404, False),
        ("token", 405, False),
    ]
    assert log[2]["query"] == "x=1" and log[2]["path"] == "/nowhere"
    assert log[1]["headers"]["authorization"] == f"Bearer {token}"
    assert all(name == name.lower() for e in log for name in e["headers"])
    h.sb.reset_logs()
    assert h.sb.requests_log == [] and h.sb.token_log == [] and h.sb.token_requests == 0


def test_keep_alive_reuses_one_connection(h: Helper) -> None:
    with socket.create_connection(("127.0.0.1", h.sb.port)) as conn:
        request = f"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1:{h.sb.port}\r\n\r\n".encode()
        reader = conn.makefile("rb")
        for _ in range(3):
            conn.sendall(request)
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200")
            length = None
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            assert length is not None
            assert json.loads(reader.read(length))["resourceType"] == "CapabilityStatement"


def test_dataset_is_deterministic_and_valid() -> None:
    dataset = Dataset(patients=12, resources_per_patient=7)
    state = DataState()
    first = {t: list(dataset.iter_lines(t, state)) for t in RESOURCE_TYPES}
    again = {t: list(Dataset(12, 7).iter_lines(t, state)) for t in RESOURCE_TYPES}
    assert first == again
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    for rtype, lines in first.items():
        assert len(lines) == dataset.count(rtype)
        resources = [json.loads(line) for line in lines]
        assert all(r["resourceType"] == rtype and r["meta"]["lastUpdated"] < now for r in resources)
        assert len({r["id"] for r in resources}) == len(resources)
    observations = [json.loads(line) for line in first["Observation"]]
    assert observations[2]["id"] == "obs-0001-003"
    assert {o["category"][0]["coding"][0]["code"] for o in observations} == {"laboratory", "vital-signs"}
    assert all("valueQuantity" in o and o["subject"]["reference"].startswith("Patient/pat-") for o in observations)


def test_generation_is_fast() -> None:
    dataset = Dataset(patients=2000, resources_per_patient=25)
    started = time.perf_counter()
    size = sum(len(line) for line in dataset.iter_lines("Observation", DataState()))
    rate = size / 1e6 / (time.perf_counter() - started)
    assert size > 25e6
    assert rate > 20, f"{rate:.0f} MB/s"  # ~100 MB/s on a laptop; generous for slow CI


def test_custom_data_dir_is_kept(tmp_path: Path, sbx_keys) -> None:
    with SmartSandbox(patients=2, data_dir=tmp_path / "jobs") as sb:
        sb.register_client("c", jwks=sbx_keys["es"].jwks)
        assert sb.data_dir == tmp_path / "jobs"
    assert (tmp_path / "jobs").is_dir()


def test_cli_serve_runs_until_sigterm(tmp_path: Path, sbx_keys) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(sbx_keys["es"].jwks))
    ready = tmp_path / "ready"
    command = [
        sys.executable,
        "-m",
        "airflow_provider_smart.testing",
        "--port",
        "0",
        "--client-id",
        "cli-client",
        "--jwks",
        str(jwks),
        "--patients",
        "3",
        "--ready-file",
        str(ready),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the sandbox never became ready"
            time.sleep(0.05)
        base = ready.read_text().strip()
        assert base.startswith("http://127.0.0.1:") and base.endswith("/fhir")
        config = requests.get(base + "/.well-known/smart-configuration", timeout=10).json()
        assert config["token_endpoint"] == base[: -len("/fhir")] + "/auth/token"
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert base in out


def test_no_airflow_import() -> None:
    code = "import sys, airflow_provider_smart.testing; print(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ}, timeout=60
    )
    assert result.stdout.strip() == "False"
