"""SMART App Launch: PKCE, the authorize URL, code exchange and refresh (OAuth2 authorization code).

Mirrors ``@fhir-dsl/smart``'s ``generateCodeVerifier`` / ``codeChallengeS256`` / ``generateState`` /
``buildAuthorizeUrl`` / ``exchangeCode``; :class:`~airflow_provider_smart.auth.smart_client.SmartClient`
then keeps the tokens fresh.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import requests

from airflow_provider_smart.auth.client_auth import client_authentication, request_token
from airflow_provider_smart.auth.discovery import SmartConfiguration
from airflow_provider_smart.auth.keys import PrivateKey
from airflow_provider_smart.auth.tokens import StoredToken, parse_token_response
from airflow_provider_smart.exceptions import DiscoveryError, SmartConfigError
from airflow_provider_smart.sessions import DEFAULT_TIMEOUT, new_session

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"

T = TypeVar("T")


def generate_code_verifier(length: int = 64) -> str:
    """A PKCE verifier: ``length`` (43 to 128) characters from RFC 7636's unreserved set.

    64 characters drawn from 66 symbols carry about 386 bits of entropy (RFC 7636 asks for 256).
    """
    if not 43 <= length <= 128:
        raise SmartConfigError("A PKCE code verifier must be 43 to 128 characters long.")
    return "".join(secrets.choice(UNRESERVED) for _ in range(length))


def code_challenge_s256(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(verifier)))`` without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def generate_state() -> str:
    """An unpredictable ``state``: 256 random bits (SMART asks for at least 122)."""
    return secrets.token_urlsafe(32)


def authorize_params(
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    state: str,
    code_challenge: str,
    aud: str,
    launch: str | None = None,
) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": aud,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    if launch:
        params["launch"] = launch  # EHR launch only; standalone launches omit it
    return params


def build_authorize_url(*, smart_config: SmartConfiguration, aud: str | None = None, **params: Any) -> str:
    """The URL to send the user's browser to: :func:`authorize_params` (``client_id``, ``redirect_uri``,
    ``scope``, ``state``, ``code_challenge``, ``launch``) on the authorization endpoint. ``aud`` defaults
    to the exact FHIR base URL."""
    endpoint = _authorization_endpoint(smart_config)
    query = authorize_params(aud=aud or smart_config.fhir_base_url, **params)
    separator = "&" if "?" in endpoint else "?"
    return f"{endpoint}{separator}{urlencode(query)}"


def build_authorize_post(**kwargs: Any) -> tuple[str, dict[str, str]]:
    """``(url, form)`` for a POST authorize request (long scope strings), when the server has ``authorize-post``."""
    smart_config: SmartConfiguration = kwargs.pop("smart_config")
    if not smart_config.supports("authorize-post"):
        raise DiscoveryError(
            "The server does not advertise the authorize-post capability; use build_authorize_url (GET).",
            url=smart_config.fhir_base_url,
        )
    kwargs.setdefault("aud", smart_config.fhir_base_url)
    return _authorization_endpoint(smart_config), authorize_params(**kwargs)


def _authorization_endpoint(smart_config: SmartConfiguration) -> str:
    if not smart_config.authorization_endpoint:
        raise DiscoveryError(
            f"{smart_config.fhir_base_url} advertises no authorization_endpoint: it supports no App Launch "
            "(Backend Services only?). Use BackendServicesAuth instead.",
            url=smart_config.fhir_base_url,
        )
    return smart_config.authorization_endpoint


class _LaunchContext(Generic[T]):
    """A read-only attribute of a token response's launch context (``patient``, ``encounter``...)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, token: StoredToken | None, owner: type | None = None) -> T | None:
        return None if token is None else token.context.get(self.key)


class TokenResponse(StoredToken):
    """A token-endpoint answer of App Launch, with its launch context as attributes."""

    @classmethod
    def from_stored(cls, token: StoredToken) -> TokenResponse:
        return cls.from_dict(token.to_dict())  # type: ignore[return-value]

    patient = _LaunchContext[str]("patient")
    encounter = _LaunchContext[str]("encounter")
    need_patient_banner = _LaunchContext[bool]("need_patient_banner")
    smart_style_url = _LaunchContext[str]("smart_style_url")
    intent = _LaunchContext[str]("intent")
    tenant = _LaunchContext[str]("tenant")

    @property
    def fhir_context(self) -> list[dict[str, Any]]:
        return list(self.context.get("fhirContext") or [])

    @property
    def fhir_user(self) -> str | None:
        """The ``fhirUser`` claim of the id_token, decoded WITHOUT verification: display only, never auth."""
        if not self.id_token:
            return None
        import jwt

        try:
            claims = jwt.decode(self.id_token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        return claims.get("fhirUser")


@dataclass
class _TokenRequest:
    smart_config: SmartConfiguration
    client_id: str
    client_secret: str | None = None
    private_key: str | bytes | PrivateKey | None = None
    kid: str | None = None
    alg: str | None = None
    auth_method: str | None = None
    session: requests.Session | None = None
    timeout: float = DEFAULT_TIMEOUT

    def post(self, form: dict[str, str]) -> TokenResponse:
        token_url = self.smart_config.token_endpoint
        jwt_options = {"kid": self.kid, "alg": self.alg} if self.private_key is not None else {}
        client = client_authentication(
            self.client_id,
            client_secret=self.client_secret,
            private_key=self.private_key,
            method=self.auth_method,
            **jwt_options,
        )
        response = request_token(
            self.session or new_session(timeout=self.timeout), token_url, form, client, self.timeout
        )
        return TokenResponse.from_stored(parse_token_response(response, token_url))


def exchange_code(
    *,
    smart_config: SmartConfiguration,
    client_id: str,
    redirect_uri: str,
    code: str,
    code_verifier: str,
    client_secret: str | None = None,
    private_key: str | bytes | PrivateKey | None = None,
    **options: Any,
) -> TokenResponse:
    """Exchange an authorization code for tokens (public, symmetric or asymmetric client)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    return _TokenRequest(smart_config, client_id, client_secret, private_key, **options).post(form)


def refresh_access_token(
    *,
    smart_config: SmartConfiguration,
    client_id: str,
    refresh_token: str,
    scope: str | None = None,
    client_secret: str | None = None,
    private_key: str | bytes | PrivateKey | None = None,
    **options: Any,
) -> TokenResponse:
    """One refresh. The answer may carry a rotated ``refresh_token``: the old one must then be discarded."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope:
        form["scope"] = scope  # must be a subset of the original grant; omitted = the same scopes
    return _TokenRequest(smart_config, client_id, client_secret, private_key, **options).post(form)
