"""The connection-test API the UI's Test button calls, over real HTTP: an Airflow API server and the sandbox.

The request bodies are built exactly as the UI of Airflow 3.3 builds them (``ConnectionList``'s Test button:
``port: Number(connection.port)``, the masked ``***`` password, the redacted extra), so these tests cover
what a person sees after pressing Test, without a browser. ``make ui-check`` does the same in Chromium.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_smart.testing.airflow_server import AirflowApiServer, ui_sends_port_zero_bug
from airflow_provider_smart.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS

# 2.11 has no API server (its Flask UI tests through /api/v1, see test_connection_test_2x.py)
pytestmark = pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS, reason="Airflow 2.x has no FastAPI API server")

REPO = Path(__file__).resolve().parents[2]
LAUNCH_SCOPE = "openid fhirUser offline_access user/*.rs"


@pytest.fixture(scope="module")
def sandbox(es384: Any) -> Iterator[Any]:
    from airflow_provider_smart.testing import SmartSandbox

    with SmartSandbox(patients=3) as sb:
        sb.register_client("es-client", jwks=es384.jwks, scopes="system/*.rs system/*.read")
        yield sb


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowApiServer]:
    home = tmp_path_factory.mktemp("airflow-api")
    with AirflowApiServer(home, env={"AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "tests" / "dags")}) as server:
        yield server


def create(api: AirflowApiServer, conn_id: str, **fields: Any) -> None:
    api.request("DELETE", f"/api/v2/connections/{conn_id}")
    body = {"connection_id": conn_id, "conn_type": "smart", **fields}
    if isinstance(body.get("extra"), dict):
        body["extra"] = json.dumps(body["extra"])
    response = api.request("POST", "/api/v2/connections", json=body)
    assert response.status_code == 201, response.text


def ui_test_body(api: AirflowApiServer, conn_id: str) -> dict[str, Any]:
    """The body the connection list's Test button posts: built from the GET response, as the UI does."""
    conn = api.request("GET", f"/api/v2/connections/{conn_id}").json()
    extra = conn.get("extra")
    return {
        "conn_type": conn["conn_type"],
        "connection_id": conn["connection_id"],
        "description": conn.get("description") or "",
        "extra": "{}" if extra in ("", None) else extra,
        "host": conn.get("host") or "",
        "login": conn.get("login") or "",
        "password": conn.get("password") or "",
        "port": int(conn["port"] or 0),  # Number(null) === 0
        "schema": conn.get("schema") or "",
    }


def press_test(api: AirflowApiServer, conn_id: str) -> requests.Response:
    return api.request("POST", "/api/v2/connections/test", json=ui_test_body(api, conn_id))


def press_test_expecting_green(api: AirflowApiServer, conn_id: str, *secrets: str) -> dict[str, Any] | None:
    """Test a saved connection holding a secret: its result on 3.1+; on 3.0, which tests the masked copy the
    list shows, check that the result says so and how to test instead, and return None."""
    result = press_test(api, conn_id).json()
    if AIRFLOW_V_3_1_PLUS:
        return result
    assert result["status"] is False and "arrived as '***'" in result["message"], result
    assert "airflow-smart test --conn-id" in result["message"]
    assert_readable(result["message"], *secrets)
    out = api.run("airflow-smart", "test", "--conn-id", conn_id)
    assert out.returncode == 0 and "\nOK: Connected: " in "\n" + out.stdout, out.stdout + out.stderr
    return None


def assert_readable(message: str, *secrets: str) -> None:
    assert not re.match(r"\w*(Error|Exception)\b", message), message  # a sentence, not a class name
    assert "Connection '" not in message  # never the random id the API server tests under
    for secret in secrets:
        assert secret not in message


def backend_services(sandbox: Any, key: Any, **extra: Any) -> dict[str, Any]:
    return {
        "host": sandbox.url,
        "port": sandbox.port,
        "login": "es-client",
        "extra": {"auth_method": "private_key_jwt", "private_key": key.pem, "kid": key.kid, **extra},
    }


# First on the module's API server: Airflow 3.1 builds the legacy (hook-method) form only in a process
# that has not loaded provider hooks yet (a Test press does); 3.0 rebuilds them, 3.2+ read the declaration.
def test_the_form_and_a_saved_connection_show_no_masked_non_secret(
    api: AirflowApiServer, sandbox: Any, es384: Any
) -> None:
    meta = {m["connection_type"]: m for m in api.request("GET", "/ui/connections/hook_meta").json()}["smart"]
    assert all(field["value"] != "***" for field in meta["extra_fields"].values())
    extra = {
        "key_file": "/keys/client.pem",
        "oauth_url": f"{sandbox.url}/token",
        "rotation_store": "variable",
        "scope": "system/Patient.rs",
    }
    create(api, "smart_api_shown", host=sandbox.url, login="c", extra={**extra, "private_key": es384.pem})
    shown = json.loads(api.request("GET", "/api/v2/connections/smart_api_shown").json()["extra"])
    assert shown["private_key"] == "***"
    assert {k: shown[k] for k in extra} == extra


def test_backend_services_connection_tests_green(api: AirflowApiServer, sandbox: Any, es384: Any) -> None:
    create(api, "smart_api_good", **backend_services(sandbox, es384))
    result = press_test_expecting_green(api, "smart_api_good", es384.pem)
    if result is None:  # Airflow 3.0: a key file is no secret, so its connection tests from the list
        key_file = api.home / "es384.pem"
        key_file.write_text(es384.pem)
        fields = backend_services(sandbox, es384)
        fields["extra"] = {"kid": es384.kid, "key_file": str(key_file)}
        create(api, "smart_api_good", **fields)
        result = press_test(api, "smart_api_good").json()
    assert result["status"] is True, result
    assert result["message"].startswith("Connected: the server issued an access token for scope system/*.rs")
    assert_readable(result["message"], es384.pem)


def test_a_wrong_key_tests_red_with_a_readable_message(api: AirflowApiServer, sandbox: Any, rs384: Any) -> None:
    create(api, "smart_api_wrong_key", **backend_services(sandbox, rs384, kid="es-key-1"))
    if not AIRFLOW_V_3_1_PLUS:  # 3.0 tests the masked copy: the stored key is checked by the CLI instead
        out = api.run("airflow-smart", "test", "--conn-id", "smart_api_wrong_key")
        assert out.returncode != 0 and "invalid_client" in out.stdout + out.stderr
        assert rs384.pem not in out.stdout + out.stderr
        return
    result = press_test(api, "smart_api_wrong_key").json()
    assert result["status"] is False
    assert "invalid_client" in result["message"]
    assert "check the client id" in result["message"].lower()
    assert_readable(result["message"], rs384.pem)


def test_a_connection_without_port(api: AirflowApiServer, sandbox: Any, es384: Any) -> None:
    """Airflow 3.3.1/3.3.2 reject the UI's request before our hook runs; other versions test it green."""
    fields = backend_services(sandbox, es384)
    del fields["port"]
    create(api, "smart_api_no_port", **fields)
    response = press_test(api, "smart_api_no_port")
    if not AIRFLOW_V_3_1_PLUS:
        assert "arrived as '***'" in response.json()["message"]
    elif ui_sends_port_zero_bug():
        assert response.status_code == 400
        assert "differs from the stored connection" in response.json()["detail"]
    else:
        assert response.json()["status"] is True
    # The documented alternatives work on every version, reading the stored connection.
    out = api.run("airflow", "connections", "test", "smart_api_no_port")
    assert out.returncode == 0 and "Connection success!" in out.stdout, out.stdout + out.stderr
    out = api.run("airflow-smart", "test", "--conn-id", "smart_api_no_port")
    assert out.returncode == 0 and "\nOK: Connected: " in "\n" + out.stdout, out.stdout + out.stderr


def test_a_port_that_disagrees_with_the_url_is_named(api: AirflowApiServer, sandbox: Any, es384: Any) -> None:
    create(api, "smart_api_bad_port", **{**backend_services(sandbox, es384), "port": 1})
    if not AIRFLOW_V_3_1_PLUS:  # 3.0 tests the masked copy: the stored connection is checked by the CLI instead
        out = api.run("airflow-smart", "test", "--conn-id", "smart_api_bad_port")
        assert out.returncode != 0 and "The port 1 does not match the FHIR base URL" in out.stdout + out.stderr
        return
    result = press_test(api, "smart_api_bad_port").json()
    assert result["status"] is False
    assert result["message"].startswith(f"The port 1 does not match the FHIR base URL, whose port is {sandbox.port}")


def test_a_refresh_token_connection_survives_test_and_works_at_run_time(api: AirflowApiServer, sandbox: Any) -> None:
    refresh_token = sandbox.launch_refresh_token("api-launch-app", LAUNCH_SCOPE)
    create(
        api,
        "smart_api_refresh",
        host=sandbox.url,
        port=sandbox.port,
        login="api-launch-app",
        extra={"auth_method": "refresh_token", "refresh_token": refresh_token},
    )
    before = sandbox.refresh_requests
    result = press_test_expecting_green(api, "smart_api_refresh", refresh_token)
    if result is not None:
        assert result["status"] is True, result
        assert "has not been used yet" in result["message"] and "was not refreshed" in result["message"]
        assert f"token endpoint is {sandbox.token_url}" in result["message"]
        assert_readable(result["message"], refresh_token)
    assert sandbox.refresh_requests == before  # Test did not spend the refresh token

    env = {"SMART_TEST_CONN_ID": "smart_api_refresh", "SMART_TEST_REQUIRED_SCOPES": "user/Patient.rs"}
    sandbox.token_lifetime = 1  # every run finds the stored access token expired and must refresh
    for run in (1, 2):
        out = api.run("airflow", "dags", "test", "smart_token_check", extra_env=env)
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        assert sandbox.refresh_requests == before + run
        result = press_test_expecting_green(api, "smart_api_refresh", refresh_token)  # reads the Variables
        if result is not None:
            assert result["status"] is True and "rotated from the one in the connection" in result["message"]
            assert "granted scope: " in result["message"]
        assert sandbox.refresh_requests == before + run
    failed = [e for e in sandbox.token_log if e.get("grant_type") == "refresh_token" and not e.get("ok")]
    assert failed == []  # no refresh ever used a burnt token
