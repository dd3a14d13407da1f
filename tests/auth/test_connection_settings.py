"""Every malformed connection raises SmartConfigError naming the field to fix."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem
from airflow_provider_smart.connection import build_auth, settings_from_connection
from airflow_provider_smart.exceptions import SmartConfigError

EC_PEM = private_key_to_pem(generate_private_key("ES384"))
RSA_PEM = private_key_to_pem(generate_private_key("RS384"))
BASE = "https://fhir.example.org/r4"


def settings(host: str | None = BASE, login: str | None = "client", password: str | None = None, **extra: Any):
    extra.setdefault("private_key", EC_PEM)
    extra.setdefault("kid", "k1")
    return settings_from_connection(host, login, password, extra, conn_id="smart_test")


def test_valid_connection_defaults() -> None:
    s = settings(headers='{"Epic-Client-ID": "abc"}', allowed_hosts="files.example.org, cdn.example.org:8443")
    assert s.fhir_base_url == BASE
    assert s.scope == "system/*.read"
    assert s.auth_method == "private_key_jwt"
    assert s.headers == {"Epic-Client-ID": "abc"}
    assert s.allowed_hosts == ["files.example.org", "cdn.example.org:8443"]
    assert "BEGIN" not in repr(s)


@pytest.mark.parametrize(
    ("kwargs", "field", "needle"),
    [
        ({"host": None}, "host", "host is empty"),
        ({"host": "fhir.example.org/r4"}, "host", "scheme"),
        ({"login": ""}, "login", "Client ID"),
        ({"private_key": ""}, "private_key", "needs a key"),
        ({"private_key": "not a pem"}, "private_key", "not a PEM"),
        (
            {"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"},
            "private_key",
            "could not be parsed",
        ),
        ({"alg": "RS384"}, "alg", "does not match the private key"),
        ({"private_key": RSA_PEM, "alg": "ES384"}, "alg", "does not match the private key"),
        ({"alg": "HS256"}, "alg", "not supported"),
        ({"auth_method": "magic"}, "auth_method", "unknown"),
        ({"kid": ""}, "kid", "kid"),
        ({"headers": "{not json"}, None, "JSON object"),
        ({"headers": '{"Authorization": "Bearer x"}'}, "headers", "Authorization"),
        ({"timeout": "soon"}, "timeout", "number"),
        ({"verify": "/nonexistent/ca.pem"}, "verify", "does not exist"),
        ({"private_key_path": "/nonexistent/key.pem", "private_key": None}, "private_key_path", "cannot be read"),
        ({"auth_method": "client_secret_basic"}, "password", "client secret"),
        ({"token_url": "token"}, "token_url", "absolute"),
    ],
)
def test_bad_connections_name_the_field(kwargs: dict[str, Any], field: str | None, needle: str) -> None:
    with pytest.raises(SmartConfigError) as err:
        settings(**kwargs)
    message = str(err.value)
    assert needle in message
    assert message.startswith("Connection 'smart_test': ")
    if field:
        assert err.value.context.get("field") == field
    assert "AAAA" not in message


def test_private_key_path(tmp_path) -> None:
    path = tmp_path / "key.pem"
    path.write_text(RSA_PEM)
    s = settings(private_key=None, private_key_path=str(path), token_url=BASE + "/token")
    assert s.private_key == RSA_PEM
    assert build_auth(s).alg == "RS384"  # chosen from the key type: no discovery with a token_url


def test_symmetric_connection_builds_client_secret_auth() -> None:
    s = settings(password="shh", auth_method="client_secret_post", private_key=None)
    auth = build_auth(s)
    assert type(auth).__name__ == "ClientSecretAuth"
    assert "shh" not in repr(auth) and "shh" not in repr(s)


def test_error_to_dict_redacts_secrets() -> None:
    err = SmartConfigError("boom", client_secret="shh", nested={"access_token": "tok", "ok": 1})
    assert err.to_dict() == {
        "kind": "smart.config",
        "message": "boom",
        "context": {"client_secret": "***", "nested": {"access_token": "***", "ok": 1}},
    }
