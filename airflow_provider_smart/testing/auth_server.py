"""The sandbox's token endpoint: client registry, real JWT client-assertion checks, scopes and tokens.

Implements SMART Backend Services (``client_credentials`` with ``private_key_jwt``) plus the symmetric
``client_secret_basic`` / ``client_secret_post`` methods. Errors follow RFC 6749 section 5.2.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from airflow_provider_smart.testing.common import Request, Response, json_response, operation_outcome

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300
LEEWAY = 5
JTI_WINDOW = 300
DEFAULT_SIGNING_ALGS = ("RS384", "ES384", "ES256", "RS256")
_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# -- scopes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """A parsed ``context/Type.perms[?query]`` scope; v1 ``.read/.write/.*`` mapped to v2 letters."""

    context: str
    resource: str
    perms: frozenset[str]
    text: str

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        context, slash, rest = text.partition("/")
        if not slash or context not in ("system", "user", "patient"):
            return None
        resource, dot, perms = rest.partition(".")
        perms = perms.split("?", 1)[0]
        if not dot or not resource or not (resource == "*" or resource.isalnum()):
            return None
        letters = _V1_PERMS.get(perms, perms)
        if not letters or not _in_order_subset(letters, "cruds"):
            return None
        return cls(context, resource, frozenset(letters), text)

    def covers(self, other: Scope) -> bool:
        return self.context == other.context and self.resource in ("*", other.resource) and other.perms <= self.perms

    def allows(self, resource_type: str, need: str, context: str = "system") -> bool:
        return self.context == context and self.resource in ("*", resource_type) and set(need) <= self.perms


def _in_order_subset(letters: str, alphabet: str) -> bool:
    position = -1
    for letter in letters:
        index = alphabet.find(letter)
        if index <= position:
            return False
        position = index
    return True


def parse_scopes(text: str) -> list[Scope]:
    return [scope for scope in (Scope.parse(s) for s in text.split()) if scope is not None]


def grant_scopes(requested: str, registered: list[Scope]) -> list[str]:
    """The requested scope strings that some registered scope covers, in request order."""
    granted: list[str] = []
    for text in requested.split():
        scope = Scope.parse(text)
        if scope and text not in granted and any(r.covers(scope) for r in registered):
            granted.append(text)
    return granted


# -- registry and tokens --------------------------------------------------------------------------


@dataclass
class Client:
    client_id: str
    keys: dict[str, dict[str, Any]]  # kid -> public JWK
    secret: str | None
    scopes: list[Scope]


@dataclass
class AccessToken:
    value: str
    client_id: str
    scopes: list[Scope]
    scope_text: str
    expires_at: float

    def allows(self, resource_type: str, need: str = "rs") -> bool:
        return any(s.allows(resource_type, need) for s in self.scopes)


class TokenError(Exception):
    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}


@dataclass
class _Attempt:
    client_id: str | None = None
    auth_method: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class AuthServer:
    """Token endpoint state. ``token_url`` is read through a callable (the port is known only at start)."""

    def __init__(
        self,
        token_url: Callable[[], str],
        *,
        token_lifetime: int = 300,
        signing_algs: list[str] | tuple[str, ...] = DEFAULT_SIGNING_ALGS,
    ) -> None:
        self._token_url = token_url
        self.token_lifetime = token_lifetime
        self.signing_algs = list(signing_algs)
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, AccessToken] = {}
        self.token_log: list[dict[str, Any]] = []
        self.token_requests = 0
        self.response_patch: dict[str, Any] | None = None
        self._jti_seen: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    # -- registry -------------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        *,
        jwks: dict[str, Any] | None = None,
        client_secret: str | None = None,
        scopes: str = "system/*.rs system/*.read",
    ) -> None:
        if not client_id:
            raise ValueError("client_id is required")
        if jwks is None and client_secret is None:
            raise ValueError("register_client needs jwks (asymmetric) or client_secret (symmetric)")
        keys: dict[str, dict[str, Any]] = {}
        for jwk in (jwks or {}).get("keys", []):
            if not isinstance(jwk, dict) or not jwk.get("kid") or jwk.get("kty") not in ("RSA", "EC"):
                raise ValueError("every JWK needs a kid and kty RSA or EC")
            if "d" in jwk:
                raise ValueError(f"JWK {jwk['kid']!r} holds a private key; register the public JWKS")
            keys[jwk["kid"]] = dict(jwk)
        if jwks is not None and not keys:
            raise ValueError("jwks must be a JWK Set: {'keys': [...]} with at least one key")
        with self._lock:
            self.clients[client_id] = Client(client_id, keys, client_secret, parse_scopes(scopes))

    def expire_all(self) -> None:
        with self._lock:
            for token in self.tokens.values():
                token.expires_at = 0.0

    def reset_logs(self) -> None:
        with self._lock:
            self.token_log.clear()
            self.token_requests = 0

    def check_bearer(self, request: Request) -> AccessToken | None:
        """The valid, unexpired access token of ``request``, or None."""
        scheme, _, value = request.header("authorization").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        token = self.tokens.get(value.strip())
        if token is None or token.expires_at <= time.time():
            return None
        return token

    # -- token endpoint -------------------------------------------------------------------------

    def handle_token(self, request: Request) -> Response:
        attempt = _Attempt()
        form: dict[str, str] = {}
        try:
            form = self._parse_form(request)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise TokenError(400, "invalid_request", "grant_type is required")
            if grant_type != "client_credentials":
                raise TokenError(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
            client = self._authenticate(request, form, attempt)
            requested = form.get("scope", "")
            if not requested.strip():
                raise TokenError(400, "invalid_request", "scope is required")
            granted = grant_scopes(requested, client.scopes)
            if not granted:
                raise TokenError(400, "invalid_scope", f"none of the requested scopes may be granted: {requested}")
        except TokenError as exc:
            self._log(attempt, form, ok=False, error=exc.error, description=exc.description)
            body = {"error": exc.error, "error_description": exc.description}
            return json_response(exc.status, body, headers={**_NO_STORE, **exc.headers})
        scope_text = " ".join(granted)
        value = secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[value] = AccessToken(
                value, client.client_id, parse_scopes(scope_text), scope_text, time.time() + self.token_lifetime
            )
            self.token_requests += 1
        self._log(attempt, form, ok=True, granted=scope_text)
        body: dict[str, Any] = {
            "access_token": value,
            "token_type": "bearer",
            "expires_in": self.token_lifetime,
            "scope": scope_text,
        }
        for key, patch in (self.response_patch or {}).items():
            if patch is None:
                body.pop(key, None)
            else:
                body[key] = patch
        return json_response(200, body, headers=dict(_NO_STORE))

    @staticmethod
    def _parse_form(request: Request) -> dict[str, str]:
        content_type = request.header("content-type").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise TokenError(400, "invalid_request", "the token request must be application/x-www-form-urlencoded")
        try:
            pairs = parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=bool(request.body))
        except (UnicodeDecodeError, ValueError):
            raise TokenError(400, "invalid_request", "the form body could not be parsed") from None
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                raise TokenError(400, "invalid_request", f"parameter {key!r} is repeated")
            form[key] = value
        return form

    def _authenticate(self, request: Request, form: dict[str, str], attempt: _Attempt) -> Client:
        basic = request.header("authorization")
        uses_basic = basic[:6].lower() == "basic "
        uses_assertion = "client_assertion" in form or "client_assertion_type" in form
        uses_post = "client_secret" in form
        attempt.client_id = form.get("client_id")
        if uses_basic + uses_assertion + uses_post > 1:
            raise TokenError(400, "invalid_request", "more than one client authentication method was used")
        if uses_assertion:
            attempt.auth_method = "private_key_jwt"
            return self._verify_assertion(form, attempt)
        if uses_basic:
            attempt.auth_method = "client_secret_basic"
            challenge = {"WWW-Authenticate": 'Basic realm="smart-sandbox"'}
            try:
                decoded = base64.b64decode(basic[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise TokenError(401, "invalid_client", "malformed Basic credentials", challenge) from None
            raw_id, colon, raw_secret = decoded.partition(":")
            if not colon:
                raise TokenError(401, "invalid_client", "malformed Basic credentials", challenge)
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if form.get("client_id", client_id) != client_id:
                raise TokenError(400, "invalid_request", "client_id does not match the Basic credentials")
            attempt.client_id = client_id
            return self._check_secret(client_id, secret, challenge)
        if uses_post:
            attempt.auth_method = "client_secret_post"
            if not form.get("client_id"):
                raise TokenError(401, "invalid_client", "client_secret_post requires client_id")
            return self._check_secret(form["client_id"], form["client_secret"], {})
        raise TokenError(401, "invalid_client", "no client authentication (client_assertion or client secret)")

    def _check_secret(self, client_id: str, secret: str, challenge: dict[str, str]) -> Client:
        client = self.clients.get(client_id)
        if client is None:
            raise TokenError(401, "invalid_client", f"unknown client {client_id!r}", challenge)
        if client.secret is None:
            raise TokenError(401, "invalid_client", "this client is not registered for secret authentication")
        if not hmac.compare_digest(client.secret.encode(), secret.encode()):
            raise TokenError(401, "invalid_client", "client secret mismatch", challenge)
        return client

    def _verify_assertion(self, form: dict[str, str], attempt: _Attempt) -> Client:
        import jwt  # imported lazily: PyJWT + cryptography cost ~150 ms at import
        from jwt.algorithms import get_default_algorithms

        def fail(description: str) -> TokenError:
            return TokenError(401, "invalid_client", description)

        if form.get("client_assertion_type") != JWT_BEARER:
            raise fail(f"client_assertion_type must be {JWT_BEARER}")
        assertion = form.get("client_assertion", "")
        if not assertion:
            raise fail("client_assertion is missing")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise fail("client_assertion is not a well-formed JWT") from None
        if header.get("typ") != "JWT":
            raise fail(f"JWT header typ must be 'JWT' (got {header.get('typ')!r})")
        kid, alg = header.get("kid"), header.get("alg")
        if not kid:
            raise fail("JWT header has no kid")
        if alg not in self.signing_algs:
            raise fail(f"JWT alg {alg!r} is not accepted; use one of {', '.join(self.signing_algs)}")
        if "jku" in header:
            raise fail("JWT header jku does not match the client registration (no jku registered)")
        client_id = claims.get("iss") or claims.get("sub")
        attempt.client_id = client_id if isinstance(client_id, str) else attempt.client_id
        if not isinstance(client_id, str):
            raise fail("iss claim is missing")
        if form.get("client_id", client_id) != client_id:
            raise fail("client_id form parameter does not match the assertion's iss")
        client = self.clients.get(client_id)
        if client is None:
            raise fail(f"unknown client {client_id!r}")
        if not client.keys:
            raise fail("this client has no registered JWKS")
        jwk = client.keys.get(kid)
        if jwk is None or ("key_ops" in jwk and "verify" not in jwk["key_ops"]):
            raise fail(f"kid {kid!r} is not in the client's registered JWKS")
        if not _alg_matches_key(alg, jwk):
            raise fail(f"alg {alg} does not match key {kid!r} (kty {jwk.get('kty')}, crv {jwk.get('crv')})")
        try:
            key = get_default_algorithms()[alg].from_jwk(jwk)
            jwt.decode(
                assertion,
                key,  # type: ignore[arg-type]
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise fail(f"signature verification failed for kid {kid!r}") from None
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise fail(f"assertion could not be verified ({type(exc).__name__})") from None
        self._check_claims(claims, client_id, fail)
        return client

    def _check_claims(self, claims: dict[str, Any], client_id: str, fail: Callable[[str], TokenError]) -> None:
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise fail("iss and sub must both equal the client_id")
        token_url = self._token_url()
        aud = claims.get("aud")
        if not (aud == token_url or (isinstance(aud, list) and token_url in aud)):
            raise fail(f"aud must be the token URL {token_url} (got {aud!r})")
        exp = claims.get("exp")
        if exp is None:
            raise fail("exp claim is missing")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise fail("exp must be an integer (seconds since the epoch)")
        now = time.time()
        if exp + LEEWAY < now:
            raise fail("assertion is expired (exp is in the past)")
        if exp > now + MAX_ASSERTION_LIFETIME + LEEWAY:
            raise fail("exp is more than 5 minutes in the future")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + LEEWAY:
            raise fail("assertion is not valid yet (nbf is in the future)")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise fail("jti claim is missing")
        with self._lock:
            seen = self._jti_seen.setdefault(client_id, {})
            for old in [j for j, t in seen.items() if t < now - JTI_WINDOW]:
                del seen[old]
            if jti in seen:
                raise fail(f"jti replay: {jti!r} was already used by this client")
            seen[jti] = now

    def _log(
        self,
        attempt: _Attempt,
        form: dict[str, str],
        *,
        ok: bool,
        granted: str | None = None,
        error: str | None = None,
        description: str | None = None,
    ) -> None:
        entry = {
            "client_id": attempt.client_id,
            "grant_type": form.get("grant_type"),
            "scope_requested": form.get("scope"),
            "scope_granted": granted,
            "ok": ok,
            "error": error,
            "error_description": description,
            "auth_method": attempt.auth_method,
        }
        with self._lock:
            self.token_log.append(entry)

    def log_fault(self, status: int) -> None:
        with self._lock:
            self.token_log.append(
                {
                    "client_id": None,
                    "grant_type": None,
                    "scope_requested": None,
                    "scope_granted": None,
                    "ok": False,
                    "error": "fault",
                    "error_description": f"injected fault (HTTP {status})",
                    "auth_method": None,
                }
            )


def _alg_matches_key(alg: str, jwk: dict[str, Any]) -> bool:
    if jwk.get("alg") and jwk["alg"] != alg:
        return False
    if alg[:2] in ("RS", "PS"):
        return jwk.get("kty") == "RSA"
    return jwk.get("kty") == "EC" and jwk.get("crv") == _EC_CURVE_FOR_ALG.get(alg)


def unauthorized(description: str) -> Response:
    header = f'Bearer realm="smart-sandbox", error="invalid_token", error_description="{description}"'
    return json_response(
        401,
        operation_outcome("login", description),
        content_type="application/fhir+json",
        headers={"WWW-Authenticate": header},
    )


def forbidden(description: str) -> Response:
    return json_response(
        403,
        operation_outcome("forbidden", description),
        content_type="application/fhir+json",
        headers={"WWW-Authenticate": 'Bearer realm="smart-sandbox", error="insufficient_scope"'},
    )
