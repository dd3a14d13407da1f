"""SMART App Launch for the sandbox: ``/auth/authorize`` and the ``authorization_code`` / ``refresh_token`` grants.

The authorize endpoint auto-approves (there is no user and no UI) but checks the request as strictly as a
real EHR: registered client, exact ``redirect_uri`` and ``aud``, PKCE ``S256`` only, ``state``, and a known
``launch`` id for an EHR launch. Errors about the client or its redirect URI answer 400 and never redirect
(no open redirect); every other error redirects with an RFC 6749 §4.1.2.1 ``error``. Codes are single-use,
live ``code_lifetime`` seconds and remember the PKCE challenge, the granted scopes and the launch context.

The two grants plug into the token endpoint through :attr:`AuthServer.grants`; client authentication is the
token endpoint's own (public clients send ``client_id`` only). Refresh tokens rotate by default: a rotated
token is dead at once. Redeeming a code twice revokes every token that code produced (RFC 6749 §4.1.2).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from airflow_provider_smart.testing.auth_server import (
    NO_STORE,
    Attempt,
    AuthServer,
    Client,
    TokenError,
)
from airflow_provider_smart.testing.common import Request, Response, json_response
from airflow_provider_smart.testing.launch_state import (
    AuthCode,
    EhrLaunch,
    RefreshGrant,
    check_code,
    check_refresh,
    narrow_scope,
)
from airflow_provider_smart.testing.oidc import IdTokenSigner
from airflow_provider_smart.testing.scopes import grant_scopes

CODE_LIFETIME = 60
REFRESH_SCOPES = frozenset(("offline_access", "online_access"))
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_CONTEXT_KEYS = ("need_patient_banner", "smart_style_url", "tenant")
_NOT_LOGGED = ("client_secret", "client_assertion")
SMART_STYLE = {
    "color_background": "#edeae3",
    "color_error": "#9e2d2d",
    "color_highlight": "#69b5ce",
    "color_modal_backdrop": "",
    "color_success": "#498e49",
    "color_text": "#303030",
    "dim_border_radius": "6px",
    "dim_font_size": "13px",
    "dim_spacing_size": "20px",
    "font_family_body": "Georgia, Times, 'Times New Roman', serif",
    "font_family_heading": "'HelveticaNeue-Light', Helvetica, Arial, 'Lucida Grande', sans-serif",
}


class AuthorizeError(Exception):
    """An authorize error: answered 400 before the redirect URI is verified, redirected with ``error`` after."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


class LaunchServer:
    """App Launch state: EHR launches, codes, refresh tokens and the id_token key."""

    def __init__(
        self,
        auth: AuthServer,
        *,
        fhir_url: Callable[[], str],
        origin: Callable[[], str],
        app_launch: bool | None = None,
    ) -> None:
        self.auth = auth
        self._fhir_url, self._origin = fhir_url, origin
        self.app_launch = app_launch
        self.rotate_refresh_tokens = True
        self.refresh_token_lifetime = 3600
        self.code_lifetime = CODE_LIFETIME
        self.refresh_requests = 0
        self.authorize_log: list[dict[str, Any]] = []
        self.signer = IdTokenSigner()
        self._context: dict[str, Any] | None = None
        self._launches: dict[str, EhrLaunch] = {}
        self._codes: dict[str, AuthCode] = {}
        self._refresh: dict[str, RefreshGrant] = {}
        self._family_tokens: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        auth.grants["authorization_code"] = self._authorization_code
        auth.grants["refresh_token"] = self._refresh_token

    # -- settings and hooks ---------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """``app_launch`` if set, else whether some registered client has redirect URIs."""
        if self.app_launch is not None:
            return self.app_launch
        return any(client.redirect_uris for client in list(self.auth.clients.values()))

    @property
    def launch_context(self) -> dict[str, Any]:
        if self._context is None:
            self._context = {
                "patient": "pat-0001",
                "encounter": "enc-0001-01",
                "fhirUser": "Practitioner/prac-1",
                "need_patient_banner": True,
                "smart_style_url": f"{self._origin()}/smart-style.json",
                "tenant": "sandbox",
            }
        return self._context

    @launch_context.setter
    def launch_context(self, context: dict[str, Any]) -> None:
        self._context = context

    def create_ehr_launch(self, patient: str | None = None, encounter: str | None = None) -> str:
        context = self.launch_context
        launch = EhrLaunch(patient or context.get("patient"), encounter or context.get("encounter"))
        launch_id = secrets.token_urlsafe(16)
        with self._lock:
            self._launches[launch_id] = launch
        return launch_id

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            for grant in self._refresh.values():
                grant.status = "revoked"

    def reset_logs(self) -> None:
        with self._lock:
            self.authorize_log.clear()
            self.refresh_requests = 0

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise TokenError(
                400,
                "unsupported_grant_type",
                "App Launch is off in this sandbox (register a client with redirect_uris or set app_launch=True)",
            )

    # -- /auth/authorize ------------------------------------------------------------------------

    def handle_authorize(self, request: Request) -> Response:
        params: dict[str, str] = {}
        try:
            params, repeated = self._read_params(request)
            client, redirect_uri = self._client_and_redirect(params, repeated)
            try:
                code = self._issue_code(client, redirect_uri, params, repeated)
            except AuthorizeError as exc:
                self._log_authorize(params, f"error:{exc.error}")
                error = {"error": exc.error, "error_description": exc.description, "state": params.get("state")}
                return _redirect(redirect_uri, error)
        except AuthorizeError as exc:
            self._log_authorize(params, f"error:{exc.error}")
            body = {"error": exc.error, "error_description": exc.description}
            return json_response(400, body, headers=dict(NO_STORE))
        self._log_authorize(params, "code")
        return _redirect(redirect_uri, {"code": code, "state": params["state"]})

    @staticmethod
    def _read_params(request: Request) -> tuple[dict[str, str], set[str]]:
        if request.method == "POST":
            content_type = request.header("content-type").split(";")[0].strip().lower()
            if content_type != "application/x-www-form-urlencoded":
                description = "a POST authorize request must be application/x-www-form-urlencoded"
                raise AuthorizeError("invalid_request", description)
            text = request.body.decode("utf-8", "replace")
        else:
            text = request.query
        params: dict[str, str] = {}
        repeated: set[str] = set()
        for key, value in parse_qsl(text, keep_blank_values=True):
            if key in params:
                repeated.add(key)
            else:
                params[key] = value
        return params, repeated

    def _client_and_redirect(self, params: dict[str, str], repeated: set[str]) -> tuple[Client, str]:
        """Errors here answer 400 and never redirect: the redirect URI is not trusted yet."""

        def fail(description: str) -> AuthorizeError:
            return AuthorizeError("invalid_request", description)

        if not self.enabled:
            raise fail("App Launch is off in this sandbox (register a client with redirect_uris)")
        if repeated & {"client_id", "redirect_uri"}:
            raise fail("client_id and redirect_uri must not be repeated")
        client_id, redirect_uri = params.get("client_id"), params.get("redirect_uri")
        if not client_id:
            raise fail("client_id is required")
        client = self.auth.clients.get(client_id)
        if client is None:
            raise fail(f"unknown client {client_id!r}")
        if not redirect_uri:
            raise fail("redirect_uri is required")
        if redirect_uri not in client.redirect_uris:
            raise fail(f"redirect_uri {redirect_uri!r} is not registered for client {client_id!r}")
        return client, redirect_uri

    def _check_request(self, params: dict[str, str], repeated: set[str]) -> None:
        """The checks of the authorize parameters that do not depend on the client (errors redirect)."""
        if repeated:
            raise AuthorizeError("invalid_request", f"parameters must not be repeated: {', '.join(sorted(repeated))}")
        response_type = params.get("response_type")
        if not response_type:
            raise AuthorizeError("invalid_request", "response_type is required")
        if response_type != "code":
            raise AuthorizeError("unsupported_response_type", f"response_type must be 'code' (got {response_type!r})")
        if not params.get("state"):
            raise AuthorizeError("invalid_request", "state is required")
        method, challenge = params.get("code_challenge_method"), params.get("code_challenge")
        if method != "S256":
            raise AuthorizeError("invalid_request", f"code_challenge_method must be S256 (got {method!r}; no plain)")
        if not challenge or not _S256_CHALLENGE.fullmatch(challenge):
            raise AuthorizeError("invalid_request", "code_challenge must be BASE64URL(SHA256(verifier)): 43 characters")
        aud, fhir_url = params.get("aud"), self._fhir_url()
        if aud != fhir_url:
            raise AuthorizeError("invalid_request", f"aud must be exactly the FHIR base URL {fhir_url} (got {aud!r})")
        if not params.get("scope", "").strip():
            raise AuthorizeError("invalid_request", "scope is required")

    def _issue_code(self, client: Client, redirect_uri: str, params: dict[str, str], repeated: set[str]) -> str:
        self._check_request(params, repeated)
        requested = params["scope"]
        launch = self._ehr_launch(requested, params.get("launch"))
        granted = grant_scopes(requested, client.scopes, client.extra_scopes)
        if not granted:
            raise AuthorizeError("invalid_scope", f"none of the requested scopes may be granted: {requested}")
        code = secrets.token_urlsafe(32)
        now = time.time()
        record = AuthCode(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            challenge=params["code_challenge"],
            scope_text=" ".join(granted),
            context=self._context_for(granted, launch),
            nonce=params.get("nonce"),
            family=secrets.token_hex(8),
            expires_at=now + self.code_lifetime,
        )
        with self._lock:
            for old in [c for c, r in self._codes.items() if r.expires_at < now - 600]:
                del self._codes[old]
            self._codes[code] = record
        return code

    def _ehr_launch(self, requested: str, launch_id: str | None) -> EhrLaunch | None:
        if "launch" not in requested.split():
            return None
        if not launch_id:
            raise AuthorizeError("invalid_request", "scope 'launch' (EHR launch) needs the launch parameter")
        with self._lock:
            launch = self._launches.get(launch_id)
        if launch is None:
            raise AuthorizeError("invalid_request", f"unknown launch id {launch_id!r}")
        return launch

    def _context_for(self, granted: list[str], launch: EhrLaunch | None) -> dict[str, Any]:
        base = dict(self.launch_context)
        if launch is not None and "launch" in granted:
            patient, encounter = launch.patient, launch.encounter
        else:
            patient = base.get("patient") if "launch/patient" in granted else None
            encounter = base.get("encounter") if "launch/encounter" in granted else None
        context = {key: base.get(key) for key in (*_CONTEXT_KEYS, "fhirUser")}
        return {**context, "patient": patient, "encounter": encounter}

    def _log_authorize(self, params: dict[str, str], outcome: str) -> None:
        entry = {k: v for k, v in params.items() if k not in _NOT_LOGGED}
        with self._lock:
            self.authorize_log.append({**entry, "outcome": outcome})

    # -- token grants ---------------------------------------------------------------------------

    def _authorization_code(self, request: Request, form: dict[str, str], attempt: Attempt) -> dict[str, Any]:
        self._check_enabled()
        client = self.auth.authenticate(request, form, attempt, allow_public=True)
        value = form.get("code")
        if not value:
            raise TokenError(400, "invalid_request", "code is required")
        code, refresh = self._redeem(value, client, form)
        return self._token_body(client.client_id, code.scope_text, code.context, code.family, refresh, code.nonce)

    def _redeem(self, value: str, client: Client, form: dict[str, str]) -> tuple[AuthCode, str | None]:
        """Check and consume a code; returns it and a refresh token when the grant includes offline/online access."""
        with self._lock:
            code = self._codes.get(value)
            if code is None or not code.used:
                code = check_code(code, client, form)
                code.used = True
                refresh = None
                if REFRESH_SCOPES & set(code.scope_text.split()):
                    refresh = self._add_refresh(client.client_id, code.scope_text, code.context, code.family)
                return code, refresh
        self._revoke_family(code.family)
        raise TokenError(400, "invalid_grant", "authorization code was already used; its tokens are now revoked")

    def _refresh_token(self, request: Request, form: dict[str, str], attempt: Attempt) -> dict[str, Any]:
        self._check_enabled()
        client = self.auth.authenticate(request, form, attempt, allow_public=True)
        value = form.get("refresh_token")
        if not value:
            raise TokenError(400, "invalid_request", "refresh_token is required")
        with self._lock:
            grant = check_refresh(self._refresh.get(value), client)
            requested = form.get("scope", "")
            scope_text = narrow_scope(requested, grant.scope_text) if requested.strip() else grant.scope_text
            successor = None
            if self.rotate_refresh_tokens:
                grant.status = "rotated"
                successor = self._add_refresh(client.client_id, grant.scope_text, grant.context, grant.family)
            self.refresh_requests += 1
        return self._token_body(client.client_id, scope_text, grant.context, grant.family, successor, None)

    def _add_refresh(self, client_id: str, scope_text: str, context: dict[str, Any], family: str) -> str:
        """A new refresh token (the caller holds the lock)."""
        value = secrets.token_urlsafe(32)
        expires_at = time.time() + self.refresh_token_lifetime
        self._refresh[value] = RefreshGrant(client_id, scope_text, context, family, expires_at)
        return value

    def _revoke_family(self, family: str) -> None:
        with self._lock:
            access = list(self._family_tokens.get(family, []))
            for grant in self._refresh.values():
                if grant.family == family:
                    grant.status = "revoked"
        self.auth.revoke_access_tokens(access)

    def _token_body(
        self,
        client_id: str,
        scope_text: str,
        context: dict[str, Any],
        family: str,
        refresh_token: str | None,
        nonce: str | None,
    ) -> dict[str, Any]:
        access = self.auth.issue_access_token(client_id, scope_text)
        with self._lock:
            self._family_tokens.setdefault(family, []).append(access)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.auth.token_lifetime,
            "scope": scope_text,
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        if {"openid", "fhirUser"} <= set(scope_text.split()):
            body["id_token"] = self._id_token(client_id, context, nonce)
        if context.get("patient"):
            body["patient"] = context["patient"]
        if context.get("encounter"):
            body["encounter"] = context["encounter"]
            body["fhirContext"] = [{"reference": f"Encounter/{context['encounter']}"}]
        body.update({key: context[key] for key in _CONTEXT_KEYS if context.get(key) is not None})
        return body

    def _id_token(self, client_id: str, context: dict[str, Any], nonce: str | None) -> str:
        fhir_user = context.get("fhirUser")
        extra: dict[str, Any] = {}
        if fhir_user:
            extra["fhirUser"] = fhir_user if "://" in fhir_user else f"{self._fhir_url()}/{fhir_user}"
        if nonce:
            extra["nonce"] = nonce
        return self.signer.sign(
            issuer=self._fhir_url(),
            subject=fhir_user or client_id,
            audience=client_id,
            lifetime=self.auth.token_lifetime,
            extra=extra,
        )


def _redirect(redirect_uri: str, params: dict[str, str | None]) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in redirect_uri else "?"
    if redirect_uri.endswith(("?", "&")):
        separator = ""
    return Response(302, b"", {"Location": f"{redirect_uri}{separator}{query}", **NO_STORE})
