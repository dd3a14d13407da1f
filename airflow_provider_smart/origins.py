"""Origins, and the allow-list of origins that may receive our bearer token.

Shared by the auth (which attaches the token) and the Bulk Data client (which picks a session per file
URL); kept free of heavy imports so both stay cheap to import.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in DEFAULT_PORTS and bool(parts.hostname)


def origin_of(url: str) -> str:
    """``scheme://host:port`` with the default port made explicit, so equal origins compare equal."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


class OriginPolicy:
    """Origins allowed to receive the token: full URLs/origins, ``host:port`` or a bare ``host``.

    A bare host or ``host:port`` matches any scheme (it is what users type into ``allowed_hosts``).
    Thread-safe: downloads consult it from worker threads while a poll may add a status URL.
    """

    def __init__(self, urls: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        self._origins: set[str] = set()
        self._hostports: set[str] = set()
        self._hosts: set[str] = set()
        self._lock = threading.Lock()
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

    def allows(self, url: str) -> bool:
        if not is_http_url(url):
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
