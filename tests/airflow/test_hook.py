"""SmartHook against the sandbox with connections from AIRFLOW_CONN_* env vars."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from airflow_provider_smart.exceptions import SmartConfigError
from airflow_provider_smart.hooks.smart import SmartHook


def test_get_conn_returns_an_authenticated_session(smart_conn: Any, sandbox: Any) -> None:
    hook = SmartHook()
    session = hook.get_conn()
    response = session.get(f"{hook.fhir_base_url}/Patient")
    assert response.status_code == 200
    assert response.json()["resourceType"] == "Bundle"
    assert hook.smart_configuration.token_endpoint == sandbox.token_url
    assert session.headers["Accept"] == "application/fhir+json"


def test_hook_reuses_tokens_across_sessions_and_hooks(smart_conn: Any, sandbox: Any) -> None:
    for _ in range(3):
        SmartHook().get_conn().get(f"{sandbox.url}/Patient").raise_for_status()
    assert sandbox.token_requests == 1


def test_extra_headers_and_token_url(smart_conn: Any, sandbox: Any) -> None:
    smart_conn(headers={"Epic-Client-ID": "epic-123"}, token_url=sandbox.token_url)
    SmartHook().get_conn().get(f"{sandbox.url}/Patient").raise_for_status()
    routes = [e["route"] for e in sandbox.requests_log]
    assert "discovery" not in routes  # token_url skips discovery
    assert sandbox.requests_log[-1]["headers"].get("epic-client-id") == "epic-123"


def test_test_connection_reports_scope_never_the_token(smart_conn: Any, sandbox: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    ok, message = SmartHook().test_connection()
    assert ok, message
    assert message.startswith("Connected: ")
    assert "system/*.rs" in message and "valid until" in message
    tokens = [e for e in sandbox.issued_tokens()] if hasattr(sandbox, "issued_tokens") else []
    for token in tokens:
        assert token not in message and token not in caplog.text


def test_test_connection_never_raises(smart_conn: Any) -> None:
    smart_conn(private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
    ok, message = SmartHook().test_connection()
    assert not ok
    assert "private_key could not be parsed" in message
    assert "smart_default" not in message and not re.match(r"\w*(Error|Exception)\b", message)


def test_test_connection_reports_auth_errors(smart_conn: Any, sandbox: Any) -> None:
    smart_conn(scope="system/Nothing.cud")
    ok, message = SmartHook().test_connection()
    assert not ok and "invalid_scope" in message


def test_bad_connection_raises_config_error_naming_the_field(smart_conn: Any) -> None:
    smart_conn(raw={"conn_type": "smart", "host": "", "login": "x"})
    with pytest.raises(SmartConfigError, match="host"):
        SmartHook().get_conn()


def test_tokens_and_keys_are_registered_with_the_secret_masker(smart_conn: Any, es384: Any) -> None:
    from airflow_provider_smart.compat import redact

    hook = SmartHook()
    token = hook.get_token()
    assert redact(token.access_token) == "***"
    assert "BEGIN PRIVATE KEY" not in str(redact(es384.pem))
    assert token.access_token not in repr(hook.auth) and token.access_token not in repr(token)


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"timeout": float("nan")}, "timeout"), ({"scope": ["system/*.rs"]}, "scope"), ({"alg": 384}, "alg")],
)
def test_an_airflow_conn_env_var_with_a_bad_field_names_it(monkeypatch, extra, field) -> None:
    """AIRFLOW_CONN_* JSON carries typed values the form never does; they are checked the same way."""
    from airflow_provider_smart.exceptions import SmartConfigError
    from airflow_provider_smart.hooks.smart import SmartHook

    extra = {"kid": "k", **extra}
    value = {"conn_type": "smart", "host": "https://fhir.example.org/r4", "login": "c", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_SMART_BAD", json.dumps(value))
    with pytest.raises(SmartConfigError) as err:
        _ = SmartHook("smart_bad").settings
    assert err.value.context.get("field") == field and "smart_bad" in str(err.value)
