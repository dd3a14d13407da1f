"""Turn the fields of a ``smart`` connection into validated settings and a ``requests`` auth.

Airflow-free on purpose: the hook (sync), the trigger (async connection fetch) and the CLI all build
their auth here, from ``host``/``login``/``password``/``extra``, so they cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from airflow_provider_smart.auth.backend import BackendServicesAuth, ClientSecretAuth, TokenAuth
from airflow_provider_smart.auth.discovery import normalise_base_url
from airflow_provider_smart.auth.keys import algs_for_key, choose_alg, load_private_key
from airflow_provider_smart.auth.tokens import InMemoryTokenStore, StoredToken, TokenStore
from airflow_provider_smart.connection_fields import AUTH_METHODS, EXTRA_ALIASES, check_extra
from airflow_provider_smart.exceptions import SmartConfigError
from airflow_provider_smart.origins import OriginPolicy, insecure_http_refusal
from airflow_provider_smart.sessions import DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT, new_session

TOKEN_STORES = ("variable", "file:<path>", "memory")
# SMART v2: read and search every resource type. Used by the client-credentials methods only; a
# refresh-token connection asks for nothing, so the server keeps the scope granted at authorisation.
DEFAULT_SCOPE = "system/*.rs"
# What the connection form used to pre-fill for every auth method; meaningless on a user's grant.
_OLD_FORM_SCOPE = "system/*.read"
# Airflow hides the value of any extra whose name contains a sensitive word ("token", "private_key",
# "secret", ...): in the UI a new form then shows "***" and saves it literally. Non-secret extras use
# names free of those words; the names they had before (EXTRA_ALIASES, from the field table) are still read.
# Tokens are shared by every hook in a process (a sensor and a download in one worker reuse them).
PROCESS_TOKEN_STORE = InMemoryTokenStore()


@dataclass
class ConnectionSettings:
    """A validated ``smart`` connection. Secrets are kept out of ``repr()``."""

    fhir_base_url: str
    client_id: str
    auth_method: str = "private_key_jwt"
    private_key: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    kid: str | None = None
    alg: str | None = None
    jku: str | None = None
    scope: str = DEFAULT_SCOPE
    token_url: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # values may be API keys
    verify: bool | str = True
    timeout: float = DEFAULT_TIMEOUT
    refresh_token: str | None = field(default=None, repr=False)
    token_store: str = "variable"
    allow_insecure_http: bool = False  # plain http off loopback / downgrades: for test servers only
    vendor: str = "auto"  # a bulk.vendors profile name, or auto (detected from /metadata)

    @property
    def secrets(self) -> list[str]:
        """Everything the secret masker must hide, header values included (they may be API keys)."""
        values = [self.private_key, self.client_secret, self.refresh_token, *self.headers.values()]
        return [s for s in values if s]


def _as_list(value: Any, name: str) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise SmartConfigError(f"{name} must be a comma-separated string or a list of strings.", field=name)


def _as_headers(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise SmartConfigError(
                'extra.headers (Extra headers) is not JSON: it must be a JSON object, e.g. {"Epic-Client-ID": "abc"}.',
                field="headers",
            ) from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SmartConfigError("Extra headers must map header names to string values.", field="headers")
    if any(k.lower() == "authorization" for k in value):
        raise SmartConfigError("Extra headers must not set Authorization: the hook manages it.", field="headers")
    for name, header_value in value.items():
        # Named, never echoed: a header value may be a secret.
        if not name or any(c in name for c in "\r\n:") or name != name.strip():
            raise SmartConfigError(f"extra.headers: {name!r} is not a valid header name.", field="headers")
        if any(c in header_value for c in "\r\n\x00"):
            raise SmartConfigError(
                f"extra.headers: the value of {name!r} contains a line break (CR/LF) or NUL; remove it.",
                field="headers",
            )
    return value


def _as_verify(value: Any) -> bool | str:
    if value in (None, ""):
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        if not Path(value).exists():
            raise SmartConfigError(
                f"Verify TLS: the CA bundle {value!r} does not exist on this machine.", field="verify"
            )
        return value
    raise SmartConfigError("Verify TLS must be true, false or a CA bundle path.", field="verify")


def _token_url(value: Any, base: str, insecure: bool) -> str | None:
    if value in (None, ""):
        return None
    url = normalise_base_url(value, field="oauth_url", allow_insecure_http=insecure)
    refusal = insecure_http_refusal(url, base_is_https=base.startswith("https:"), allow_insecure_http=insecure)
    if refusal:
        raise SmartConfigError(f"extra.oauth_url: {refusal}.", field="oauth_url")
    return url


def _vendor(value: Any) -> str:
    from airflow_provider_smart.bulk.vendors import AUTO, profile_named

    name = str(value or AUTO).strip().lower() or AUTO
    profile = profile_named(name)  # an unknown name is refused here, naming the field
    return profile.name if profile is not None else AUTO


def _allowed_hosts(value: Any, base: str, insecure: bool) -> list[str]:
    hosts = _as_list(value, "allowed_hosts")
    for entry in hosts:
        if "@" in entry:
            raise SmartConfigError(
                "extra.allowed_hosts: an entry contains user info (user@host); remove it.", field="allowed_hosts"
            )
        _check_host_entry(entry)
        refusal = (
            insecure_http_refusal(entry, base_is_https=base.startswith("https:"), allow_insecure_http=insecure)
            if "://" in entry
            else None
        )
        if refusal:
            raise SmartConfigError(f"extra.allowed_hosts: {refusal}.", field="allowed_hosts")
    return hosts


def _check_host_entry(entry: str) -> None:
    """``host``, ``host:port``, ``[v6]:port`` or an origin: it must parse, with a port from 1 to 65535."""
    try:
        parts = urlsplit(entry if "://" in entry else f"//{entry}")
        port = parts.port
    except ValueError as exc:
        raise SmartConfigError(
            f"extra.allowed_hosts: {entry!r} is not a host, host:port or origin ({exc}).", field="allowed_hosts"
        ) from None
    if not parts.hostname or (port is not None and not 1 <= port <= 65535) or parts.path.strip("/"):
        raise SmartConfigError(
            f"extra.allowed_hosts: {entry!r} is not a host, host:port or origin (ports are 1 to 65535, no path).",
            field="allowed_hosts",
        )


def normalise_extra(extra: dict[str, Any] | None) -> dict[str, Any]:
    """``extra`` with the older extra names mapped to today's (``token_url`` -> ``oauth_url``, ...).

    When both names are set, the new one wins unless it is empty.
    """
    extra = dict(extra or {})
    for new, old in EXTRA_ALIASES.items():
        if old in extra:
            value = extra.pop(old)
            if extra.get(new) in (None, ""):
                extra[new] = value
    return extra


def read_private_key(extra: dict[str, Any]) -> str | None:
    extra = normalise_extra(extra)
    key = extra.get("private_key")
    path = extra.get("key_file")
    if key and path:
        raise SmartConfigError(
            "Both a pasted private key and a key file are set: keep one of them.", field="private_key"
        )
    if path:
        try:
            return Path(path).expanduser().read_text()
        except OSError as exc:
            raise SmartConfigError(
                f"The key file {path!r} cannot be read on this machine ({exc.strerror}).", field="key_file"
            ) from None
    return key or None


def _effective_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _check_port(base_url: str, port: Any) -> None:
    """The Port field is optional and only has to agree with the FHIR base URL (see README: Test button)."""
    if port in (None, "", 0, "0"):
        return
    try:
        value = int(port)
    except (TypeError, ValueError):
        raise SmartConfigError(f"The port {port!r} is not a number.", field="port") from None
    expected = _effective_port(base_url)
    if value != expected:
        raise SmartConfigError(
            f"The port {value} does not match the FHIR base URL, whose port is {expected}: "
            f"set {expected} or leave the port empty.",
            field="port",
        )


def _refresh_token_settings(settings: ConnectionSettings, password: str | None, extra: dict[str, Any]) -> None:
    """A user-authorised connection: a refresh token plus public, symmetric or asymmetric client auth."""
    settings.refresh_token = extra.get("refresh_token") or None
    if not settings.refresh_token:
        raise SmartConfigError(
            "The refresh token is empty: run 'airflow-smart authorize --conn-id <id>' to obtain one "
            "(ask for offline_access), or paste the one your server issued.",
            field="refresh_token",
        )
    # Empty: refreshes ask for nothing and the server keeps the scope granted at authorisation. The
    # system/*.read the form used to pre-fill is a Backend Services scope, never part of a user's grant.
    scope = (extra.get("scope") or "").strip()
    settings.scope = "" if scope == _OLD_FORM_SCOPE else scope
    settings.private_key = read_private_key(extra)
    if settings.private_key:
        algs_for_key(load_private_key(settings.private_key, field="private_key"))
        if not settings.kid:
            raise SmartConfigError("The Key ID (kid) is empty: a private key needs its kid.", field="kid")
    else:
        settings.client_secret = password or None  # none at all: a public client
    store = (extra.get("rotation_store") or "variable").strip()
    if store not in ("variable", "memory") and not (store.startswith("file:") and len(store) > 5):
        raise SmartConfigError(
            f"The rotation store {store!r} is unknown: use one of {', '.join(TOKEN_STORES)}.", field="rotation_store"
        )
    settings.token_store = store


StoreFactory = Callable[[str], "TokenStore | None"]


def token_store_for(settings: ConnectionSettings, store_factory: StoreFactory | None = None) -> TokenStore:
    """The store named by ``settings.token_store``; ``store_factory`` supplies the ones only Airflow has."""
    spec = settings.token_store
    store = store_factory(spec) if store_factory is not None else None
    if store is not None:
        return store
    if spec.startswith("file:"):
        from airflow_provider_smart.auth.stores import FileTokenStore

        return FileTokenStore(spec[len("file:") :])
    if spec == "memory":
        return PROCESS_TOKEN_STORE
    raise SmartConfigError(
        f"The rotation store {spec!r} needs Airflow (use SmartHook), or choose 'file:<path>' or 'memory'.",
        field="rotation_store",
    )


def refresh_store_key(settings: ConnectionSettings) -> str:
    """Where a refresh-token connection's rotated tokens live in its rotation store."""
    return f"refresh_token:{settings.client_id}@{settings.fhir_base_url}"


def settings_from_connection(
    host: str | None,
    login: str | None,
    password: str | None,
    extra: dict[str, Any] | None,
    *,
    conn_id: str = "",
    port: int | str | None = None,
) -> ConnectionSettings:
    """Validate the fields of a ``smart`` connection; errors name the field to fix.

    ``extra`` may use today's names or the older ones in :data:`EXTRA_ALIASES`. ``conn_id`` only prefixes
    error messages (leave it empty where the id means nothing to a person, e.g. Airflow's Test button).
    """
    where = f"Connection {conn_id!r}: " if conn_id else ""
    try:
        extra = check_extra(normalise_extra(extra))  # every field's type and range (connection_fields.py)
        insecure = bool(extra.get("allow_insecure_http"))
        base = normalise_base_url(host, field="host", allow_insecure_http=insecure)
        _check_port(base, port)
        if not login:
            raise SmartConfigError(
                "login (Client ID) is empty: set it to the client id the server issued.", field="login"
            )
        method = (extra.get("auth_method") or "private_key_jwt").strip()
        if method not in AUTH_METHODS:
            raise SmartConfigError(
                f"The auth method {method!r} is unknown: use one of {', '.join(AUTH_METHODS)}.", field="auth_method"
            )
        settings = ConnectionSettings(
            fhir_base_url=base,
            client_id=login,
            auth_method=method,
            kid=extra.get("kid") or None,
            alg=(extra.get("alg") or None),
            jku=extra.get("jku") or None,
            scope=(extra.get("scope") or DEFAULT_SCOPE).strip(),
            token_url=_token_url(extra.get("oauth_url"), base, insecure),
            allowed_hosts=_allowed_hosts(extra.get("allowed_hosts"), base, insecure),
            headers=_as_headers(extra.get("headers")),
            verify=_as_verify(extra.get("verify")),
            timeout=DEFAULT_TIMEOUT if extra.get("timeout") in (None, "") else extra["timeout"],
            allow_insecure_http=insecure,
            vendor=_vendor(extra.get("vendor")),
        )
        if method == "refresh_token":
            _refresh_token_settings(settings, password, extra)
        elif method == "private_key_jwt":
            settings.private_key = read_private_key(extra)
            if not settings.private_key:
                raise SmartConfigError(
                    "private_key_jwt needs a key: paste the PEM into Private key, or set a Key file path.",
                    field="private_key",
                )
            key = load_private_key(settings.private_key, field="private_key")
            algs_for_key(key)  # a curve no JWT algorithm signs with (secp256k1) fails now, not at first use
            settings.alg = choose_alg(key, settings.alg) if settings.alg else None
            if not settings.kid:
                raise SmartConfigError(
                    "The Key ID (kid) is empty: set it to the kid registered in the client's JWK Set.", field="kid"
                )
        else:
            settings.client_secret = password or None
            if not settings.client_secret:
                raise SmartConfigError(
                    f"{method} needs the client secret in the Client secret (Password) field.", field="password"
                )
    except SmartConfigError as exc:
        raise SmartConfigError(where + exc.message, **exc.context) from None
    return settings


def build_auth(
    settings: ConnectionSettings,
    *,
    scope: str | None = None,
    token_store: TokenStore | None = None,
    on_new_token: Callable[[StoredToken], None] | None = None,
    session: requests.Session | None = None,
    store_factory: StoreFactory | None = None,
    origins: OriginPolicy | None = None,
) -> TokenAuth:
    """The ``requests`` auth for these settings; tokens are cached in ``token_store`` (per process by default).

    ``origins``: the allow-list of origins that may get the token, shared with the Bulk Data client so a
    status URL trusted by one is trusted by both (the connection's base URL and allowed hosts are added).
    """
    common: dict[str, Any] = {
        "client_id": settings.client_id,
        "scope": scope or settings.scope,
        "token_url": settings.token_url,
        "fhir_base_url": settings.fhir_base_url,
        "token_store": token_store or PROCESS_TOKEN_STORE,
        "timeout": settings.timeout,
        "allowed_hosts": settings.allowed_hosts,
        "on_new_token": on_new_token,
        "session": session or new_session(verify=settings.verify, timeout=settings.timeout),
        "origins": origins,
        "allow_insecure_http": settings.allow_insecure_http,
    }
    common["store_key"] = (
        f"{settings.auth_method}:{settings.client_id}@{settings.token_url or settings.fhir_base_url}#{common['scope']}"
    )
    if settings.auth_method == "refresh_token":
        from airflow_provider_smart.auth.smart_client import SmartClient

        common.update(
            scope=scope or settings.scope or None,
            token_store=token_store or token_store_for(settings, store_factory),
            store_key=refresh_store_key(settings),
        )
        seed = StoredToken(access_token="", expires_at=0.0, refresh_token=settings.refresh_token)
        return SmartClient(
            tokens=seed,
            client_secret=settings.client_secret,
            private_key=settings.private_key,
            kid=settings.kid,
            alg=settings.alg,
            **common,
        )
    if settings.auth_method == "private_key_jwt":
        assert settings.private_key is not None
        return BackendServicesAuth(
            private_key=settings.private_key, alg=settings.alg, kid=settings.kid, jku=settings.jku, **common
        )
    assert settings.client_secret is not None
    return ClientSecretAuth(client_secret=settings.client_secret, method=settings.auth_method, **common)


def build_session(
    settings: ConnectionSettings, auth: TokenAuth, *, pool_size: int = DEFAULT_POOL_SIZE
) -> requests.Session:
    """An authenticated session for FHIR requests: auth, static headers, TLS settings, timeouts, retries."""
    return new_session(
        verify=settings.verify,
        timeout=settings.timeout,
        pool_size=pool_size,
        auth=auth,
        headers={"Accept": "application/fhir+json", **settings.headers},
    )


__all__ = [
    "ConnectionSettings",
    "StoredToken",
    "build_auth",
    "build_session",
    "normalise_extra",
    "settings_from_connection",
]
