"""SMART discovery: ``<base>/.well-known/smart-configuration``, with a CapabilityStatement fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from airflow_provider_smart.exceptions import DiscoveryError, SmartConfigError
from airflow_provider_smart.sessions import DEFAULT_TIMEOUT, new_session

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def normalise_base_url(url: str | None, *, field: str = "host") -> str:
    """Check a FHIR base URL has a scheme and host; drop the trailing slash (we append paths to it)."""
    url = (url or "").strip()
    if not url:
        raise SmartConfigError(
            f"{field} is empty: set it to the FHIR base URL, e.g. https://fhir.example.org/r4.", field=field
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SmartConfigError(
            f"{field} {url!r} is not an absolute http(s) URL: include the scheme, e.g. https://fhir.example.org/r4.",
            field=field,
        )
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


def _get_json(session: requests.Session, url: str, accept: str, timeout: float) -> tuple[int, Any]:
    try:
        response = session.get(url, headers={"Accept": accept}, timeout=timeout)
    except requests.RequestException as exc:
        raise DiscoveryError(f"Could not reach {url}: {type(exc).__name__}: {exc}", url=url) from None
    if response.status_code != 200:
        return response.status_code, None
    try:
        return 200, response.json()
    except ValueError:
        raise DiscoveryError(
            f"{url} did not return JSON (Content-Type {response.headers.get('Content-Type')!r}).",
            url=url,
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
) -> SmartConfiguration:
    """Fetch and validate the SMART configuration of a FHIR server.

    The well-known path is string-appended to the base (keeping its path, as SMART requires);
    a 404 there falls back to the deprecated CapabilityStatement ``oauth-uris`` extension.
    """
    base = normalise_base_url(fhir_base_url, field="fhir_base_url")
    http = session or new_session(timeout=timeout)
    url = f"{base}/.well-known/smart-configuration"
    status, data = _get_json(http, url, "application/json", timeout)
    if status == 200:
        return SmartConfiguration.from_dict(data, base)
    if status not in (404, 410):
        raise DiscoveryError(
            f"{url} answered HTTP {status}; expected 200 with the SMART configuration.", url=url, status=status
        )
    status, data = _get_json(http, f"{base}/metadata", "application/fhir+json", timeout)
    if status != 200:
        raise DiscoveryError(
            f"{base} has no /.well-known/smart-configuration (404) and /metadata answered HTTP {status}; "
            "check the FHIR base URL, or set token_url in the connection extra.",
            url=url,
            status=status,
        )
    return _from_capability_statement(data, base)
