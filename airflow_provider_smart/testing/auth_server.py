"""The sandbox's token endpoint: client registry, real JWT client-assertion checks and tokens (scopes: ``scopes``).

Implements SMART Backend Services (``client_credentials`` with ``private_key_jwt``) plus the symmetric
``client_secret_basic`` / ``client_secret_post`` methods and public clients (``client_id`` only, for the
App Launch grants that ``launch_server`` adds through :attr:`AuthServer.grants`). Errors follow RFC 6749
section 5.2.
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
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from airflow_provider_smart.testing.common import Request, Response, json_response, operation_outcome
from airflow_provider_smart.testing.scopes import LAUNCH_SCOPES, Scope, grant_scopes, parse_scopes

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300
LEEWAY = 5
JTI_WINDOW = 300
DEFAULT_SIGNING_ALGS = ("RS384", "ES384", "ES256", "RS256")
_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# -- registry and tokens --------------------------------------------------------------------------


@dataclass
class Client:
    client_id: str
    keys: dict[str, dict[str, Any]]  # kid -> public JWK
    secret: str | None
    scopes: list[Scope]
    extra_scopes: frozenset[str] = frozenset()  # registered members of LAUNCH_SCOPES
    redirect_uris: list[str] = field(default_factory=list)
    public: bool = False
    jwks_url: str | None = None  # keys fetched from here (the jku registered), instead of ``keys``


@dataclass
class AccessToken:
    value: str
    client_id: str
    scopes: list[Scope]
    scope_text: str
    expires_at: float

    def allows(self, resource_type: str, need: str = "rs") -> bool:
        """``system/``, ``user/`` and ``patient/`` scopes all permit (the sandbox has no compartments)."""
        return any(s.allows(resource_type, need, context=None) for s in self.scopes)


class TokenError(Exception):
    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}


@dataclass
class Attempt:
    """What is known about a token request so far (for ``token_log``, also when it fails)."""

    client_id: str | None = None
    auth_method: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# A grant: (request, form, attempt) -> the 200 token response body; raises TokenError.
GrantHandler = Callable[[Request, dict[str, str], Attempt], dict[str, Any]]


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
        self.grants: dict[str, GrantHandler] = {"client_credentials": self._client_credentials}
        self.jwks_cache_seconds = 300.0  # like real servers: an unknown kid is fetched again at once
        self.jwks_fetches: list[str] = []  # URLs fetched, in order
        self._jwks_cache: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}

    # -- registry -------------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        *,
        jwks: dict[str, Any] | None = None,
        client_secret: str | None = None,
        scopes: str = "system/*.rs system/*.read",
        redirect_uris: list[str] | None = None,
        public: bool = False,
        jwks_url: str | None = None,
    ) -> None:
        if not client_id:
            raise ValueError("client_id is required")
        if public and (jwks is not None or client_secret is not None or jwks_url is not None):
            raise ValueError("a public client has neither jwks nor client_secret")
        if jwks is not None and jwks_url is not None:
            raise ValueError("register jwks (the keys) or jwks_url (where to fetch them), not both")
        if jwks_url is not None:
            check_loopback_url(jwks_url)
        if not public and jwks is None and client_secret is None and jwks_url is None:
            raise ValueError(
                "register_client needs jwks or jwks_url (asymmetric) or client_secret (symmetric), or public=True"
            )
        uris = list(redirect_uris or [])
        for uri in uris:
            parts = urlsplit(uri)
            if not parts.scheme or not (parts.netloc or parts.path) or "#" in uri:
                raise ValueError(f"redirect URI {uri!r} must be absolute and have no fragment")
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
            self.clients[client_id] = Client(
                client_id,
                keys,
                client_secret,
                parse_scopes(scopes),
                frozenset(s for s in scopes.split() if s in LAUNCH_SCOPES),
                uris,
                public,
                jwks_url,
            )

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

    def issue_access_token(self, client_id: str, scope_text: str) -> str:
        """Mint and remember a new access token for ``scope_text``; returns its value."""
        value = secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[value] = AccessToken(
                value, client_id, parse_scopes(scope_text), scope_text, time.time() + self.token_lifetime
            )
            self.token_requests += 1
        return value

    def revoke_access_tokens(self, values: list[str]) -> None:
        with self._lock:
            for value in values:
                if value in self.tokens:
                    self.tokens[value].expires_at = 0.0

    # -- token endpoint -------------------------------------------------------------------------

    def handle_token(self, request: Request) -> Response:
        attempt = Attempt()
        form: dict[str, str] = {}
        try:
            form = self._parse_form(request)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise TokenError(400, "invalid_request", "grant_type is required")
            grant = self.grants.get(grant_type)
            if grant is None:
                raise TokenError(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
            body = grant(request, form, attempt)
        except TokenError as exc:
            self._log(attempt, form, ok=False, error=exc.error, description=exc.description)
            error = {"error": exc.error, "error_description": exc.description}
            return json_response(exc.status, error, headers={**NO_STORE, **exc.headers})
        self._log(attempt, form, ok=True, granted=body["scope"])
        for key, patch in (self.response_patch or {}).items():
            if patch is None:
                body.pop(key, None)
            else:
                body[key] = patch
        return json_response(200, body, headers=dict(NO_STORE))

    def _client_credentials(self, request: Request, form: dict[str, str], attempt: Attempt) -> dict[str, Any]:
        client = self.authenticate(request, form, attempt)
        requested = form.get("scope", "")
        if not requested.strip():
            raise TokenError(400, "invalid_request", "scope is required")
        granted = grant_scopes(requested, client.scopes)
        if not granted:
            raise TokenError(400, "invalid_scope", f"none of the requested scopes may be granted: {requested}")
        scope_text = " ".join(granted)
        return {
            "access_token": self.issue_access_token(client.client_id, scope_text),
            "token_type": "bearer",
            "expires_in": self.token_lifetime,
            "scope": scope_text,
        }

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

    def authenticate(
        self, request: Request, form: dict[str, str], attempt: Attempt, *, allow_public: bool = False
    ) -> Client:
        """The client a token request authenticates as; ``allow_public`` admits public ``client_id``-only."""
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
        if allow_public and form.get("client_id"):
            attempt.auth_method = "none"
            return self._public_client(form["client_id"])
        raise TokenError(401, "invalid_client", "no client authentication (client_assertion or client secret)")

    def _public_client(self, client_id: str) -> Client:
        client = self.clients.get(client_id)
        if client is None:
            raise TokenError(401, "invalid_client", f"unknown client {client_id!r}")
        if not client.public:
            raise TokenError(
                401,
                "invalid_client",
                f"client {client_id!r} is confidential: authenticate with client_secret_basic, "
                "client_secret_post or private_key_jwt",
            )
        return client

    def _check_secret(self, client_id: str, secret: str, challenge: dict[str, str]) -> Client:
        client = self.clients.get(client_id)
        if client is None:
            raise TokenError(401, "invalid_client", f"unknown client {client_id!r}", challenge)
        if client.secret is None:
            raise TokenError(401, "invalid_client", "this client is not registered for secret authentication")
        if not hmac.compare_digest(client.secret.encode(), secret.encode()):
            raise TokenError(401, "invalid_client", "client secret mismatch", challenge)
        return client

    def _verify_assertion(self, form: dict[str, str], attempt: Attempt) -> Client:
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
        client_id = claims.get("iss") or claims.get("sub")
        attempt.client_id = client_id if isinstance(client_id, str) else attempt.client_id
        if not isinstance(client_id, str):
            raise fail("iss claim is missing")
        if form.get("client_id", client_id) != client_id:
            raise fail("client_id form parameter does not match the assertion's iss")
        client = self.clients.get(client_id)
        if client is None:
            raise fail(f"unknown client {client_id!r}")
        if "jku" in header and header["jku"] != client.jwks_url:
            registered = client.jwks_url or "none registered"
            raise fail(f"JWT header jku does not match the client's registered JWKS URL ({registered})")
        if client.jwks_url is not None:
            jwk = self._fetched_key(client.jwks_url, kid, fail)
        elif not client.keys:
            raise fail("this client has no registered JWKS")
        else:
            jwk = client.keys.get(kid)
        if jwk is None or ("key_ops" in jwk and "verify" not in jwk["key_ops"]):
            raise fail(f"kid {kid!r} is not in the client's registered JWKS")
        if not _alg_matches_key(alg, jwk):
            raise fail(f"alg {alg} does not match key {kid!r} (kty {jwk.get('kty')}, crv {jwk.get('crv')})")
        try:
            key = get_default_algorithms()[alg].from_jwk(jwk)
            jwt.decode(
                assertion,
                key,
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

    def _fetched_key(self, url: str, kid: str, fail: Callable[[str], TokenError]) -> dict[str, Any] | None:
        """The key ``kid`` of the JWK Set at ``url``: cached ``jwks_cache_seconds``, fetched again at once for
        a kid the cached set lacks (how servers pick up a newly published key)."""
        with self._lock:
            cached = self._jwks_cache.get(url)
        if cached is not None and time.time() - cached[0] < self.jwks_cache_seconds and kid in cached[1]:
            return cached[1][kid]
        try:
            keys = fetch_loopback_jwks(url)
        except ValueError as exc:
            raise fail(str(exc)) from None
        with self._lock:
            self.jwks_fetches.append(url)
            self._jwks_cache[url] = (time.time(), keys)
        return keys.get(kid)

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
        attempt: Attempt,
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


def check_loopback_url(url: str) -> None:
    """The sandbox fetches JWK Sets from this machine only: it must never be a way to reach other hosts."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the sandbox fetches JWK Sets from loopback http(s) URLs only, not {url!r}")


def fetch_loopback_jwks(url: str, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """kid -> public JWK from the JWK Set at ``url`` (loopback only, no redirects); raises ValueError."""
    import json
    import urllib.error
    import urllib.request

    check_loopback_url(url)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # a 3xx then fails as an HTTPError: a JWK Set URL is fetched where it is registered

    opener = urllib.request.build_opener(NoRedirect, urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "application/json"}), timeout=timeout) as r:
            document = json.loads(r.read(1024 * 1024))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ValueError(f"could not fetch the client's JWK Set from {url} ({type(exc).__name__})") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError(f"the document at {url} is not a JWK Set")
    return {k["kid"]: k for k in keys if isinstance(k, dict) and k.get("kid") and "d" not in k}


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
