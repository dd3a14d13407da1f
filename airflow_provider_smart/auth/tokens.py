"""Access tokens: the stored form, pluggable stores, and parsing of token-endpoint answers."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import requests

from airflow_provider_smart.exceptions import SmartAuthError

DEFAULT_EXPIRES_IN = 300  # SMART's recommended lifetime, assumed when a server omits expires_in
UNUSABLE_EXPIRES_IN = 60.0  # assumed when expires_in is zero, negative, NaN or not a number
MIN_EXPIRES_IN = 1.0
MAX_EXPIRES_IN = 24 * 3600.0  # longer claims are renewed daily anyway
RENEW_FRACTION = 0.15  # renew when less than min(60 s, 15 % of the lifetime) is left
MAX_RENEW_FRACTION = 0.5  # an explicit expiry_skew is capped at half the lifetime
MAX_DESCRIPTION = 300  # characters of a server's error_description kept in our messages

log = logging.getLogger(__name__)


@dataclass
class StoredToken:
    """A token as kept in a :class:`TokenStore`. Secrets are excluded from ``repr()``."""

    access_token: str = field(repr=False)
    token_type: str = "bearer"
    expires_at: float | None = None  # epoch seconds; None = unknown, rely on a 401
    scope: str = ""
    lifetime: float | None = None  # seconds the token was issued for (sizes the renewal margin)
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    # App Launch context (patient, encounter, fhirContext...) and any other non-secret fields.
    context: dict[str, Any] = field(default_factory=dict)

    def expires_in(self, now: float | None = None) -> float | None:
        return None if self.expires_at is None else self.expires_at - (time.time() if now is None else now)

    def is_fresh(self, skew: float, now: float | None = None, *, fraction: float = RENEW_FRACTION) -> bool:
        """More than the renewal margin left: ``min(skew, fraction * lifetime)`` when the lifetime is known.

        A fixed margin would make every request mint when tokens live no longer than the margin.
        """
        remaining = self.expires_in(now)
        return remaining is None or remaining > self.renewal_margin(skew, fraction)

    def renewal_margin(self, skew: float, fraction: float = RENEW_FRACTION) -> float:
        if self.lifetime is None or not self.lifetime > 0:
            return skew
        return min(skew, fraction * self.lifetime)

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


def truncate(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (servers have sent megabytes of description)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def clamp_expires_in(value: Any, token_url: str) -> float:
    """A usable lifetime from whatever ``expires_in`` the server sent, with a warning when it was not sane.

    Missing: SMART's 300 s. Zero, negative, NaN, a bool or not a number: 60 s (then a 401 renews it
    sooner if needed). Below 1 s: 1 s. Infinite or above a day: a day. Never a crash, never a token
    per request.
    """
    if value is None:
        log.warning("Token response from %s has no expires_in; assuming %d s.", token_url, DEFAULT_EXPIRES_IN)
        return float(DEFAULT_EXPIRES_IN)
    number: float | None = None
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
    shown = truncate(repr(value), 40)
    if number is None or math.isnan(number) or number <= 0:
        log.warning(
            "Token response from %s has an unusable expires_in %s; assuming %.0f s (a 401 renews it sooner).",
            token_url,
            shown,
            UNUSABLE_EXPIRES_IN,
        )
        return UNUSABLE_EXPIRES_IN
    if number < MIN_EXPIRES_IN:
        log.warning("Token response from %s has expires_in %s; assuming %.0f s.", token_url, shown, MIN_EXPIRES_IN)
        return MIN_EXPIRES_IN
    if number > MAX_EXPIRES_IN:
        log.warning(
            "Token response from %s has expires_in %s; renewing after %.0f s anyway.", token_url, shown, MAX_EXPIRES_IN
        )
        return MAX_EXPIRES_IN
    return number


def raise_for_token_error(response: requests.Response, token_url: str) -> None:
    """Turn a non-200 token-endpoint answer into a :class:`SmartAuthError` with the RFC 6749 code."""
    if response.status_code == 200:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error = truncate(body["error"], 80)
        description = (
            truncate(body["error_description"], MAX_DESCRIPTION)
            if isinstance(body.get("error_description"), str)
            else None
        )
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
            error_uri=truncate(body["error_uri"], MAX_DESCRIPTION) if isinstance(body.get("error_uri"), str) else None,
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
    expires_in = clamp_expires_in(data.get("expires_in"), token_url)
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
        lifetime=expires_in,
        scope=scope,
        refresh_token=refresh_token,
        id_token=id_token,
        context={k: v for k, v in data.items() if k not in secret_or_known},
    )
