"""SMART App Launch in the sandbox: authorize (PKCE S256), code exchange, refresh tokens, id_token, scopes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from airflow_provider_smart.testing.launch_state import s256

if TYPE_CHECKING:
    from conftest import Helper

# RFC 7636 appendix B
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
REDIRECT = "http://127.0.0.1:9/callback"
REDIRECT_WITH_QUERY = "https://app.example/cb?tenant=a"
LAUNCH_SCOPES = "launch launch/patient launch/encounter openid fhirUser offline_access patient/*.rs user/*.rs"
STANDALONE = "launch/patient openid fhirUser offline_access patient/*.rs"


class Launch:
    """Raw App Launch requests against one sandbox (clients public-app, sym-app, jwt-app)."""

    def __init__(self, h: Helper) -> None:
        self.h, self.sb = h, h.sb

    def params(self, **overrides: Any) -> dict[str, str]:
        params = {
            "response_type": "code",
            "client_id": "public-app",
            "redirect_uri": REDIRECT,
            "scope": STANDALONE,
            "state": "st-" + "x" * 40,
            "aud": self.sb.url,
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
            **overrides,
        }
        return {k: v for k, v in params.items() if v is not None}

    def authorize(self, method: str = "GET", **overrides: Any) -> requests.Response:
        params = self.params(**overrides)
        if method == "POST":
            return requests.post(self.sb.authorize_url, data=params, allow_redirects=False, timeout=10)
        return requests.get(self.sb.authorize_url, params=params, allow_redirects=False, timeout=10)

    @staticmethod
    def redirect_params(response: requests.Response) -> dict[str, str]:
        assert response.status_code == 302, response.text
        query = parse_qs(urlsplit(response.headers["Location"]).query)
        return {k: v[0] for k, v in query.items()}

    def code(self, **overrides: Any) -> str:
        response = self.authorize(**overrides)
        assert response.headers["Location"].startswith(overrides.get("redirect_uri", REDIRECT))
        return self.redirect_params(response)["code"]

    def exchange(self, code: str, *, client_id: str | None = "public-app", **form: Any) -> requests.Response:
        auth = form.pop("auth", None)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
            "client_id": client_id,
            **form,
        }
        data = {k: v for k, v in data.items() if v is not None}
        return requests.post(self.sb.token_url, data=data, auth=auth, timeout=10)

    def tokens(self, **overrides: Any) -> dict[str, Any]:
        response = self.exchange(self.code(**overrides))
        assert response.status_code == 200, response.text
        return response.json()

    def refresh(self, refresh_token: str, *, client_id: str | None = "public-app", **form: Any) -> requests.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id, **form}
        data = {k: v for k, v in data.items() if v is not None}
        return requests.post(self.sb.token_url, data=data, timeout=10)


def _error(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body.get("error_description", "")


@pytest.fixture
def lx(make_sb: Callable[..., Helper], sbx_keys: Any) -> Launch:
    h = make_sb()
    h.sb.register_client("public-app", public=True, scopes=LAUNCH_SCOPES, redirect_uris=[REDIRECT, REDIRECT_WITH_QUERY])
    h.sb.register_client("sym-app", client_secret="app-secret", scopes=LAUNCH_SCOPES, redirect_uris=[REDIRECT])
    h.sb.register_client("jwt-app", jwks=sbx_keys["es"].jwks, scopes=LAUNCH_SCOPES, redirect_uris=[REDIRECT])
    return Launch(h)


# -- discovery --------------------------------------------------------------------------------------


def test_discovery_and_metadata_advertise_app_launch(lx: Launch) -> None:
    sb = lx.sb
    config = requests.get(sb.url + "/.well-known/smart-configuration", timeout=10).json()
    assert config["authorization_endpoint"] == sb.authorize_url == sb.origin + "/auth/authorize"
    assert config["token_endpoint"] == sb.token_url
    assert config["jwks_uri"] == sb.origin + "/auth/jwks"
    assert config["issuer"] == sb.url
    assert config["grant_types_supported"] == ["client_credentials", "authorization_code", "refresh_token"]
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["response_types_supported"] == ["code"]
    assert {"launch", "launch/patient", "openid", "fhirUser", "offline_access", "user/*.rs"} <= set(
        config["scopes_supported"]
    )
    assert set(config["capabilities"]) >= {
        "client-confidential-asymmetric",
        "client-confidential-symmetric",
        "permission-v1",
        "permission-v2",
        "launch-ehr",
        "launch-standalone",
        "authorize-post",
        "client-public",
        "context-ehr-patient",
        "context-standalone-patient",
        "permission-offline",
        "permission-patient",
        "permission-user",
        "sso-openid-connect",
    }
    statement = requests.get(sb.url + "/metadata", timeout=10).json()
    (oauth,) = statement["rest"][0]["security"]["extension"]
    assert oauth["extension"] == [
        {"url": "token", "valueUri": sb.token_url},
        {"url": "authorize", "valueUri": sb.authorize_url},
    ]
    style = requests.get(sb.launch_context["smart_style_url"], timeout=10)
    assert style.status_code == 200 and "color_background" in style.json()


def test_app_launch_is_off_for_a_backend_only_sandbox(h: Helper) -> None:
    sb = h.sb
    assert sb.app_launch is False
    config = requests.get(sb.url + "/.well-known/smart-configuration", timeout=10).json()
    assert "authorization_endpoint" not in config and config["grant_types_supported"] == ["client_credentials"]
    off = requests.get(sb.authorize_url, params={"client_id": "es-client"}, allow_redirects=False, timeout=10)
    assert off.status_code == 400 and "App Launch is off" in off.json()["error_description"]
    sb.app_launch = True
    config = requests.get(sb.url + "/.well-known/smart-configuration", timeout=10).json()
    assert config["authorization_endpoint"] == sb.authorize_url


def test_register_client_validation(h: Helper) -> None:
    with pytest.raises(ValueError, match="public"):
        h.sb.register_client("p", public=True, client_secret="x")
    with pytest.raises(ValueError, match="fragment"):
        h.sb.register_client("p", public=True, redirect_uris=["https://app.example/cb#frag"])
    with pytest.raises(ValueError, match="public=True"):
        h.sb.register_client("p", redirect_uris=[REDIRECT])


# -- authorize + code exchange ----------------------------------------------------------------------


def test_standalone_launch_public_client(lx: Launch) -> None:
    assert s256(VERIFIER) == CHALLENGE  # RFC 7636 appendix B
    response = lx.authorize()
    assert response.status_code == 302 and response.headers["Cache-Control"] == "no-store"
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?code=")
    redirect = lx.redirect_params(response)
    assert set(redirect) == {"code", "state"} and redirect["state"] == "st-" + "x" * 40
    assert lx.sb.authorize_log == [{**lx.params(), "outcome": "code"}]

    token = lx.exchange(redirect["code"])
    assert token.status_code == 200, token.text
    assert token.headers["Cache-Control"] == "no-store" and token.headers["Pragma"] == "no-cache"
    body = token.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["scope"] == STANDALONE
    assert body["patient"] == "pat-0001"
    assert "encounter" not in body and "fhirContext" not in body  # launch/encounter was not requested
    assert body["need_patient_banner"] is True
    assert body["smart_style_url"] == lx.sb.origin + "/smart-style.json"
    assert body["tenant"] == "sandbox"
    assert body["refresh_token"] and body["id_token"]
    entry = lx.sb.token_log[-1]
    assert entry["grant_type"] == "authorization_code" and entry["auth_method"] == "none" and entry["ok"]
    assert entry["client_id"] == "public-app" and entry["scope_granted"] == STANDALONE

    patient = requests.get(
        lx.sb.url + "/Patient/pat-0001", headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=10
    )
    assert patient.status_code == 200 and patient.json()["id"] == "pat-0001"


def test_ehr_launch_carries_patient_and_encounter(lx: Launch) -> None:
    launch = lx.sb.create_ehr_launch(patient="pat-0003", encounter="enc-0003-02")
    body = lx.tokens(scope="launch patient/*.rs", launch=launch)
    assert body["scope"] == "launch patient/*.rs"
    assert body["patient"] == "pat-0003" and body["encounter"] == "enc-0003-02"
    assert body["fhirContext"] == [{"reference": "Encounter/enc-0003-02"}]
    assert "refresh_token" not in body and "id_token" not in body  # no offline_access / openid
    # defaults come from launch_context, which is settable
    lx.sb.launch_context = {**lx.sb.launch_context, "patient": "pat-0002", "encounter": None, "tenant": "t2"}
    body = lx.tokens(scope="launch patient/*.rs", launch=lx.sb.create_ehr_launch())
    assert body["patient"] == "pat-0002" and "encounter" not in body and body["tenant"] == "t2"


def test_authorize_post_form(lx: Launch) -> None:
    response = lx.authorize("POST", scope=STANDALONE + " launch/encounter")
    body = lx.exchange(lx.redirect_params(response)["code"]).json()
    assert body["encounter"] == "enc-0001-01" and body["fhirContext"] == [{"reference": "Encounter/enc-0001-01"}]
    wrong_type = requests.post(lx.sb.authorize_url, json=lx.params(), allow_redirects=False, timeout=10)
    assert wrong_type.status_code == 400 and "Location" not in wrong_type.headers


def test_redirect_uri_with_a_query_gets_the_code_appended(lx: Launch) -> None:
    response = lx.authorize(redirect_uri=REDIRECT_WITH_QUERY)
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_WITH_QUERY + "&code=")
    assert lx.redirect_params(response)["tenant"] == "a"


@pytest.mark.parametrize(
    ("overrides", "error", "needle"),
    [
        ({"aud": "AUD/"}, "invalid_request", "aud must be exactly"),
        ({"aud": None}, "invalid_request", "aud"),
        ({"code_challenge_method": "plain"}, "invalid_request", "S256"),
        ({"code_challenge_method": None}, "invalid_request", "S256"),
        ({"code_challenge": None}, "invalid_request", "code_challenge"),
        ({"state": None}, "invalid_request", "state is required"),
        ({"scope": "launch patient/*.rs", "launch": "no-such-launch"}, "invalid_request", "unknown launch"),
        ({"scope": "launch patient/*.rs"}, "invalid_request", "launch parameter"),
        ({"response_type": "token"}, "unsupported_response_type", "code"),
        ({"scope": "system/*.rs"}, "invalid_scope", "none of the requested scopes"),
        ({"scope": None}, "invalid_request", "scope is required"),
    ],
    ids=[
        "aud-trailing-slash",
        "no-aud",
        "plain",
        "no-method",
        "no-challenge",
        "no-state",
        "unknown-launch",
        "launch-without-id",
        "response-type",
        "unregistered-scope",
        "no-scope",
    ],
)
def test_authorize_errors_redirect_with_state(lx: Launch, overrides: dict[str, Any], error: str, needle: str) -> None:
    if overrides.get("aud") == "AUD/":
        overrides = {**overrides, "aud": lx.sb.url + "/"}
    response = lx.authorize(**overrides)
    assert response.headers["Location"].startswith(REDIRECT + "?error=")
    params = lx.redirect_params(response)
    assert params["error"] == error and needle in params["error_description"]
    assert "code" not in params
    if "state" in overrides:
        assert "state" not in params
    else:
        assert params["state"] == "st-" + "x" * 40
    assert lx.sb.authorize_log[-1]["outcome"] == f"error:{error}"


def test_repeated_authorize_parameter_is_rejected(lx: Launch) -> None:
    params = [*lx.params().items(), ("scope", "user/*.rs")]
    response = requests.get(lx.sb.authorize_url, params=params, allow_redirects=False, timeout=10)
    assert lx.redirect_params(response)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "overrides",
    [
        {"redirect_uri": "https://evil.example/cb"},
        {"redirect_uri": REDIRECT + "/"},
        {"redirect_uri": None},
        {"client_id": "nobody"},
        {"client_id": None},
        {"client_id": "es-client"},  # a backend client without redirect URIs
    ],
    ids=["foreign", "trailing-slash", "missing", "unknown-client", "no-client", "backend-client"],
)
def test_authorize_never_redirects_to_an_unregistered_uri(lx: Launch, overrides: dict[str, Any]) -> None:
    response = lx.authorize(**overrides, aud="wrong")  # other errors too: the client check comes first
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.json()["error"] == "invalid_request"
    assert lx.sb.authorize_log[-1]["outcome"] == "error:invalid_request"


def test_code_is_single_use_and_reuse_revokes_its_tokens(lx: Launch) -> None:
    code = lx.code()
    first = lx.exchange(code).json()
    status, error, description = _error(lx.exchange(code))
    assert (status, error) == (400, "invalid_grant") and "already used" in description
    session = lx.h.session(first["access_token"])
    assert session.get(lx.sb.url + "/Patient", timeout=10).status_code == 401
    assert "revoked" in _error(lx.refresh(first["refresh_token"]))[2]


@pytest.mark.parametrize(
    ("form", "error", "needle"),
    [
        ({"code_verifier": "A" * 43}, "invalid_grant", "does not match the code_challenge"),
        ({"code_verifier": "short"}, "invalid_grant", "43-128"),
        ({"code_verifier": None}, "invalid_grant", "code_verifier is required"),
        ({"redirect_uri": REDIRECT_WITH_QUERY}, "invalid_grant", "redirect_uri"),
        ({"redirect_uri": None}, "invalid_grant", "redirect_uri"),
        ({"code": "not-a-code"}, "invalid_grant", "unknown authorization code"),
        ({"code": None}, "invalid_request", "code is required"),
    ],
    ids=["wrong-verifier", "short-verifier", "no-verifier", "other-redirect", "no-redirect", "unknown", "no-code"],
)
def test_code_exchange_errors(lx: Launch, form: dict[str, Any], error: str, needle: str) -> None:
    code = lx.code()
    status, got, description = _error(lx.exchange(form.pop("code", code), **form))
    assert (status, got) == (400, error) and needle in description
    assert lx.sb.token_log[-1]["ok"] is False and lx.sb.token_log[-1]["grant_type"] == "authorization_code"
    assert lx.exchange(code).status_code == 200  # a failed attempt does not burn the code


def test_expired_code(lx: Launch) -> None:
    lx.sb._launch.code_lifetime = 0
    status, error, description = _error(lx.exchange(lx.code()))
    assert (status, error) == (400, "invalid_grant") and "expired" in description


def test_client_binding_of_codes(lx: Launch) -> None:
    code = lx.code()
    other = lx.exchange(code, client_id=None, auth=("sym-app", "app-secret"))
    assert _error(other)[:2] == (400, "invalid_grant") and "another client" in _error(other)[2]
    # a confidential client may not act as a public one
    sym_code = lx.code(client_id="sym-app")
    status, error, description = _error(lx.exchange(sym_code, client_id="sym-app"))
    assert (status, error) == (401, "invalid_client") and "confidential" in description
    # a public client has no client_credentials grant
    cc = requests.post(
        lx.sb.token_url,
        data={"grant_type": "client_credentials", "client_id": "public-app", "scope": "user/*.rs"},
        timeout=10,
    )
    assert _error(cc)[:2] == (401, "invalid_client")


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_confidential_symmetric_code_exchange(lx: Launch, method: str) -> None:
    code = lx.code(client_id="sym-app")
    if method == "client_secret_basic":
        response = lx.exchange(code, client_id=None, auth=("sym-app", "app-secret"))
    else:
        response = lx.exchange(code, client_id="sym-app", client_secret="app-secret")
    assert response.status_code == 200, response.text
    assert response.json()["patient"] == "pat-0001"
    assert lx.sb.token_log[-1]["auth_method"] == method
    bad = lx.exchange(lx.code(client_id="sym-app"), client_id=None, auth=("sym-app", "wrong"))
    assert _error(bad)[:2] == (401, "invalid_client")


def test_confidential_asymmetric_code_exchange(lx: Launch) -> None:
    code = lx.code(client_id="jwt-app")
    form = {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    response = lx.exchange(code, client_id=None, client_assertion=lx.h.assertion("jwt-app", "es"), **form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert lx.sb.token_log[-1]["auth_method"] == "private_key_jwt"
    refreshed = lx.refresh(
        body["refresh_token"], client_id=None, client_assertion=lx.h.assertion("jwt-app", "es"), **form
    )
    assert refreshed.status_code == 200, refreshed.text
    forged = lx.exchange(lx.code(client_id="jwt-app"), client_id=None, client_assertion="x.y.z", **form)
    assert _error(forged)[:2] == (401, "invalid_client")


def test_token_response_patch_applies_to_code_exchange(lx: Launch) -> None:
    lx.sb.token_response_patch = {"tenant": None, "expires_in": "300"}
    body = lx.tokens()
    assert "tenant" not in body and body["expires_in"] == "300"


# -- refresh ----------------------------------------------------------------------------------------


def test_refresh_with_rotation(lx: Launch) -> None:
    first = lx.tokens()
    assert lx.sb.rotate_refresh_tokens is True and lx.sb.refresh_token_lifetime == 3600
    response = lx.refresh(first["refresh_token"])
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    second = response.json()
    assert second["access_token"] != first["access_token"] and second["scope"] == STANDALONE
    assert second["refresh_token"] != first["refresh_token"]
    assert second["patient"] == "pat-0001" and second["token_type"] == "Bearer" and second["expires_in"] == 300
    status, error, description = _error(lx.refresh(first["refresh_token"]))
    assert (status, error) == (400, "invalid_grant") and "rotated" in description
    assert lx.refresh(second["refresh_token"]).status_code == 200
    assert lx.sb.refresh_requests == 2
    assert [e["grant_type"] for e in lx.sb.token_log if e["ok"]] == [
        "authorization_code",
        "refresh_token",
        "refresh_token",
    ]


def test_refresh_without_rotation(lx: Launch) -> None:
    lx.sb.rotate_refresh_tokens = False
    first = lx.tokens()
    for _ in range(2):
        response = lx.refresh(first["refresh_token"])
        assert response.status_code == 200, response.text
        assert "refresh_token" not in response.json()
    assert lx.sb.refresh_requests == 2


def test_refresh_scope_may_narrow_but_not_widen(lx: Launch) -> None:
    first = lx.tokens()
    narrow = lx.refresh(first["refresh_token"], scope="patient/Patient.rs offline_access")
    assert narrow.status_code == 200, narrow.text
    assert narrow.json()["scope"] == "patient/Patient.rs offline_access"
    # the rotated refresh token keeps the original grant
    again = lx.refresh(narrow.json()["refresh_token"])
    assert again.json()["scope"] == STANDALONE
    for broader in ("user/*.rs", "patient/*.cruds", "patient/*.rs launch/encounter"):
        status, error, description = _error(lx.refresh(again.json()["refresh_token"], scope=broader))
        assert (status, error) == (400, "invalid_scope") and "exceeds the original grant" in description


def test_revoke_and_expiry_of_refresh_tokens(lx: Launch) -> None:
    token = lx.tokens()["refresh_token"]
    lx.sb.revoke_refresh_tokens()
    status, error, description = _error(lx.refresh(token))
    assert (status, error) == (400, "invalid_grant") and "revoked" in description
    lx.sb.refresh_token_lifetime = 0
    status, error, description = _error(lx.refresh(lx.tokens()["refresh_token"]))
    assert (status, error) == (400, "invalid_grant") and "expired" in description
    assert "unknown" in _error(lx.refresh("nope"))[2]
    assert lx.sb.refresh_requests == 0


def test_refresh_client_binding(lx: Launch) -> None:
    sym = lx.exchange(lx.code(client_id="sym-app"), client_id=None, auth=("sym-app", "app-secret")).json()
    assert _error(lx.refresh(sym["refresh_token"], client_id="sym-app"))[:2] == (401, "invalid_client")
    public = lx.tokens()
    status, error, description = _error(
        lx.refresh(public["refresh_token"], client_id="sym-app", client_secret="app-secret")
    )
    assert (status, error) == (400, "invalid_grant") and "another client" in description


# -- id_token and resource access -------------------------------------------------------------------


def test_id_token_verifies_against_the_published_jwks(lx: Launch) -> None:
    body = lx.tokens(nonce="n-0S6_WzA2Mj")
    jwks = requests.get(lx.sb.origin + "/auth/jwks", timeout=10).json()
    assert all("d" not in key for key in jwks["keys"])
    header = jwt.get_unverified_header(body["id_token"])
    assert header["alg"] == "RS256"
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(body["id_token"], key, algorithms=["RS256"], audience="public-app", issuer=lx.sb.url)
    assert claims["fhirUser"] == lx.sb.url + "/Practitioner/prac-1"
    assert claims["sub"] and claims["nonce"] == "n-0S6_WzA2Mj"
    assert claims["iat"] <= time.time() < claims["exp"]
    # no id_token without both openid and fhirUser
    assert "id_token" not in lx.tokens(scope="openid patient/*.rs")


def test_user_scoped_token_reads_patients_and_runs_an_export(lx: Launch) -> None:
    body = lx.tokens(scope="openid fhirUser user/*.rs")
    assert body["scope"] == "openid fhirUser user/*.rs" and "patient" not in body
    session = lx.h.session(body["access_token"])
    bundle = session.get(lx.sb.url + "/Patient", params={"_count": 2}, timeout=10)
    assert bundle.status_code == 200 and bundle.json()["total"] == 6
    manifest, session = lx.h.export("/Group/cohort-a/$export", {"_type": "Patient"}, session=session)
    assert {p["resourceType"] for p in lx.h.download(manifest, session)["Patient"]} == {"Patient"}
    # an openid-only token grants no resource access
    only_openid = lx.h.session(lx.tokens(scope="openid fhirUser")["access_token"])
    assert only_openid.get(lx.sb.url + "/Patient", timeout=10).status_code == 403


# -- command line ---------------------------------------------------------------------------------


def test_cli_serves_a_public_launch_client(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    command = [sys.executable, "-m", "airflow_provider_smart.testing", "--port", "0", "--patients", "2"]
    command += ["--client-id", "cli-app", "--public", "--redirect-uri", REDIRECT, "--redirect-uri", "app:/cb"]
    command += ["--ready-file", str(ready)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the sandbox never became ready"
            time.sleep(0.05)
        base = ready.read_text().strip()
        config = requests.get(base + "/.well-known/smart-configuration", timeout=10).json()
        params = {
            "response_type": "code",
            "client_id": "cli-app",
            "redirect_uri": "app:/cb",
            "scope": "launch/patient patient/*.rs offline_access",
            "state": "s" * 43,
            "aud": base,
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
        }
        response = requests.get(config["authorization_endpoint"], params=params, allow_redirects=False, timeout=10)
        assert response.status_code == 302 and response.headers["Location"].startswith("app:/cb?code=")
    finally:
        process.terminate()
        out, err = process.communicate(timeout=20)
    assert "authorize endpoint:" in out, err
