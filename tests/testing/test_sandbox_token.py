"""The sandbox token endpoint verifies client assertions for real and follows RFC 6749 errors."""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING

import jwt
import pytest
import requests

if TYPE_CHECKING:
    from conftest import Helper


def _hs256(h: Helper) -> str:
    claims = {"iss": "es-client", "sub": "es-client", "aud": h.sb.token_url, "exp": int(time.time()) + 60}
    return jwt.encode({**claims, "jti": "x"}, "k" * 32, algorithm="HS256", headers={"kid": "sbx-es-1"})


def _error(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body.get("error_description") or ""


@pytest.mark.parametrize(("client_id", "key"), [("es-client", "es"), ("rs-client", "rs")])
def test_token_success_es384_and_rs384(h: Helper, client_id: str, key: str) -> None:
    response = h.token_request(assertion=h.assertion(client_id, key), scope="system/*.rs")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/*.rs"
    assert len(body["access_token"]) >= 43
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert h.sb.token_requests == 1
    assert h.sb.issued_tokens() == [body["access_token"]]
    assert h.sb.token_log == [
        {
            "client_id": client_id,
            "grant_type": "client_credentials",
            "scope_requested": "system/*.rs",
            "scope_granted": "system/*.rs",
            "ok": True,
            "error": None,
            "error_description": None,
            "auth_method": "private_key_jwt",
        }
    ]


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda h: h.assertion(key="es-other"), "signature"),
        (lambda h: h.assertion(headers={"kid": "nope"}), "kid"),
        (lambda h: h.assertion(headers={"kid": None}), "kid"),
        (lambda h: h.assertion(headers={"typ": "JOSE"}), "typ"),
        (lambda h: h.assertion(key="rs", headers={"kid": "sbx-es-1"}), "does not match"),
        (lambda h: _hs256(h), "not accepted"),
        (lambda h: h.assertion(aud=h.sb.token_url + "/"), "aud"),
        (lambda h: h.assertion(aud=h.sb.url), "aud"),
        (lambda h: h.assertion(sub="someone-else"), "iss and sub"),
        (lambda h: h.assertion(exp=int(time.time()) + 900), "5 minutes"),
        (lambda h: h.assertion(exp=int(time.time()) - 60), "expired"),
        (lambda h: h.assertion(exp=int(time.time()) + 100.5), "integer"),
        (lambda h: h.assertion(drop=("exp",)), "exp"),
        (lambda h: h.assertion(drop=("jti",)), "jti"),
        (lambda h: h.assertion("unknown-client"), "unknown client"),
        (lambda h: h.assertion("rs-client", "es"), "kid"),
        (lambda h: "not.a.jwt", "well-formed"),
    ],
    ids=[
        "other-key",
        "unknown-kid",
        "no-kid",
        "typ",
        "alg-not-matching-key",
        "hs256",
        "aud-trailing-slash",
        "aud-fhir-base",
        "iss-ne-sub",
        "exp-too-far",
        "expired",
        "exp-float",
        "no-exp",
        "no-jti",
        "unknown-client",
        "kid-of-other-client",
        "garbage",
    ],
)
def test_assertion_failures_are_invalid_client(h: Helper, make, needle: str) -> None:
    response = h.token_request(assertion=make(h))
    status, error, description = _error(response)
    assert (status, error) == (401, "invalid_client"), description
    assert needle in description
    assert h.sb.token_requests == 0
    assert h.sb.token_log[-1]["ok"] is False


def test_jti_replay_is_rejected(h: Helper) -> None:
    assertion = h.assertion()
    assert h.token_request(assertion=assertion).status_code == 200
    status, error, description = _error(h.token_request(assertion=assertion))
    assert (status, error) == (401, "invalid_client")
    assert "jti replay" in description
    # the same jti under another client is a different namespace
    shared = h.assertion("patient-only", jti="shared-jti")
    assert h.token_request(assertion=shared, scope="system/Patient.rs").status_code == 200
    assert h.token_request(assertion=h.assertion(jti="shared-jti")).status_code == 200


def test_wrong_assertion_type(h: Helper) -> None:
    response = h.token_request(client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
    assert _error(response)[:2] == (401, "invalid_client")


def test_wrong_grant_type(h: Helper) -> None:
    assert _error(h.token_request(grant_type="authorization_code"))[:2] == (400, "unsupported_grant_type")
    assert _error(h.token_request(grant_type=None))[:2] == (400, "invalid_request")


def test_form_content_type_required(h: Helper) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/*.rs", "client_assertion": h.assertion()}
    response = requests.post(h.sb.token_url, json=form, timeout=10)
    assert _error(response)[:2] == (400, "invalid_request")
    assert "x-www-form-urlencoded" in _error(response)[2]


def test_chunked_form_body_is_read(h: Helper) -> None:
    body = (
        f"grant_type=client_credentials&scope=system%2F%2A.rs&client_assertion_type="
        f"urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={h.assertion()}"
    )
    response = requests.post(
        h.sb.token_url,
        data=iter([body[:50].encode(), body[50:].encode()]),  # a generator body is sent chunked
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        ("system/*.rs", "system/*.rs"),
        ("system/Patient.read system/Observation.rs", "system/Patient.read system/Observation.rs"),
        ("system/*.read launch openid system/*.write", "system/*.read"),
        ("system/Patient.r system/Patient.s", "system/Patient.r system/Patient.s"),
        ("system/Observation.rs?category=laboratory", "system/Observation.rs?category=laboratory"),
    ],
)
def test_scope_granting(h: Helper, requested: str, granted: str) -> None:
    response = h.token_request(scope=requested)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == granted


def test_scope_required_and_invalid(h: Helper) -> None:
    assert _error(h.token_request(scope=""))[:2] == (400, "invalid_request")
    assert _error(h.token_request(scope="system/*.cruds"))[:2] == (400, "invalid_scope")
    assert _error(h.token_request(scope="system/Patient.dus"))[:2] == (400, "invalid_scope")
    only_patient = h.assertion("patient-only")
    assert _error(h.token_request(assertion=only_patient, scope="system/*.rs"))[:2] == (400, "invalid_scope")


def test_symmetric_basic_and_post(h: Helper) -> None:
    form = {"grant_type": "client_credentials", "scope": "system/*.read"}
    basic = requests.post(h.sb.token_url, data=form, auth=("sym-1", "s3cret"), timeout=10)
    assert basic.status_code == 200, basic.text
    post = requests.post(h.sb.token_url, data={**form, "client_id": "sym-1", "client_secret": "s3cret"}, timeout=10)
    assert post.status_code == 200, post.text
    assert [e["auth_method"] for e in h.sb.token_log] == ["client_secret_basic", "client_secret_post"]

    bad = requests.post(h.sb.token_url, data=form, auth=("sym-1", "wrong"), timeout=10)
    assert _error(bad)[:2] == (401, "invalid_client")
    assert bad.headers["WWW-Authenticate"].startswith("Basic")
    bad_post = requests.post(h.sb.token_url, data={**form, "client_id": "sym-1", "client_secret": "x"}, timeout=10)
    assert _error(bad_post)[:2] == (401, "invalid_client")
    garbage = {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}
    assert _error(requests.post(h.sb.token_url, data=form, headers=garbage, timeout=10))[:2] == (
        401,
        "invalid_client",
    )
    # an asymmetric-only client cannot use a secret; no authentication at all is invalid_client too
    assert _error(requests.post(h.sb.token_url, data=form, auth=("es-client", "x"), timeout=10))[0] == 401
    assert _error(requests.post(h.sb.token_url, data=form, timeout=10))[:2] == (401, "invalid_client")
    assert h.sb.token_requests == 2


def test_token_response_patch(h: Helper) -> None:
    h.sb.token_response_patch = {"expires_in": None, "token_type": "Bearer"}
    body = h.token_request().json()
    assert "expires_in" not in body and body["token_type"] == "Bearer"
    h.sb.token_response_patch = {"expires_in": "120"}
    assert h.token_request().json()["expires_in"] == "120"


def test_expired_and_missing_tokens_get_401(make_sb) -> None:
    h = make_sb(token_lifetime=1)
    token = h.token()
    assert h.token_request().json()["expires_in"] == 1
    ok = requests.get(h.sb.url + "/Patient", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert ok.status_code == 200
    time.sleep(1.1)
    expired = requests.get(h.sb.url + "/Patient", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert expired.json()["resourceType"] == "OperationOutcome"
    missing = requests.get(h.sb.url + "/Patient", timeout=10)
    assert missing.status_code == 401 and 'error="invalid_token"' in missing.headers["WWW-Authenticate"]


def test_expire_tokens(h: Helper) -> None:
    session = h.session()
    assert session.get(h.sb.url + "/Patient", timeout=10).status_code == 200
    h.sb.expire_tokens()
    assert session.get(h.sb.url + "/Patient", timeout=10).status_code == 401
    assert h.session().get(h.sb.url + "/Patient", timeout=10).status_code == 200  # new tokens work
