"""Issue 8 items 11 and 12 (auth part): no https->http downgrade, plain http only on loopback or behind
``allow_insecure_http``, and credentials kept out of URLs, reprs and errors.

The FHIR server here is https on 127.0.0.1 (a self-signed certificate, trusted through ``verify``);
a plain-http "collector" on 127.0.0.1 records anything that would have leaked to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from hostile import Handler, HostileServer

from airflow_provider_smart.auth import BackendServicesAuth, ClientSecretAuth, OriginPolicy
from airflow_provider_smart.connection import build_auth, settings_from_connection
from airflow_provider_smart.exceptions import DiscoveryError, SmartConfigError
from airflow_provider_smart.origins import insecure_http_refusal

TOKEN = {"access_token": "tok-123", "token_type": "bearer", "expires_in": 300}


def tls_session(cert: Path) -> requests.Session:
    session = requests.Session()
    session.verify = str(cert)
    return session


def test_discovered_http_token_endpoint_gets_no_assertion(tls_cert: tuple[Path, Path], es384: Any) -> None:
    with HostileServer({"/token": lambda h: h.send_json(200, TOKEN)}) as collector:
        config = {"token_endpoint": collector.url + "/token", "capabilities": []}
        routes = {"/fhir/.well-known/smart-configuration": lambda h: h.send_json(200, config)}
        with HostileServer(routes, tls=tls_cert) as fhir:
            auth = BackendServicesAuth(
                client_id="c",
                private_key=es384.pem,
                kid=es384.kid,
                fhir_base_url=fhir.url + "/fhir",
                session=tls_session(tls_cert[0]),
                alg="ES384",
            )
            with pytest.raises(DiscoveryError, match=r"token_endpoint .* refusing to downgrade"):
                auth.get_token()
    assert collector.requests == []  # no signed assertion over plain http


def test_discovered_http_token_endpoint_gets_no_client_secret(tls_cert: tuple[Path, Path]) -> None:
    with HostileServer({"/token": lambda h: h.send_json(200, TOKEN)}) as collector:
        config = {"token_endpoint": collector.url + "/token"}
        routes = {"/fhir/.well-known/smart-configuration": lambda h: h.send_json(200, config)}
        with HostileServer(routes, tls=tls_cert) as fhir:
            auth = ClientSecretAuth(
                client_id="c",
                client_secret="s3cret",
                method="client_secret_post",
                fhir_base_url=fhir.url + "/fhir",
                session=tls_session(tls_cert[0]),
            )
            with pytest.raises(DiscoveryError):
                auth.get_token()
    assert collector.requests == []


def test_bearer_token_never_follows_https_base_to_http(tls_cert: tuple[Path, Path]) -> None:
    def seen(handler: Handler) -> None:
        handler.send_json(200, {"auth": handler.headers.get("Authorization")})

    with (
        HostileServer({"/file": seen}) as plain,
        HostileServer({"/token": lambda h: h.send_json(200, TOKEN), "/file": seen}, tls=tls_cert) as fhir,
    ):
        auth = ClientSecretAuth(
            client_id="c",
            client_secret="s3cret",
            token_url=fhir.url + "/token",
            fhir_base_url=fhir.url + "/fhir",
            session=tls_session(tls_cert[0]),
            allowed_hosts=["127.0.0.1"],
        )
        auth.allow_origin(plain.url + "/file")  # e.g. an http:// Content-Location from the kick-off
        session = tls_session(tls_cert[0])
        session.auth = auth
        # verify per request: this environment sets REQUESTS_CA_BUNDLE, which beats a session's verify
        got = session.get(fhir.url + "/file", verify=str(tls_cert[0])).json()
        assert got == {"auth": "Bearer tok-123"}  # https: sent
        assert session.get(plain.url + "/file").json() == {"auth": None}  # same host, plain http: not sent
    assert not auth.is_allowed(plain.url + "/file")


def test_insecure_flag_allows_http_explicitly(tls_cert: tuple[Path, Path]) -> None:
    policy = OriginPolicy(["https://ehr.example/fhir"], ["files.example"], allow_insecure_http=True)
    assert policy.allows("http://files.example/a") and policy.allows("http://ehr.example:443/x") is False
    assert OriginPolicy(["https://ehr.example/fhir"], ["files.example"]).allows("http://files.example/a") is False


def test_configured_http_token_url_with_https_base_is_refused() -> None:
    with pytest.raises(SmartConfigError, match="plain http") as err:
        ClientSecretAuth(
            client_id="c",
            client_secret="s",
            fhir_base_url="https://ehr.example/fhir",
            token_url="http://ehr.example/token",
        )
    assert err.value.context["field"] == "token_url"


@pytest.mark.parametrize(
    ("url", "https_base", "flag", "refused"),
    [
        ("https://ehr.example/x", True, False, False),
        ("http://ehr.example/x", True, False, True),
        ("http://127.0.0.1:8080/x", True, False, True),  # no downgrade, even on loopback
        ("http://127.0.0.1:8080/x", False, False, False),
        ("http://127.5.6.7/x", False, False, False),
        ("http://[::1]:8080/x", False, False, False),
        ("http://localhost/x", False, False, False),
        ("http://ehr.internal/x", False, False, True),
        ("http://ehr.internal/x", False, True, False),
        ("http://ehr.example/x", True, True, False),
    ],
)
def test_plain_http_rule(url: str, https_base: bool, flag: bool, refused: bool) -> None:
    assert (insecure_http_refusal(url, base_is_https=https_base, allow_insecure_http=flag) is not None) is refused


# --- connection extras --------------------------------------------------------------------------------
def conn(host: str = "https://ehr.example/fhir", **extra: Any) -> Any:
    return settings_from_connection(
        host, "client", "pw", {"auth_method": "client_secret_basic", **extra}, conn_id="smart_x"
    )


def test_http_host_off_loopback_needs_the_insecure_flag() -> None:
    with pytest.raises(SmartConfigError, match="allow_insecure_http") as err:
        conn("http://ehr.internal/fhir")
    assert err.value.context["field"] == "host"
    assert conn("http://ehr.internal/fhir", allow_insecure_http=True).allow_insecure_http is True
    assert conn("http://127.0.0.1:8080/fhir").allow_insecure_http is False  # loopback is fine
    auth = build_auth(conn("http://ehr.internal/fhir", allow_insecure_http="true"))
    assert auth.allow_insecure_http and auth.is_allowed("http://ehr.internal/fhir/Patient")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"token_url": "http://ehr.example/token"}, "oauth_url"),  # the old name, read as oauth_url
        ({"oauth_url": "http://ehr.example/token"}, "oauth_url"),
        ({"allowed_hosts": "http://files.example"}, "allowed_hosts"),
        ({"allow_insecure_http": "yes please"}, "allow_insecure_http"),
    ],
)
def test_downgrades_in_extras_are_refused(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(SmartConfigError) as err:
        conn(**extra)
    assert err.value.context["field"] == field


@pytest.mark.parametrize("field", ["host", "oauth_url"])
def test_user_info_in_urls_is_refused_without_echoing_the_password(field: str) -> None:
    url = "https://alice:hunter2@ehr.example/fhir"
    with pytest.raises(SmartConfigError, match="user info") as err:
        conn(url) if field == "host" else conn(oauth_url=url)
    assert err.value.context["field"] == field
    assert "hunter2" not in str(err.value) and "hunter2" not in repr(err.value.to_dict())
    with pytest.raises(SmartConfigError) as err2:
        conn("alice:hunter2@ehr.example/fhir")  # no scheme either
    assert "hunter2" not in str(err2.value)


def test_header_values_are_secret() -> None:
    settings = conn(headers={"Epic-Client-ID": "api-key-123", "X-Other": "v"})
    assert "api-key-123" not in repr(settings)
    assert "api-key-123" in settings.secrets  # the hook's masker registers ConnectionSettings.secrets
    with pytest.raises(SmartConfigError, match="line break") as err:
        conn(headers={"X-Key": "api-key-456\r\nX-Injected: 1"})
    assert "api-key-456" not in str(err.value)
