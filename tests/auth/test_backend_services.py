"""BackendServicesAuth over real HTTP against the sandbox, which verifies every assertion."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import requests
from hostile import tokens_from_threads

from airflow_provider_smart.auth import (
    BackendServicesAuth,
    ClientSecretAuth,
    DiscoveryError,
    SmartAuthError,
    discover_smart_configuration,
)
from airflow_provider_smart.exceptions import SmartTransportError


def make_auth(sandbox: Any, key: Any, client_id: str = "es-client", **kwargs: Any) -> BackendServicesAuth:
    kwargs.setdefault("scope", "system/*.rs")
    return BackendServicesAuth(
        client_id=client_id, private_key=key.pem, kid=key.kid, fhir_base_url=sandbox.url, **kwargs
    )


def session_for(auth: Any) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    return session


def test_discovery_keeps_every_field(sandbox: Any) -> None:
    config = discover_smart_configuration(sandbox.url)
    assert config.token_endpoint == sandbox.token_url
    assert config.authorization_endpoint is None  # backend-only servers omit it; we must not require it
    assert "client-confidential-asymmetric" in config.capabilities
    assert "ES384" in config.token_endpoint_auth_signing_alg_values_supported
    assert config.raw["token_endpoint"] == sandbox.token_url
    assert config.source == "well-known"


def test_discovery_falls_back_to_capability_statement(es384: Any) -> None:
    from airflow_provider_smart.testing import SmartSandbox

    with SmartSandbox(well_known=False) as sb:
        config = discover_smart_configuration(sb.url)
        assert config.source == "capability-statement"
        assert config.token_endpoint == sb.token_url


def test_discovery_errors_say_what_is_wrong(sandbox: Any) -> None:
    with pytest.raises(DiscoveryError, match=r"has no /\.well-known/smart-configuration") as err:
        discover_smart_configuration(sandbox.origin + "/not-fhir")
    assert err.value.kind == "smart.discovery"
    with pytest.raises(SmartTransportError, match="Could not reach") as unreachable:
        discover_smart_configuration("http://127.0.0.1:9/fhir", timeout=2)
    assert unreachable.value.kind == "smart.transport"


@pytest.mark.parametrize("keyname", ["es384", "rs384"])
def test_token_for_both_algs_and_assertion_claims(request: pytest.FixtureRequest, sandbox: Any, keyname: str) -> None:
    key = request.getfixturevalue(keyname)
    client = "es-client" if keyname == "es384" else "rs-client"
    auth = make_auth(sandbox, key, client, scope="system/Patient.rs")
    assert auth.alg == key.alg
    token = auth.get_token()
    assert token.scope == "system/Patient.rs"
    assert token.access_token not in repr(token)
    assert sandbox.token_requests == 1

    assertion = auth.client_assertion(sandbox.token_url)
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": key.alg, "typ": "JWT", "kid": key.kid}
    claims = jwt.decode(assertion, jwt.PyJWK(key.jwks["keys"][0]).key, algorithms=[key.alg], audience=sandbox.token_url)
    assert claims["iss"] == claims["sub"] == client
    assert isinstance(claims["exp"], int) and claims["exp"] <= time.time() + 300
    assert (
        claims["jti"]
        != jwt.decode(auth.client_assertion(sandbox.token_url), options={"verify_signature": False})["jti"]
    )


def test_token_is_cached_and_resource_requests_carry_it(sandbox: Any, es384: Any) -> None:
    auth = make_auth(sandbox, es384)
    session = session_for(auth)
    for _ in range(5):
        response = session.get(f"{sandbox.url}/Patient", headers={"Accept": "application/fhir+json"})
        assert response.status_code == 200
        assert response.json()["resourceType"] == "Bundle"
    assert sandbox.token_requests == 1


def test_token_renewed_before_expiry(es384: Any) -> None:
    from airflow_provider_smart.testing import SmartSandbox

    with SmartSandbox(token_lifetime=3) as sb:
        sb.register_client("es-client", jwks=es384.jwks, scopes="system/*.rs")
        auth = make_auth(sb, es384, expiry_skew=2)
        first = auth.get_token()
        assert auth.get_token() is first
        time.sleep(1.7)  # now fewer than min(expiry_skew, half the 3 s lifetime) seconds remain
        second = auth.get_token()
        assert second.access_token != first.access_token
        assert sb.token_requests == 2


def test_401_renews_token_and_replays_once(sandbox: Any, es384: Any) -> None:
    session = session_for(make_auth(sandbox, es384))
    assert session.get(f"{sandbox.url}/Patient").status_code == 200
    sandbox.expire_tokens()
    response = session.get(f"{sandbox.url}/Patient")
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert sandbox.token_requests == 2


def test_second_401_is_returned_to_the_caller(sandbox: Any, es384: Any) -> None:
    session = session_for(make_auth(sandbox, es384))
    sandbox.add_fault("patient", status=401, times=2, body={"resourceType": "OperationOutcome", "issue": []})
    response = session.get(f"{sandbox.url}/Patient")
    assert response.status_code == 401
    assert sandbox.token_requests == 2  # one initial, one renewal; no loop


def test_concurrent_threads_share_one_token_request(sandbox: Any, es384: Any) -> None:
    tokens = tokens_from_threads(make_auth(sandbox, es384))
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert sandbox.token_requests == 1


def test_token_never_sent_to_another_origin(sandbox: Any, es384: Any) -> None:
    session = session_for(make_auth(sandbox, es384))
    foreign = sandbox.url.replace("127.0.0.1", "localhost")
    response = session.get(f"{foreign}/Patient")
    assert response.status_code == 401
    assert sandbox.requests_log[-1]["authorization"] is False
    assert sandbox.token_requests == 0


def test_allowed_hosts_extend_the_origins(sandbox: Any, es384: Any) -> None:
    session = session_for(make_auth(sandbox, es384, allowed_hosts=["localhost"]))
    assert session.get(sandbox.url.replace("127.0.0.1", "localhost") + "/Patient").status_code == 200


@pytest.mark.parametrize(
    ("client_id", "scope", "error"),
    [
        ("unknown-client", "system/*.rs", "invalid_client"),
        ("rs-client", "system/Patient.rs", "invalid_client"),  # signed with the ES key: signature fails
        ("es-client", "system/Nothing.cud", "invalid_scope"),
    ],
)
def test_token_endpoint_errors_carry_rfc6749_codes(
    sandbox: Any, es384: Any, client_id: str, scope: str, error: str
) -> None:
    auth = make_auth(sandbox, es384, client_id, scope=scope)
    with pytest.raises(SmartAuthError) as err:
        auth.get_token()
    assert err.value.kind == "smart.auth"
    assert err.value.error == error
    assert err.value.status in (400, 401)
    assert err.value.to_dict()["context"]["error"] == error


@pytest.mark.parametrize("code", ["invalid_grant", "unsupported_grant_type", "invalid_request"])
def test_other_oauth_error_codes_are_parsed(sandbox: Any, es384: Any, code: str) -> None:
    sandbox.add_fault("token", status=400, body={"error": code, "error_description": "nope"})
    with pytest.raises(SmartAuthError) as err:
        make_auth(sandbox, es384).get_token()
    assert (err.value.error, err.value.error_description, err.value.status) == (code, "nope", 400)
    assert "nope" in str(err.value)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"token_type": "mac"}, "token_type"),
        ({"access_token": None}, "no access_token"),
    ],
)
def test_malformed_token_responses_raise_invalid_response(sandbox: Any, es384: Any, patch: dict, needle: str) -> None:
    sandbox.token_response_patch = patch
    with pytest.raises(SmartAuthError, match=needle) as err:
        make_auth(sandbox, es384).get_token()
    assert err.value.error == "invalid_response"


def test_non_json_token_response(sandbox: Any, es384: Any) -> None:
    sandbox.add_fault("token", status=200, body="<html>proxy login</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(SmartAuthError, match="not JSON") as err:
        make_auth(sandbox, es384).get_token()
    assert err.value.error == "invalid_response"


@pytest.mark.parametrize(("patch", "lifetime"), [({"expires_in": None}, 300), ({"expires_in": "120"}, 120)])
def test_expires_in_missing_or_string(sandbox: Any, es384: Any, patch: dict, lifetime: int) -> None:
    sandbox.token_response_patch = {**patch, "token_type": "Bearer"}
    token = make_auth(sandbox, es384).get_token()
    assert abs(token.expires_in() - lifetime) < 5


def test_narrower_granted_scope_is_kept(sandbox: Any, rs384: Any) -> None:
    token = make_auth(sandbox, rs384, "rs-client", scope="system/Patient.rs system/Condition.rs").get_token()
    assert token.scope == "system/Patient.rs"


def test_transient_token_endpoint_failure_retries_with_a_new_assertion(sandbox: Any, es384: Any) -> None:
    sandbox.add_fault("token", status=503, body={"error": "temporarily_unavailable"})
    token = make_auth(sandbox, es384).get_token()
    assert token.access_token
    assert [e["route"] for e in sandbox.requests_log].count("token") == 2


def test_token_endpoint_429_without_retry_after_is_retried_with_backoff(sandbox: Any, es384: Any) -> None:
    """Medplum limits /oauth2 per IP and answers 429 with no Retry-After: back off, do not give up at once."""
    sandbox.add_fault("token", status=429, body={"error": "too_many_requests"}, times=3)
    started = time.monotonic()
    token = make_auth(sandbox, es384).get_token()
    assert token.access_token
    assert [e["route"] for e in sandbox.requests_log].count("token") == 4
    assert time.monotonic() - started >= 0.5 + 1 + 2  # exponential backoff between the tries


def test_token_endpoint_retries_honour_retry_after_and_stop_at_the_deadline(sandbox: Any, es384: Any) -> None:
    sandbox.add_fault("token", status=503, headers={"Retry-After": "1"}, times=100)
    started = time.monotonic()
    with pytest.raises(SmartAuthError, match="HTTP 503"):
        make_auth(sandbox, es384, timeout=2.5).get_token()
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 4.0  # waited as asked, and not past the timeout
    assert 2 <= [e["route"] for e in sandbox.requests_log].count("token") <= 3


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_secret_methods(sandbox: Any, method: str) -> None:
    auth = ClientSecretAuth(
        client_id="secret-client", client_secret="s3cret-value", method=method, fhir_base_url=sandbox.url
    )
    assert session_for(auth).get(f"{sandbox.url}/Patient").status_code == 200
    assert "s3cret-value" not in repr(auth)
    wrong = ClientSecretAuth(client_id="secret-client", client_secret="wrong", method=method, fhir_base_url=sandbox.url)
    with pytest.raises(SmartAuthError) as err:
        wrong.get_token()
    assert err.value.error == "invalid_client"
