"""App Launch records (EHR launches, authorization codes, refresh tokens) and the checks made on redemption.

Every check raises the token endpoint's ``TokenError`` (RFC 6749 §5.2) with a description naming the problem.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any

from airflow_provider_smart.testing.auth_server import Client, TokenError
from airflow_provider_smart.testing.scopes import Scope, parse_scopes

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


@dataclass
class EhrLaunch:
    patient: str | None
    encounter: str | None


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    challenge: str
    scope_text: str
    context: dict[str, Any]  # patient, encounter, fhirUser, need_patient_banner, smart_style_url, tenant
    nonce: str | None
    family: str  # every token descending from this code shares it (for revocation on code reuse)
    expires_at: float
    used: bool = False


@dataclass
class RefreshGrant:
    client_id: str
    scope_text: str  # the original grant; a rotated successor keeps it (RFC 6749 §6)
    context: dict[str, Any]
    family: str
    expires_at: float
    status: str = "active"  # active | rotated | revoked


def s256(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(verifier)))`` without padding (RFC 7636 §4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def check_code(code: AuthCode | None, client: Client, form: dict[str, str]) -> AuthCode:
    """The code, if ``client`` may redeem it with this form (redirect_uri, PKCE verifier), else invalid_grant."""

    def fail(description: str) -> TokenError:
        return TokenError(400, "invalid_grant", description)

    if code is None:
        raise fail("unknown authorization code")
    if code.expires_at <= time.time():
        raise fail("authorization code is expired")
    if code.client_id != client.client_id:
        raise fail("authorization code was issued to another client")
    if form.get("redirect_uri") != code.redirect_uri:
        raise fail("redirect_uri does not match the one of the authorize request")
    verifier = form.get("code_verifier")
    if not verifier:
        raise fail("code_verifier is required (PKCE)")
    if not _VERIFIER.fullmatch(verifier):
        raise fail("code_verifier must be 43-128 characters of [A-Za-z0-9-._~]")
    if not hmac.compare_digest(s256(verifier), code.challenge):
        raise fail("code_verifier does not match the code_challenge (PKCE S256)")
    return code


def check_refresh(grant: RefreshGrant | None, client: Client) -> RefreshGrant:
    """The grant, if it is live and ``client``'s, else invalid_grant saying why not."""

    def fail(description: str) -> TokenError:
        return TokenError(400, "invalid_grant", description)

    if grant is None:
        raise fail("unknown refresh token")
    if grant.client_id != client.client_id:
        raise fail("refresh token was issued to another client")
    if grant.status == "revoked":
        raise fail("refresh token was revoked")
    if grant.status == "rotated":
        raise fail("refresh token was rotated: it was already used, use the newest refresh_token")
    if grant.expires_at <= time.time():
        raise fail("refresh token is expired")
    return grant


def narrow_scope(requested: str, original: str) -> str:
    """``requested`` if it is a subset of the ``original`` grant, else ``invalid_scope``."""
    granted, parsed = original.split(), parse_scopes(original)
    narrowed: list[str] = []
    for text in requested.split():
        scope = Scope.parse(text)
        if not (text in granted or (scope and any(g.covers(scope) for g in parsed))):
            raise TokenError(
                400, "invalid_scope", f"scope {text!r} exceeds the original grant ({original}); a refresh may narrow it"
            )
        if text not in narrowed:
            narrowed.append(text)
    return " ".join(narrowed)
