"""Origins, the allow-list of origins that may receive our bearer token, and the plain-http rule.

Shared by the auth (which attaches the token) and the Bulk Data client (which picks a session per file
URL); kept free of heavy imports so both stay cheap to import.

**Plain http** (SMART requires TLS for anything carrying a credential):

* with an ``https`` FHIR base URL, no ``http://`` URL receives a token, a client secret or an assertion
  (no downgrade), not even on loopback;
* an ``http`` FHIR base URL is accepted only on loopback (``127.0.0.0/8``, ``::1``, ``localhost``),
  for tests and local TLS-terminating sidecars;
* ``allow_insecure_http=True`` lifts both rules. Its name says what it is: for test servers only.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
INSECURE_FLAG = "allow_insecure_http"


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in DEFAULT_PORTS and bool(parts.hostname)


def origin_of(url: str) -> str:
    """``scheme://host:port`` with the default port made explicit, so equal origins compare equal."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment (``?...`` marks a dropped query): safe for messages."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?..." if parts.query else "")


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` (names are not resolved: only these literals count)."""
    host = (host or "").strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_http_refusal(url: str, *, base_is_https: bool, allow_insecure_http: bool = False) -> str | None:
    """Why ``url`` may not carry a credential over plain http, or None when it may.

    :param base_is_https: the connection's FHIR base URL is https (then no http at all: no downgrade).
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or allow_insecure_http:
        return None
    if base_is_https:
        return (
            f"{redact_url(url)} is plain http while the FHIR base URL is https; refusing to downgrade "
            f"(use its https URL; {INSECURE_FLAG}=True lifts this, for test servers only)"
        )
    if is_loopback_host(parts.hostname):
        return None
    return (
        f"{redact_url(url)} is plain http on a non-loopback host; credentials would cross the network "
        f"unencrypted (use https; {INSECURE_FLAG}=True lifts this, for test servers only)"
    )


class OriginPolicy:
    """Origins allowed to receive the token: full URLs/origins, ``host:port`` or a bare ``host``.

    The first URL given is the FHIR base. When it is https, no ``http://`` URL is allowed (a bare host
    or ``host:port`` matches https only); when it is http (loopback, or ``allow_insecure_http``), a bare
    host matches either scheme. ``allow_insecure_http=True`` lets http through as before.
    Thread-safe: downloads consult it from worker threads while a poll may add a status URL.
    """

    def __init__(
        self,
        urls: Iterable[str] = (),
        hosts: Iterable[str] = (),
        *,
        allow_insecure_http: bool = False,
        base_is_https: bool | None = None,
    ) -> None:
        self._origins: set[str] = set()
        self._hostports: set[str] = set()
        self._hosts: set[str] = set()
        self._lock = threading.Lock()
        urls = [u for u in urls if (u or "").strip()]
        if base_is_https is None:
            base_is_https = bool(urls) and urlsplit(urls[0].strip()).scheme.lower() == "https"
        self.base_is_https = base_is_https
        self.allow_insecure_http = allow_insecure_http
        for entry in [*urls, *hosts]:
            self.add(entry)

    def add(self, entry: str) -> None:
        entry = (entry or "").strip()
        if not entry:
            return
        with self._lock:
            if "://" in entry:
                self._origins.add(origin_of(entry))
            elif ":" in entry:
                self._hostports.add(entry.lower().rstrip("/"))
            else:
                self._hosts.add(entry.lower().rstrip("/"))

    def refusal(self, url: str) -> str | None:
        """Why ``url`` is refused plain http by this policy's rule (None when the scheme is fine)."""
        return insecure_http_refusal(
            url, base_is_https=self.base_is_https, allow_insecure_http=self.allow_insecure_http
        )

    def allows(self, url: str) -> bool:
        if not is_http_url(url) or self.refusal(url) is not None:
            return False
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
        with self._lock:
            if origin_of(url) in self._origins:
                return True
            return f"{host}:{port}" in self._hostports or host in self._hosts

    def __repr__(self) -> str:
        return f"OriginPolicy({sorted(self._origins | self._hostports | self._hosts)})"
