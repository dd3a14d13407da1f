"""``airflow-smart doctor`` and the Test button's short form of it, against the sandbox and hostile servers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_smart.cli import main
from airflow_provider_smart.connection import settings_from_connection
from airflow_provider_smart.doctor import FAIL, OK, WARN, Doctor, export_levels


def doctor(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_doctor_reports_every_check_against_the_sandbox(smart_conn, sandbox, es384, capsys) -> None:
    code, out, err = doctor(capsys)
    assert code == 0, out + err
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["discovery"].split()[0] == "OK" and sandbox.token_url in lines["discovery"]
    assert lines["clock"].split()[0] == "OK" and "the server's clock agrees with ours" in lines["clock"]
    assert "granted system/*.rs; lifetime 300 s" in lines["token"]
    assert "$export declared at system, Patient, Group level" in out
    software = requests.get(f"{sandbox.url}/metadata", timeout=10).json()["software"]["name"]
    assert (
        lines["vendor"].split()[0] == "OK" and f"profile generic (detected); software {software!r}" in lines["vendor"]
    )
    assert lines["tls"].split()[0] == "SKIP" and lines["jku"].split()[0] == "SKIP"
    for secret in [*sandbox.issued_tokens(), es384.pem.splitlines()[1]]:
        assert secret not in out + err


def test_granted_scopes_are_compared_with_the_requested_ones(smart_conn, sandbox, rs384, capsys) -> None:
    extra = {"private_key": rs384.pem, "kid": rs384.kid}  # rs-client may have Patient and Observation only
    smart_conn(raw={"conn_type": "smart", "host": sandbox.url, "login": "rs-client", "extra": extra})
    code, out, _ = doctor(capsys, "--scope", "system/Patient.rs system/Condition.rs", "--json")
    token = next(c for c in json.loads(out)["checks"] if c["name"] == "token")
    assert code == 0 and token["status"] == WARN
    assert token["granted"] == ["system/Patient.rs"] and "not granted: system/Condition.rs" in token["summary"]


def test_the_key_of_another_client_fails_the_token_check_and_exits_1(smart_conn, sandbox, rs384, capsys) -> None:
    extra = {"private_key": rs384.pem, "kid": rs384.kid}
    smart_conn(raw={"conn_type": "smart", "host": sandbox.url, "login": "es-client", "extra": extra})
    code, out, _ = doctor(capsys)
    assert code == 1 and "FAIL  token" in out and "invalid_client" in out


def test_a_server_clock_ten_minutes_off_fails(hostile_server) -> None:
    server = hostile_server(lambda handler: handler.reply(200, {"resourceType": "CapabilityStatement"}))
    settings = settings_from_connection(server.url, "c", "secret", {"auth_method": "client_secret_basic"})
    check = Doctor(settings, clock=lambda: time.time() + 600).clock_skew()  # our clock runs 10 minutes fast
    assert check.status == FAIL and "s behind ours" in check.summary and "NTP" in check.summary
    assert 598 <= -check.details["skew_seconds"] <= 602
    assert Doctor(settings, clock=lambda: time.time() + 45).clock_skew().status == WARN
    assert Doctor(settings).clock_skew().status == OK


def test_the_certificate_expiry_is_reported(tmp_path: Path) -> None:
    from airflow_provider_smart.testing.local_http import CountingServer, QuietHandler
    from airflow_provider_smart.testing.tls import make_tls

    files = make_tls(tmp_path, days=10)
    with CountingServer(QuietHandler, files.server_context()).running() as server:
        settings = settings_from_connection(
            f"{server.base}/fhir", "c", "secret", {"auth_method": "client_secret_basic", "verify": str(files.ca)}
        )
        check = Doctor(settings).tls()
    assert check.status == WARN and "(10 days)" in check.summary and check.details["days_left"] == 10


def test_a_jku_that_no_longer_holds_our_key_fails_doctor_and_the_test_button(
    sandbox_factory, es384, rs384, smart_conn, tmp_path, capsys
) -> None:
    from airflow_provider_smart.testing.local_http import static_files

    (tmp_path / "jwks.json").write_text(json.dumps(es384.jwks))
    with static_files(tmp_path) as origin:
        jku = f"{origin}/jwks.json"
        sb = sandbox_factory(clients={"jku-client": {"jwks_url": jku, "scopes": "system/*.rs"}})
        extra = {"private_key": es384.pem, "kid": es384.kid, "jku": jku}
        smart_conn(raw={"conn_type": "smart", "host": sb.url, "login": "jku-client", "extra": extra})
        code, out, _ = doctor(capsys)
        assert code == 0 and "OK    jku" in out and "holds kid es-key-1" in out
        (tmp_path / "jwks.json").write_text(json.dumps(rs384.jwks))  # someone published over our key
        code, out, _ = doctor(capsys)  # the server still has our key cached: the token works, for now
        assert code == 1 and "FAIL  jku" in out and "lacks kid 'es-key-1'" in out and "OK    token" in out
        ok, message = _test_button()
        assert not ok and "But: jku: " in message and "airflow-smart doctor" in message
    smart_conn(raw={"conn_type": "smart", "host": sb.url, "login": "jku-client", "extra": extra})
    code, out, _ = doctor(capsys)  # the site is gone
    assert code == 1 and "FAIL  jku" in out and "cannot be reached" in out


def test_the_test_button_shows_the_short_form(smart_conn, sandbox) -> None:
    ok, message = _test_button()
    assert ok and message.startswith("Connected: the server issued an access token for scope system/*.rs")
    assert "Checks: discovery ok; clock skew " in message and "$export at system, Patient, Group" in message
    assert "no TLS" in message


def _test_button() -> tuple[bool, str]:
    from airflow.models.connection import Connection

    from airflow_provider_smart.hooks.smart import SmartHook

    return SmartHook(connection=Connection.get_connection_from_secrets("smart_default")).test_connection()


def test_export_levels_read_any_declaration_form() -> None:
    statement = {
        "rest": [
            {
                "operation": [
                    {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
                ],
                "resource": [{"type": "Group", "operation": [{"name": "group-export"}]}, {"type": "Patient"}],
            }
        ]
    }
    assert export_levels(statement) == {"system": True, "Patient": False, "Group": True}
    assert export_levels({}) == {"system": False, "Patient": False, "Group": False}


def test_bad_input_is_one_line_naming_the_argument(smart_conn, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--conn-id", "missing_conn"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [
        "airflow-smart doctor: error: argument --conn-id: the connection 'missing_conn' is not defined"
    ]


def test_refresh_token_connections_are_not_refreshed(smart_conn, sandbox, capsys) -> None:
    refresh = sandbox.launch_refresh_token("user-app")
    smart_conn(
        raw={
            "conn_type": "smart",
            "host": sandbox.url,
            "login": "user-app",
            "extra": {"auth_method": "refresh_token", "refresh_token": refresh, "rotation_store": "memory"},
        }
    )
    before = sandbox.refresh_requests
    code, out, _ = doctor(capsys)
    assert code == 0 and "SKIP  token" in out and sandbox.refresh_requests == before and refresh not in out
