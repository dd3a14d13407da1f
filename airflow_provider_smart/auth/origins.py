"""Which origins may receive our bearer token: the FHIR server's own, plus hosts the user allows."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

from airflow_provider_smart.auth.discovery import origin_of


class OriginPolicy:
    """An allow-list of origins. Entries may be full URLs/origins, ``host:port`` or a bare ``host``.

    A bare host or ``host:port`` matches any scheme, so list ``https://host`` when http must not match.
    """

    def __init__(self, urls: Iterable[str] = (), allowed_hosts: Iterable[str] = ()) -> None:
        self._origins: set[str] = set()
        self._hostports: set[str] = set()
        self._hosts: set[str] = set()
        self._lock = threading.Lock()
        for url in urls:
            self.add(url)
        for host in allowed_hosts:
            self.add(host)

    def add(self, entry: str) -> None:
        entry = entry.strip()
        if not entry:
            return
        with self._lock:
            if "://" in entry:
                self._origins.add(origin_of(entry))
            elif ":" in entry:
                self._hostports.add(entry.lower())
            else:
                self._hosts.add(entry.lower())

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if origin_of(url) in self._origins:
            return True
        host = parts.hostname.lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{host}:{port}" in self._hostports or host in self._hosts

    def __repr__(self) -> str:
        return f"OriginPolicy({sorted(self._origins | self._hostports | self._hosts)})"
