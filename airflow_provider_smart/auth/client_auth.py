"""How a client proves who it is at the token endpoint: public, client secret, or signed JWT assertion.

Every grant (client_credentials, authorization_code, refresh_token) authenticates the same way, so the
grant and the client authentication are separate pieces that combine freely.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urljoin

import requests

from airflow_provider_smart.auth.keys import PrivateKey, choose_alg, load_private_key
from airflow_provider_smart.auth.transport import Deadline, send
from airflow_provider_smart.exceptions import SmartAuthError, SmartConfigError
from airflow_provider_smart.origins import redact_url

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 270  # SMART: exp SHALL be <= 5 min ahead; keep a margin for clock skew.
SECRET_METHODS = ("client_secret_basic", "client_secret_post")


class ClientAuthentication(Protocol):
    client_id: str

    def apply(self, form: dict[str, str], token_url: str) -> requests.auth.AuthBase | None:
        """Add this client's credentials to ``form``; return an auth for the request, if any."""


class PublicClient:
    """A public client (no secret): identifies itself with ``client_id`` in the form."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def apply(self, form: dict[str, str], token_url: str) -> None:
        form["client_id"] = self.client_id

    def __repr__(self) -> str:
        return f"PublicClient({self.client_id!r})"


class ClientSecret:
    """A symmetric client: HTTP Basic (``client_secret_basic``) or form fields (``client_secret_post``)."""

    def __init__(self, client_id: str, client_secret: str, method: str = "client_secret_basic") -> None:
        if not client_secret:
            raise SmartConfigError(
                f"{method} needs a client secret (the connection's Password field).", field="password"
            )
        if method not in SECRET_METHODS:
            raise SmartConfigError(f"Unknown client secret method {method!r}: use {' or '.join(SECRET_METHODS)}.")
        self.client_id = client_id
        self._secret = client_secret
        self.method = method

    def apply(self, form: dict[str, str], token_url: str) -> requests.auth.AuthBase | None:
        if self.method == "client_secret_post":
            form.update(client_id=self.client_id, client_secret=self._secret)
            return None
        return requests.auth.HTTPBasicAuth(self.client_id, self._secret)

    def __repr__(self) -> str:
        return f"ClientSecret({self.client_id!r}, method={self.method!r})"


class PrivateKeyJwt:
    """An asymmetric client: a fresh one-time signed JWT assertion per token request.

    :param alg: validated against the key now; when None it is chosen at first use from the key type
        and ``server_algs()`` (the server's advertised signing algorithms).
    """

    def __init__(
        self,
        client_id: str,
        private_key: str | bytes | PrivateKey,
        *,
        alg: str | None = None,
        kid: str | None = None,
        jku: str | None = None,
        lifetime: int = ASSERTION_LIFETIME,
        server_algs: Callable[[], list[str] | None] | None = None,
    ) -> None:
        self.client_id = client_id
        self._key = load_private_key(private_key)
        self._alg = choose_alg(self._key, alg) if alg else None
        self.kid = kid
        self.jku = jku
        if not 0 < lifetime <= 300:
            raise SmartConfigError("assertion_lifetime must be between 1 and 300 seconds (SMART's 5-minute cap).")
        self.lifetime = lifetime
        self._server_algs = server_algs

    @property
    def alg(self) -> str:
        if self._alg is None:
            self._alg = choose_alg(self._key, None, self._server_algs() if self._server_algs else None)
        return self._alg

    def assertion(self, token_url: str) -> str:
        """A one-time JWT: new ``jti`` on every call, so retries never replay an assertion."""
        import jwt

        now = int(time.time())
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.kid:
            headers["kid"] = self.kid
        if self.jku:
            headers["jku"] = self.jku
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": now + self.lifetime,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=self.alg, headers=headers)

    def apply(self, form: dict[str, str], token_url: str) -> None:
        form.update(client_assertion_type=JWT_BEARER, client_assertion=self.assertion(token_url))

    def __repr__(self) -> str:
        return f"PrivateKeyJwt({self.client_id!r}, kid={self.kid!r}, alg={self._alg!r})"


def client_authentication(
    client_id: str,
    *,
    client_secret: str | None = None,
    private_key: str | bytes | PrivateKey | None = None,
    method: str | None = None,
    **jwt_options: Any,
) -> ClientAuthentication:
    """Pick the authentication from what is given: a key → JWT, a secret → secret, nothing → public."""
    if private_key is not None:
        return PrivateKeyJwt(client_id, private_key, **jwt_options)
    if client_secret:
        return ClientSecret(client_id, client_secret, method or "client_secret_basic")
    return PublicClient(client_id)


def request_token(
    session: requests.Session,
    token_url: str,
    form: dict[str, str],
    client: ClientAuthentication,
    timeout: float,
    *,
    deadline: Deadline | None = None,
) -> requests.Response:
    """POST one grant to the token endpoint, authenticated as ``client`` (form-encoded, as SMART requires).

    Bounded by ``deadline`` (default: ``timeout`` seconds overall). A redirect is never followed: it
    would re-send the client secret, or hand a fresh signed assertion, to the ``Location``'s origin.

    :raises SmartTransportError: unreachable, stalled past the deadline, or a broken connection.
    :raises SmartAuthError: the endpoint answered a redirect (``error="redirect"``).
    """
    auth = client.apply(form, token_url)
    response = send(
        session,
        "POST",
        token_url,
        data=form,
        auth=auth,
        headers={"Accept": "application/json"},
        timeout=timeout,
        deadline=deadline or Deadline(timeout),
        what="the token endpoint",
    )
    if 300 <= response.status_code < 400:
        location = response.headers.get("Location")
        target = redact_url(urljoin(token_url, location)) if location else "nowhere (no Location header)"
        raise SmartAuthError(
            f"The token endpoint {redact_url(token_url)} answered HTTP {response.status_code}, redirecting to "
            f"{target}. Token requests never follow redirects (they carry the client's credentials): "
            "set token_url to the endpoint's final https URL if it really moved.",
            error="redirect",
            status=response.status_code,
            url=redact_url(token_url),
            location=target,
        )
    return response
