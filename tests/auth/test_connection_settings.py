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
    assert s.scope == "system/*.rs"  # SMART v2: read and search everything
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
        ({"private_key_path": "/nonexistent/key.pem", "private_key": None}, "key_file", "cannot be read"),
        ({"key_file": "/nonexistent/key.pem", "private_key": None}, "key_file", "cannot be read"),
        ({"auth_method": "client_secret_basic"}, "password", "client secret"),
        ({"token_url": "token"}, "oauth_url", "absolute"),
        ({"oauth_url": "token"}, "oauth_url", "absolute"),
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


def test_new_extra_names_and_their_older_aliases_give_the_same_settings(tmp_path) -> None:
    path = tmp_path / "key.pem"
    path.write_text(RSA_PEM)
    new = {"key_file": str(path), "oauth_url": BASE + "/token", "rotation_store": "memory"}
    old = {"private_key_path": str(path), "token_url": BASE + "/token", "token_store": "memory"}
    for extra in (new, old):
        s = settings(private_key=None, **extra)
        assert s.private_key == RSA_PEM and s.token_url == BASE + "/token"
        r = settings(private_key=None, auth_method="refresh_token", refresh_token="rt", **extra)
        assert r.token_store == "memory"


def test_a_new_name_wins_over_its_alias_unless_it_is_empty() -> None:
    s = settings(oauth_url=BASE + "/new-token", token_url=BASE + "/old-token")
    assert s.token_url == BASE + "/new-token"
    s = settings(oauth_url="", token_url=BASE + "/old-token")
    assert s.token_url == BASE + "/old-token"


@pytest.mark.parametrize(
    ("host", "port", "ok"),
    [
        (BASE, None, True),
        (BASE, 0, True),  # what the UI of Airflow 3.3.1/3.3.2 sends for an empty port
        (BASE, 443, True),
        (BASE, "443", True),
        (BASE, 80, False),
        ("http://127.0.0.1:8900/fhir", 8900, True),
        ("http://127.0.0.1:8900/fhir", 80, False),
        ("http://localhost/r4", 80, True),
        (BASE, "https", False),
    ],
)
def test_the_port_is_optional_and_must_agree_with_the_base_url(host: str, port: Any, ok: bool) -> None:
    if ok:
        settings_from_connection(host, "client", None, {"private_key": EC_PEM, "kid": "k1"}, port=port)
        return
    with pytest.raises(SmartConfigError) as err:
        settings_from_connection(host, "client", None, {"private_key": EC_PEM, "kid": "k1"}, port=port)
    assert err.value.context["field"] == "port"
    assert "port" in str(err.value)


def test_refresh_token_connections_default_to_the_granted_scope() -> None:
    def refresh(**extra: Any):
        return settings_from_connection(
            BASE, "app", None, {"auth_method": "refresh_token", "refresh_token": "rt", **extra}
        )

    assert refresh().scope == ""  # refreshes ask for nothing: the server keeps the granted scope
    assert refresh(scope="system/*.read").scope == ""  # the old form's pre-filled default, never a user grant
    assert refresh(scope="patient/Observation.rs").scope == "patient/Observation.rs"
    assert refresh().token_store == "variable"


def test_errors_without_conn_id_start_with_a_sentence() -> None:
    with pytest.raises(SmartConfigError) as err:
        settings_from_connection(BASE, "client", None, {"private_key": EC_PEM})
    assert str(err.value).startswith("The Key ID (kid) is empty")


def test_the_vendor_extra_names_a_profile_or_auto() -> None:
    assert settings().vendor == "auto"
    assert settings(vendor="Oracle").vendor == "cerner" and settings(vendor="EPIC").vendor == "epic"
    with pytest.raises(SmartConfigError, match="vendor 'nextgen' is unknown: use 'auto' or one of") as caught:
        settings(vendor="nextgen")
    assert caught.value.context["field"] == "vendor"
