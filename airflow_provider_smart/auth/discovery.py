"""SMART discovery: ``<base>/.well-known/smart-configuration``, with a CapabilityStatement fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from airflow_provider_smart.auth.transport import Deadline, send
from airflow_provider_smart.exceptions import DiscoveryError, SmartConfigError
from airflow_provider_smart.origins import insecure_http_refusal, is_http_url, redact_url
from airflow_provider_smart.sessions import DEFAULT_TIMEOUT, new_session

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
MAX_DISCOVERY_BYTES = 4 * 1024 * 1024  # a CapabilityStatement can be large; a configuration is a few kB
_CREDENTIAL_ENDPOINTS = (
    "token_endpoint",
    "authorization_endpoint",
    "registration_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
)


def normalise_base_url(url: str | None, *, field: str = "host", allow_insecure_http: bool = False) -> str:
    """Check a FHIR base (or token) URL; drop the trailing slash (we append paths to it).

    Refused, naming ``field`` and never echoing a password: no scheme or host, ``user:password@``
    (credentials belong in the connection's login/password), a query or fragment, and plain http on a
    non-loopback host unless ``allow_insecure_http``.
    """
    if url is not None and not isinstance(url, str):
        raise SmartConfigError(f"{field} must be a URL string, not {type(url).__name__}.", field=field)
    url = (url or "").strip()
    if not url:
        raise SmartConfigError(
            f"{field} is empty: set it to the FHIR base URL, e.g. https://fhir.example.org/r4.", field=field
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise SmartConfigError(
            f"{field} is not a valid URL (check the host and port), e.g. https://fhir.example.org/r4.", field=field
        ) from None
    if "@" in parts.netloc:
        # Before anything echoes the URL: its user info may hold a password.
        raise SmartConfigError(
            f"{field} contains user info (user:password@host): remove it; put the client id in the login "
            "field and the secret in the password field.",
            field=field,
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = "" if "@" in url else f" {redact_url(url)!r}"  # 'user:pw@host' parses as scheme 'user'
        raise SmartConfigError(
            f"{field}{shown} is not an absolute http(s) URL: include the scheme, e.g. https://fhir.example.org/r4.",
            field=field,
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise SmartConfigError(
            f"{field} {redact_url(url)!r} has a query string or fragment: give the base URL only "
            "(paths such as /.well-known/smart-configuration are appended to it).",
            field=field,
        )
    refusal = insecure_http_refusal(url, base_is_https=False, allow_insecure_http=allow_insecure_http)
    if refusal:
        raise SmartConfigError(f"{field}: {refusal}.", field=field)
    return url.rstrip("/")


@dataclass
class SmartConfiguration:
    """The server's SMART configuration. Only ``token_endpoint`` is required for Backend Services."""

    token_endpoint: str
    fhir_base_url: str = ""
    authorization_endpoint: str | None = None
    issuer: str | None = None
    jwks_uri: str | None = None
    registration_endpoint: str | None = None
    introspection_endpoint: str | None = None
    revocation_endpoint: str | None = None
    management_endpoint: str | None = None
    capabilities: list[str] = field(default_factory=list)
    grant_types_supported: list[str] = field(default_factory=list)
    scopes_supported: list[str] = field(default_factory=list)
    response_types_supported: list[str] = field(default_factory=list)
    code_challenge_methods_supported: list[str] = field(default_factory=list)
    token_endpoint_auth_methods_supported: list[str] = field(default_factory=list)
    token_endpoint_auth_signing_alg_values_supported: list[str] = field(default_factory=list)
    source: str = "well-known"  # or "capability-statement" / "explicit"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    _URL_FIELDS = (
        "token_endpoint",
        "authorization_endpoint",
        "jwks_uri",
        "registration_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "management_endpoint",
    )
    _LIST_FIELDS = (
        "capabilities",
        "grant_types_supported",
        "scopes_supported",
        "response_types_supported",
        "code_challenge_methods_supported",
        "token_endpoint_auth_methods_supported",
        "token_endpoint_auth_signing_alg_values_supported",
    )

    @classmethod
    def from_dict(cls, data: Any, fhir_base_url: str, *, source: str = "well-known") -> SmartConfiguration:
        where = f"{fhir_base_url}/.well-known/smart-configuration"
        if not isinstance(data, dict):
            raise DiscoveryError(f"{where} is not a JSON object.", url=where)
        values: dict[str, Any] = {}
        for name in cls._URL_FIELDS:
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise DiscoveryError(f"{where}: {name} must be a URL string, got {value!r}.", url=where)
            # Relative endpoints SHOULD be evaluated against the FHIR base URL (SMART conformance).
            values[name] = urljoin(fhir_base_url + "/", value.strip())
            parts = urlsplit(values[name])
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # e.g. file:///etc/passwd: a bad document, not a server we "could not reach"
                raise DiscoveryError(
                    f"{where} is not a valid SMART configuration: its {name} {redact_url(values[name])!r} is not "
                    "an http(s) URL. Ask the server's operators, or set the token endpoint URL (oauth_url) in "
                    "the connection to skip discovery.",
                    url=where,
                    field=name,
                )
        if "token_endpoint" not in values:
            raise DiscoveryError(
                f"{where} has no token_endpoint; set token_url in the connection extra to skip discovery.",
                url=where,
            )
        for name in cls._LIST_FIELDS:
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DiscoveryError(f"{where}: {name} must be a list of strings.", url=where)
            values[name] = list(value)
        if isinstance(data.get("issuer"), str):
            values["issuer"] = data["issuer"]
        return cls(fhir_base_url=fhir_base_url, source=source, raw=dict(data), **values)

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities


MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


def _get_json(
    session: requests.Session,
    url: str,
    accept: str,
    timeout: float,
    deadline: Deadline,
    allow_insecure_http: bool,
) -> tuple[int, Any]:
    """GET ``url`` as JSON, following up to five redirects that keep to https (discovery sends no secret)."""
    seen = [url]
    current = url
    while True:
        response = send(
            session,
            "GET",
            current,
            headers={"Accept": accept},
            timeout=timeout,
            deadline=deadline,
            what="the SMART discovery URL",
            max_bytes=MAX_DISCOVERY_BYTES,
        )
        if response.status_code not in _REDIRECTS:
            break
        location = response.headers.get("Location")
        if not location:
            raise DiscoveryError(
                f"{redact_url(current)} answered HTTP {response.status_code} without a Location header.",
                url=redact_url(url),
                status=response.status_code,
            )
        target = urljoin(current, location)
        refusal = insecure_http_refusal(
            target, base_is_https=urlsplit(current).scheme == "https", allow_insecure_http=allow_insecure_http
        )
        if refusal or not is_http_url(target):
            raise DiscoveryError(
                f"{redact_url(current)} redirects to {redact_url(target)}, which discovery will not follow: "
                f"{refusal or 'not an http(s) URL'}.",
                url=redact_url(url),
                status=response.status_code,
            )
        if target in seen:
            raise DiscoveryError(
                f"Redirect loop fetching {redact_url(url)}: "
                + " -> ".join(redact_url(u) for u in [*seen[seen.index(target) :], target])
                + "; fix the server or the FHIR base URL.",
                url=redact_url(url),
                status=response.status_code,
            )
        if len(seen) > MAX_REDIRECTS:
            raise DiscoveryError(
                f"{redact_url(url)} redirected more than {MAX_REDIRECTS} times; fix the server or the FHIR base URL.",
                url=redact_url(url),
                status=response.status_code,
            )
        seen.append(target)
        current = target
    if response.status_code != 200:
        return response.status_code, None
    try:
        return 200, response.json()
    except ValueError:
        raise DiscoveryError(
            f"{redact_url(current)} did not return JSON (Content-Type {response.headers.get('Content-Type')!r}).",
            url=redact_url(url),
            status=200,
        ) from None


def _from_capability_statement(data: Any, fhir_base_url: str) -> SmartConfiguration:
    url = f"{fhir_base_url}/metadata"
    uris: dict[str, str] = {}
    try:
        for rest in data.get("rest") or []:
            for ext in (rest.get("security") or {}).get("extension") or []:
                if ext.get("url") == OAUTH_URIS_EXTENSION:
                    for sub in ext.get("extension") or []:
                        if isinstance(sub.get("valueUri"), str):
                            uris[sub.get("url")] = sub["valueUri"]
    except AttributeError:
        raise DiscoveryError(f"{url} is not a FHIR CapabilityStatement.", url=url) from None
    if "token" not in uris:
        raise DiscoveryError(
            f"{fhir_base_url} has no /.well-known/smart-configuration and its CapabilityStatement names no "
            "OAuth token endpoint; set token_url in the connection extra.",
            url=url,
        )
    mapped = {"token_endpoint": uris["token"]}
    for key, name in (("authorize", "authorization_endpoint"), ("register", "registration_endpoint")):
        if key in uris:
            mapped[name] = uris[key]
    return SmartConfiguration.from_dict(mapped, fhir_base_url, source="capability-statement")


def discover_smart_configuration(
    fhir_base_url: str,
    *,
    session: requests.Session | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    allow_insecure_http: bool = False,
) -> SmartConfiguration:
    """Fetch and validate the SMART configuration of a FHIR server.

    The well-known path is string-appended to the base (keeping its path, as SMART requires);
    a 404 there falls back to the deprecated CapabilityStatement ``oauth-uris`` extension.
    Redirects are followed (at most five, never from https to http); ``timeout`` bounds the whole
    discovery. Endpoints that would receive credentials (token, authorization...) must be https when
    the base is, and never plain http on a non-loopback host unless ``allow_insecure_http``.
    """
    base = normalise_base_url(fhir_base_url, field="fhir_base_url", allow_insecure_http=allow_insecure_http)
    http = session or new_session(timeout=timeout)
    deadline = Deadline(timeout)
    url = f"{base}/.well-known/smart-configuration"
    status, data = _get_json(http, url, "application/json", timeout, deadline, allow_insecure_http)
    if status == 200:
        config = SmartConfiguration.from_dict(data, base)
    elif status not in (404, 410):
        raise DiscoveryError(
            f"{url} answered HTTP {status}; expected 200 with the SMART configuration.", url=url, status=status
        )
    else:
        status, data = _get_json(
            http, f"{base}/metadata", "application/fhir+json", timeout, deadline, allow_insecure_http
        )
        if status != 200:
            raise DiscoveryError(
                f"{base} has no /.well-known/smart-configuration (404) and /metadata answered HTTP {status}; "
                "check the FHIR base URL, or set token_url in the connection extra.",
                url=url,
                status=status,
            )
        config = _from_capability_statement(data, base)
    check_endpoints(config, allow_insecure_http=allow_insecure_http)
    return config


def check_endpoints(config: SmartConfiguration, *, allow_insecure_http: bool = False) -> None:
    """Refuse discovered endpoints that would carry credentials over plain http (see :mod:`origins`)."""
    base_is_https = urlsplit(config.fhir_base_url).scheme == "https"
    for name in _CREDENTIAL_ENDPOINTS:
        value = getattr(config, name)
        refusal = value and insecure_http_refusal(
            value, base_is_https=base_is_https, allow_insecure_http=allow_insecure_http
        )
        if refusal:
            raise DiscoveryError(
                f"The SMART configuration of {config.fhir_base_url} advertises {name} {refusal}. "
                f"Nothing was sent there.",
                url=redact_url(value),
                field=name,
            )
