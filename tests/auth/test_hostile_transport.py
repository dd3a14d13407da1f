"""Issue 8 items 10, 13 and 17 (transport): hostile token and discovery servers over real HTTP on 127.0.0.1.

* 10: a redirect from the token endpoint is an error; nothing reaches the Location's origin.
* 13: a server dripping bytes under the read timeout cannot stretch a 1 s token request or discovery.
* 17: the session's ``verify`` wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE; redirect loops and
  oversized answers give our own errors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from hostile import Handler, HostileServer

from airflow_provider_smart.auth import BackendServicesAuth, ClientSecretAuth, discover_smart_configuration
from airflow_provider_smart.exceptions import DiscoveryError, SmartAuthError, SmartTransportError

TOKEN = {"access_token": "tok-123", "token_type": "bearer", "expires_in": 300, "scope": "system/*.rs"}


def token_route(handler: Handler) -> None:
    handler.send_json(200, TOKEN)


def secret_auth(server: HostileServer, method: str = "client_secret_post", **kwargs: Any) -> ClientSecretAuth:
    kwargs.setdefault("timeout", 5)
    return ClientSecretAuth(
        client_id="c1",
        client_secret="s3cret-value",
        method=method,
        token_url=server.url + "/token",
        fhir_base_url=server.url + "/fhir",
        **kwargs,
    )


# --- item 10: no redirect from the token endpoint ---------------------------------------------------
@pytest.mark.parametrize("status", [307, 308, 302])
@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_token_endpoint_redirect_is_an_error_and_sends_nothing_on(status: int, method: str) -> None:
    with HostileServer() as collector:
        target = collector.url + "/collect?X-Sig=hunter2"
        with (
            HostileServer({"/token": lambda h: h.redirect(status, target)}) as server,
            pytest.raises(SmartAuthError) as err,
        ):
            secret_auth(server, method).get_token()
    assert collector.requests == []  # neither the secret nor anything else reached the Location
    assert err.value.error == "redirect"
    assert err.value.status == status
    message = str(err.value)
    assert collector.url + "/collect?..." in message  # names the Location, query redacted
    assert "hunter2" not in message and "s3cret-value" not in message
    assert "hunter2" not in repr(err.value.to_dict())


def test_signed_assertion_is_not_handed_to_a_redirect_target(sandbox: Any, es384: Any) -> None:
    with HostileServer() as collector:
        sandbox.add_fault("token", status=307, headers={"Location": collector.url + "/token"})
        auth = BackendServicesAuth(
            client_id="es-client", private_key=es384.pem, kid=es384.kid, fhir_base_url=sandbox.url, scope="system/*.rs"
        )
        with pytest.raises(SmartAuthError, match="never follow redirects") as err:
            auth.get_token()
    assert collector.requests == []
    assert err.value.context["location"] == collector.url + "/token"


# --- item 13: overall deadlines ---------------------------------------------------------------------
@pytest.mark.parametrize("headers_too", [False, True], ids=["drip-body", "drip-headers"])
def test_dripping_token_endpoint_is_cut_at_the_deadline(headers_too: bool) -> None:
    import json

    body = json.dumps(TOKEN).encode()

    def drip(handler: Handler) -> None:
        handler.drip(body, 0.3, stop=handler.server.owner.stop, headers_too=headers_too)

    with HostileServer({"/token": drip}) as server:
        auth = secret_auth(server, timeout=1)
        started = time.monotonic()
        with pytest.raises(SmartTransportError, match=r"did not answer within 1 s") as err:
            auth.get_token()
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"a 1 s token request lasted {elapsed:.1f} s"
    assert err.value.kind == "smart.transport"
    assert err.value.context["reason"] == "deadline_exceeded"


def test_dripping_discovery_is_cut_at_the_deadline() -> None:
    def drip(handler: Handler) -> None:
        handler.drip(b'{"token_endpoint": "/token", "capabilities": []}', 0.3, stop=handler.server.owner.stop)

    with HostileServer({"/fhir/.well-known/smart-configuration": drip}) as server:
        started = time.monotonic()
        with pytest.raises(SmartTransportError, match="did not answer within 1 s"):
            discover_smart_configuration(server.url + "/fhir", timeout=1)
        assert time.monotonic() - started < 2.5


def test_silent_server_is_cut_at_the_deadline_too() -> None:
    def silent(handler: Handler) -> None:
        handler.server.owner.stop.wait(30)

    with HostileServer({"/token": silent}) as server:
        started = time.monotonic()
        with pytest.raises(SmartTransportError):
            secret_auth(server, timeout=1).get_token()
        assert time.monotonic() - started < 2.5


def test_oversized_token_answer_is_refused() -> None:
    def huge(handler: Handler) -> None:
        handler.send_json(200, {**TOKEN, "padding": "x" * (2 * 1024 * 1024)})

    with HostileServer({"/token": huge}) as server, pytest.raises(SmartTransportError, match="more than 1048576"):
        secret_auth(server).get_token()


# --- item 17: verify, redirect loops ----------------------------------------------------------------
@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_session_verify_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tls_cert: tuple[Path, Path], variable: str
) -> None:
    import certifi

    monkeypatch.setenv(variable, certifi.where())  # a bundle that does not trust our test CA
    with HostileServer({"/token": token_route}, tls=tls_cert) as server:
        session = requests.Session()
        session.verify = str(tls_cert[0])
        assert secret_auth(server, session=session).get_token().access_token == "tok-123"
        insecure = requests.Session()
        insecure.verify = False  # the connection said verify: false; the environment must not override it
        assert secret_auth(server, session=insecure).get_token().access_token == "tok-123"


def test_verify_true_still_verifies(tls_cert: tuple[Path, Path]) -> None:
    with HostileServer({"/token": token_route}, tls=tls_cert) as server, pytest.raises(SmartTransportError):
        secret_auth(server).get_token()  # certifi does not trust the test CA


def test_discovery_follows_a_same_origin_redirect() -> None:
    routes = {
        "/fhir/.well-known/smart-configuration": lambda h: h.redirect(301, "/config.json"),
        "/config.json": lambda h: h.send_json(200, {"token_endpoint": "token", "capabilities": []}),
    }
    with HostileServer(routes) as server:
        config = discover_smart_configuration(server.url + "/fhir", timeout=5)
    assert config.token_endpoint == server.url + "/fhir/token"  # relative to the FHIR base, not the redirect


def test_discovery_redirect_loop_is_our_error() -> None:
    routes = {
        "/fhir/.well-known/smart-configuration": lambda h: h.redirect(302, "/a"),
        "/a": lambda h: h.redirect(302, "/fhir/.well-known/smart-configuration"),
    }
    with HostileServer(routes) as server, pytest.raises(DiscoveryError, match="Redirect loop") as err:
        discover_smart_configuration(server.url + "/fhir", timeout=5)
    assert "/a -> " in str(err.value)
    assert len(server.requests) == 2


def test_discovery_never_follows_https_to_http(tls_cert: tuple[Path, Path]) -> None:
    with HostileServer() as plain:
        routes = {"/fhir/.well-known/smart-configuration": lambda h: h.redirect(302, plain.url + "/cfg")}
        with HostileServer(routes, tls=tls_cert) as server:
            session = requests.Session()
            session.verify = str(tls_cert[0])
            with pytest.raises(DiscoveryError, match="refusing to downgrade"):
                discover_smart_configuration(server.url + "/fhir", session=session, timeout=5)
    assert plain.requests == []
