"""Access tokens: the stored form, pluggable stores, and parsing of token-endpoint answers."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import requests

from airflow_provider_smart.exceptions import SmartAuthError

DEFAULT_EXPIRES_IN = 300  # SMART's recommended lifetime, assumed when a server omits expires_in


@dataclass
class StoredToken:
    """A token as kept in a :class:`TokenStore`. Secrets are excluded from ``repr()``."""

    access_token: str = field(repr=False)
    token_type: str = "bearer"
    expires_at: float | None = None  # epoch seconds; None = unknown, rely on a 401
    scope: str = ""
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    # App Launch context (patient, encounter, fhirContext...) and any other non-secret fields.
    context: dict[str, Any] = field(default_factory=dict)

    def expires_in(self, now: float | None = None) -> float | None:
        return None if self.expires_at is None else self.expires_at - (time.time() if now is None else now)

    def is_fresh(self, skew: float, now: float | None = None) -> bool:
        remaining = self.expires_in(now)
        return remaining is None or remaining > skew

    def to_dict(self) -> dict[str, Any]:
        """Everything, secrets included: for token stores only, never for logs."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredToken:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def summary(self) -> dict[str, Any]:
        """A JSON-safe description without any secret: scope, expiry, type."""
        expires = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at)) if self.expires_at is not None else None
        )
        return {"scope": self.scope, "expires_at": expires, "token_type": self.token_type}


@runtime_checkable
class TokenStore(Protocol):
    """Where tokens live between uses. Implementations must be safe to call from several threads."""

    def get(self, key: str) -> StoredToken | None: ...

    def set(self, key: str, token: StoredToken) -> None: ...

    def delete(self, key: str) -> None: ...


class InMemoryTokenStore:
    """The default store: a dict behind a lock, living as long as the process."""

    def __init__(self) -> None:
        self._tokens: dict[str, StoredToken] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> StoredToken | None:
        with self._lock:
            return self._tokens.get(key)

    def set(self, key: str, token: StoredToken) -> None:
        with self._lock:
            self._tokens[key] = token

    def delete(self, key: str) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def __repr__(self) -> str:
        return f"InMemoryTokenStore({len(self._tokens)} tokens)"


def raise_for_token_error(response: requests.Response, token_url: str) -> None:
    """Turn a non-200 token-endpoint answer into a :class:`SmartAuthError` with the RFC 6749 code."""
    if response.status_code == 200:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error = body["error"]
        description = body.get("error_description") if isinstance(body.get("error_description"), str) else None
        hint = {
            "invalid_client": "check the client id, that the public key (kid) is registered, and alg",
            "invalid_scope": "ask only for scopes the client is registered for",
            "invalid_grant": "the grant or refresh token is expired or was already used: re-authorise",
            "unauthorized_client": "the client is not allowed this grant type",
        }.get(error)
        message = f"Token request to {token_url} failed: HTTP {response.status_code} {error}"
        if description:
            message += f" ({description})"
        if hint:
            message += f"; {hint}"
        raise SmartAuthError(
            message + ".",
            error=error,
            error_description=description,
            status=response.status_code,
            error_uri=body.get("error_uri") if isinstance(body.get("error_uri"), str) else None,
            url=token_url,
        )
    raise SmartAuthError(
        f"Token request to {token_url} failed: HTTP {response.status_code} without an OAuth2 error body.",
        error=f"http_{response.status_code}",
        status=response.status_code,
        url=token_url,
    )


def parse_token_response(response: requests.Response, token_url: str, *, now: float | None = None) -> StoredToken:
    """Validate a token-endpoint answer and return it as a :class:`StoredToken`."""
    raise_for_token_error(response, token_url)
    now = time.time() if now is None else now

    def invalid(why: str) -> SmartAuthError:
        return SmartAuthError(
            f"Token response from {token_url} is invalid: {why}.", error="invalid_response", status=200, url=token_url
        )

    try:
        data = response.json()
    except ValueError:
        raise invalid("not JSON") from None
    if not isinstance(data, dict):
        raise invalid("not a JSON object")
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise invalid("no access_token")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise invalid(f"token_type is {token_type!r}, expected 'bearer'")
    expires_in = data.get("expires_in", DEFAULT_EXPIRES_IN)
    try:
        expires_in = float(expires_in)
    except (TypeError, ValueError):
        raise invalid(f"expires_in {expires_in!r} is not a number") from None
    if expires_in <= 0:
        raise invalid(f"expires_in {expires_in!r} is not positive")
    scope = data.get("scope", "")
    if not isinstance(scope, str):
        raise invalid("scope is not a string")
    secret_or_known = {"access_token", "token_type", "expires_in", "scope", "refresh_token", "id_token"}
    refresh_token = data.get("refresh_token") if isinstance(data.get("refresh_token"), str) else None
    id_token = data.get("id_token") if isinstance(data.get("id_token"), str) else None
    return StoredToken(
        access_token=access_token,
        token_type=token_type,
        expires_at=now + expires_in,
        scope=scope,
        refresh_token=refresh_token,
        id_token=id_token,
        context={k: v for k, v in data.items() if k not in secret_or_known},
    )
