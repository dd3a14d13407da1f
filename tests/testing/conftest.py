"""Fixtures for the sandbox's own tests: keys, a running sandbox and a small raw-HTTP client helper."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests

from airflow_provider_smart.auth.keys import generate_private_key, public_jwks
from airflow_provider_smart.testing import SmartSandbox

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FHIR_JSON = "application/fhir+json"
KICKOFF_HEADERS = {"Accept": FHIR_JSON, "Prefer": "respond-async"}


class Key:
    def __init__(self, alg: str, kid: str) -> None:
        self.alg, self.kid = alg, kid
        self.key = generate_private_key(alg)
        self.jwks = public_jwks(self.key, kid=kid, alg=alg)


@pytest.fixture(scope="session")
def sbx_keys() -> dict[str, Key]:
    return {
        "es": Key("ES384", "sbx-es-1"),
        "rs": Key("RS384", "sbx-rs-1"),
        "es-other": Key("ES384", "sbx-es-1"),  # same kid, different key: a forged signature
    }


class Helper:
    """Raw HTTP helpers against one sandbox (no library client: this tests the server)."""

    def __init__(self, sb: SmartSandbox, keys: dict[str, Key]) -> None:
        self.sb, self.keys = sb, keys

    # -- auth -----------------------------------------------------------------------------------

    def assertion(
        self,
        client_id: str = "es-client",
        key: str = "es",
        *,
        headers: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        k = self.keys[key]
        payload: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.sb.token_url,
            "exp": int(time.time()) + 240,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        for name in drop:
            payload.pop(name, None)
        header = {"kid": k.kid, "typ": "JWT", **(headers or {})}
        header = {h: v for h, v in header.items() if v is not None}
        return jwt.encode(payload, k.key, algorithm=header.pop("alg", k.alg), headers=header)

    def token_request(
        self, *, assertion: str | None = None, scope: str = "system/*.rs", **form: Any
    ) -> requests.Response:
        data = {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion or self.assertion(),
            **form,
        }
        data = {k: v for k, v in data.items() if v is not None}
        return requests.post(self.sb.token_url, data=data, timeout=10)

    def token(self, scope: str = "system/*.rs", client_id: str = "es-client", key: str = "es") -> str:
        response = self.token_request(assertion=self.assertion(client_id, key), scope=scope)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def session(self, token: str | None = None) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.token()}"
        return session

    # -- bulk -----------------------------------------------------------------------------------

    def kickoff(
        self,
        path: str = "/$export",
        params: Any = None,
        *,
        method: str = "GET",
        parameters: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        session = session or self.session()
        all_headers = {**KICKOFF_HEADERS, **(headers or {})}
        if method == "POST":
            body = {"resourceType": "Parameters", "parameter": parameters or []}
            all_headers["Content-Type"] = FHIR_JSON
            return session.post(self.sb.url + path, json=body, headers=all_headers, params=params, timeout=10)
        return session.get(self.sb.url + path, params=params, headers=all_headers, timeout=10)

    def wait(self, status_url: str, session: requests.Session, limit: int = 50) -> requests.Response:
        for _ in range(limit):
            response = session.get(status_url, headers={"Accept": "application/json"}, timeout=10)
            if response.status_code != 202:
                return response
        raise AssertionError("the export never completed")

    def export(
        self, path: str = "/$export", params: Any = None, **kwargs: Any
    ) -> tuple[dict[str, Any], requests.Session]:
        session = kwargs.pop("session", None) or self.session()
        kicked = self.kickoff(path, params, session=session, **kwargs)
        assert kicked.status_code == 202, kicked.text
        done = self.wait(kicked.headers["Content-Location"], session)
        assert done.status_code == 200, done.text
        return done.json(), session

    @staticmethod
    def download(manifest: dict[str, Any], session: requests.Session, key: str = "output") -> dict[str, list[Any]]:
        import json

        found: dict[str, list[Any]] = {}
        for entry in manifest.get(key, []):
            response = session.get(entry["url"], timeout=10)
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"] == "application/fhir+ndjson"
            lines = [json.loads(line) for line in response.text.splitlines()]
            assert len(lines) == entry["count"]
            assert all(r["resourceType"] == entry["type"] for r in lines)
            found.setdefault(entry["type"], []).extend(lines)
        return found


@pytest.fixture
def make_sb(sandbox_factory: Callable[..., SmartSandbox], sbx_keys: dict[str, Key]) -> Callable[..., Helper]:
    """Factory: a started sandbox (small data) with clients es-client, rs-client, sym-1, patient-only."""

    def make(**kwargs: Any) -> Helper:
        options: dict[str, Any] = {
            "patients": 6,
            "resources_per_patient": 4,
            "resources_per_file": 5,
            "retry_after": "0",
            **kwargs,
        }
        clients = {
            "es-client": {"jwks": sbx_keys["es"].jwks, "scopes": "system/*.rs system/*.read"},
            "rs-client": {"jwks": sbx_keys["rs"].jwks, "scopes": "system/*.rs"},
            "sym-1": {"client_secret": "s3cret", "scopes": "system/*.read"},
            "patient-only": {"jwks": sbx_keys["es"].jwks, "scopes": "system/Patient.rs"},
        }
        return Helper(sandbox_factory(clients=clients, **options), sbx_keys)

    return make


@pytest.fixture
def h(make_sb: Callable[..., Helper]) -> Helper:
    return make_sb()
