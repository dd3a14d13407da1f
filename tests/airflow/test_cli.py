"""The airflow-smart CLI: keygen, and authorize end to end with a scripted browser step."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from task_output import checked_output

CLI = [sys.executable, "-m", "airflow_provider_smart.cli"]
DAGS = Path(__file__).resolve().parent.parent / "dags"

pytestmark = pytest.mark.slow  # every test runs the CLI (and some `airflow dags test`) in subprocesses


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_keygen_writes_a_private_key_and_prints_jwks_and_connection(tmp_path: Path, alg: str) -> None:
    out = subprocess.run(
        [*CLI, "keygen", "--alg", alg, "--kid", "k-1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    key = tmp_path / "private_key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in out.stdout  # the key is written, never printed
    jwks = json.loads((tmp_path / "jwks.json").read_text())
    assert jwks["keys"][0]["kid"] == "k-1" and jwks["keys"][0]["alg"] == alg and "d" not in jwks["keys"][0]
    connection = json.loads(out.stdout.strip().splitlines()[-1])
    from airflow_provider_smart.connection import settings_from_connection

    settings = settings_from_connection(connection["host"], connection["login"], None, connection["extra"])
    assert settings.kid == "k-1" and settings.alg == alg
    again = subprocess.run(
        [*CLI, "keygen", "--kid", "k-1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "--force" in again.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_authorize(sb: Any, *args: str) -> str:
    """Run `airflow-smart authorize`, act as the browser on the printed URL, return the CLI's output."""
    proc = subprocess.Popen(
        [*CLI, "authorize", "--no-browser", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(sb.authorize_url):
            browser = requests.get(line.strip(), timeout=30)  # follows the 302 to the loopback listener
            assert browser.status_code == 200 and "Authorised" in browser.text
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return "".join(lines) + rest


def test_authorize_then_bulk_export_through_a_refresh_token_connection(
    airflow_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_smart.testing import SmartSandbox

    redirect = f"http://127.0.0.1:{free_port()}/callback"
    with SmartSandbox(patients=6, resources_per_patient=2) as sb:
        sb.register_client(
            "launch-app", public=True, scopes="openid fhirUser offline_access user/*.rs", redirect_uris=[redirect]
        )
        output = run_authorize(
            sb,
            "--fhir-url",
            sb.url,
            "--client-id",
            "launch-app",
            "--scope",
            "openid fhirUser offline_access user/*.rs",
            "--redirect-uri",
            redirect,
        )
        assert "Authorised: scope" in output
        connection = json.loads(output.strip().splitlines()[-1])
        assert connection["extra"]["auth_method"] == "refresh_token" and connection["extra"]["refresh_token"]

        connection["extra"]["token_store"] = f"file:{tmp_path / 'tokens.json'}"
        monkeypatch.setenv("AIRFLOW_CONN_SMART_REFRESH", json.dumps(connection))
        monkeypatch.setenv("SMART_TEST_CONN_ID", "smart_refresh")
        monkeypatch.setenv("SMART_TEST_DEST", str(tmp_path / "export"))
        monkeypatch.setenv("SMART_TEST_EXPORT", json.dumps({"resource_types": ["Patient"]}))
        spec = importlib.util.spec_from_file_location("smart_export_test", DAGS / "smart_export_test.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        run = module.dag.test()
        assert run.state == "success"
        patients = (tmp_path / "export" / "Patient.1.ndjson").read_text().splitlines()
        assert len(patients) == 6
        assert sb.refresh_requests == 1  # the seeded refresh token was exchanged once, then reused
        stored = json.loads((tmp_path / "tokens.json").read_text())
        [entry] = stored.values()
        assert entry["refresh_token"] != connection["extra"]["refresh_token"]  # the rotated one was kept


def test_authorize_saves_the_refresh_token_into_a_db_connection(airflow_db: str) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    from airflow_provider_smart.testing import SmartSandbox

    redirect = f"http://127.0.0.1:{free_port()}/callback"
    with SmartSandbox(patients=2) as sb:
        sb.register_client(
            "db-app", client_secret="app-secret", scopes="offline_access user/*.rs", redirect_uris=[redirect]
        )
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "smart_launch_db").delete()
            session.add(
                Connection(
                    conn_id="smart_launch_db",
                    conn_type="smart",
                    host=sb.url,
                    login="db-app",
                    password="app-secret",
                    extra=json.dumps({"launch_scope": "offline_access user/*.rs"}),
                )
            )
        output = run_authorize(sb, "--conn-id", "smart_launch_db", "--redirect-uri", redirect)
        assert "saved in connection 'smart_launch_db'" in output
        assert "app-secret" not in output
        with create_session() as session:
            extra = session.query(Connection).filter(Connection.conn_id == "smart_launch_db").one().extra_dejson
        assert extra["auth_method"] == "refresh_token" and extra["refresh_token"]
        assert extra["refresh_token"] not in output


def test_rotation_persists_in_airflow_variables_across_task_processes(airflow_db: str, tmp_path: Path) -> None:
    """Two `airflow dags test` processes on one refresh_token connection (token_store=variable): the second
    must refresh with the token the first one rotated into a Variable; the connection's seed is burnt."""
    from airflow_provider_smart.testing import SmartSandbox

    redirect = f"http://127.0.0.1:{free_port()}/callback"
    with SmartSandbox(patients=2) as sb:
        sb.register_client("var-app", public=True, scopes="offline_access user/*.rs", redirect_uris=[redirect])
        output = run_authorize(
            sb,
            "--fhir-url",
            sb.url,
            "--client-id",
            "var-app",
            "--scope",
            "offline_access user/*.rs",
            "--redirect-uri",
            redirect,
        )
        connection = json.loads(output.strip().splitlines()[-1])
        assert connection["extra"].get("token_store", "variable") == "variable"
        env = {
            **os.environ,
            "AIRFLOW_CONN_SMART_DEFAULT": json.dumps(connection),
            "SMART_TEST_REQUIRED_SCOPES": "user/Patient.rs",
        }
        for expected_refreshes in (1, 2):
            # The second run's cached access token is still fresh: expire it so it must refresh again.
            sb.expire_tokens()
            sb.token_lifetime = 1 if expected_refreshes == 1 else 300
            out = subprocess.run(
                [sys.executable, "-m", "airflow", "dags", "test", "smart_token_check"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
            assert sb.refresh_requests == expected_refreshes
            assert connection["extra"]["refresh_token"] not in checked_output(out.stdout, out.stderr)
        failures = [e for e in sb.token_log if e.get("error")]
        assert failures == []  # no refresh ever used a burnt token


def test_cancel_export_lists_and_cancels_a_stale_export_holding_a_single_slot(airflow_db: str, tmp_path: Path) -> None:
    """The documented way out when Epic/Cerner hold one export per client and a stale one blocks the slot."""
    from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwks
    from airflow_provider_smart.bulk.inflight import InFlightRegistry
    from airflow_provider_smart.hooks.token_stores import AirflowVariableRecords
    from airflow_provider_smart.testing import SmartSandbox

    key = generate_private_key("ES384")
    (tmp_path / "key.pem").write_text(private_key_to_pem(key))
    with SmartSandbox(patients=2, quirks="cerner") as sb:
        sb.register_client("cx", jwks=public_jwks(key, kid="k1", alg="ES384"), scopes="system/*.rs")
        extra = {"key_file": str(tmp_path / "key.pem"), "kid": "k1", "scope": "system/*.rs", "vendor": "cerner"}
        connection = {"conn_type": "smart", "host": sb.url, "login": "cx", "extra": extra}
        env = {**os.environ, "AIRFLOW_CONN_SMART_CX": json.dumps(connection)}
        stale = requests.get(
            f"{sb.url}/$export",
            headers={
                "Accept": "application/fhir+json",
                "Prefer": "respond-async",
                "Authorization": f"Bearer {sb_token(sb, key)}",
            },
            timeout=30,
        ).headers["Content-Location"]
        registry = InFlightRegistry(AirflowVariableRecords(), sb.url, "cx")
        registry.add(stale, fingerprint="f", level="system", group_id=None, destination="/data/yesterday")

        def cli(*args: str) -> str:
            out = subprocess.run(
                [*CLI, "cancel-export", "--conn-id", "smart_cx", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr[-3000:]
            return out.stdout

        assert stale in cli() and "/data/yesterday" in cli()
        assert f"cancelled: {stale}" in cli("--status-url", stale)
        assert [r["method"] for r in sb.requests_log if r["route"] == "delete"] == ["DELETE"]
        assert stale.rsplit("/", 1)[-1] not in sb._bulk.jobs  # the server's slot is free
        assert registry.records() == []
        assert "No export of connection 'smart_cx'" in cli()


def sb_token(sb: Any, key: Any) -> str:
    from airflow_provider_smart.auth import BackendServicesAuth
    from airflow_provider_smart.auth.keys import private_key_to_pem

    auth = BackendServicesAuth(
        client_id="cx", private_key=private_key_to_pem(key), kid="k1", fhir_base_url=sb.url, scope="system/*.rs"
    )
    return auth.get_token().access_token
