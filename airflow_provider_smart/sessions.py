"""The one place ``requests`` sessions are built and their connection pools sized.

Every session of the package comes from :func:`new_session` (the hook's authenticated FHIR session,
the auth's token-endpoint session) or :func:`token_free_copy` (the bulk client's session for URLs
that must not get the token), so TLS, timeouts, retries and pool sizes cannot disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds per connect and per read; requests has no default, and a hung socket hangs a task
DEFAULT_POOL_SIZE = 10  # requests' own default: connections kept per host
PREFIXES = ("https://", "http://")


class TimeoutSession(requests.Session):
    """A session with a default per-request timeout."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)


class NoAuth(AuthBase):
    """Strips any Authorization header; being an auth, it also stops ``requests`` from falling back to
    ``~/.netrc`` credentials for the host."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        return request


def _connect_retries() -> Retry:
    # Connection errors happen before a request is sent, so retrying them never duplicates a kick-off.
    return Retry(total=None, connect=3, read=0, status=0, other=0, redirect=10, backoff_factor=0.5)


def _mount(session: requests.Session, pool_size: int, retries: Any) -> None:
    adapter = HTTPAdapter(
        pool_connections=max(pool_size, DEFAULT_POOL_SIZE), pool_maxsize=pool_size, max_retries=retries
    )
    for prefix in PREFIXES:
        session.mount(prefix, adapter)


def new_session(
    *,
    verify: bool | str = True,
    timeout: float = DEFAULT_TIMEOUT,
    pool_size: int = DEFAULT_POOL_SIZE,
    auth: AuthBase | None = None,
    headers: Mapping[str, str] | None = None,
) -> TimeoutSession:
    """A session with a default timeout, connect retries, a pool of ``pool_size``, and ``auth``/``headers``."""
    session = TimeoutSession(timeout)
    session.verify = verify
    _mount(session, pool_size, _connect_retries())
    if auth is not None:
        session.auth = auth
    if headers:
        session.headers.update(headers)
    return session


def pool_size(session: requests.Session) -> int:
    adapter = session.adapters.get("https://")
    return int(getattr(adapter, "_pool_maxsize", 0) or 0)


def ensure_pool_size(session: requests.Session, size: int) -> None:
    """Make the http(s) pools hold at least ``size`` connections, keeping the retry policy.

    requests' default pool keeps 10 connections per host; parallel downloads beyond that would open
    and throw away connections (urllib3's "Connection pool is full" warning).
    """
    if pool_size(session) >= size:
        return
    current = session.adapters.get("https://")
    if current is not None and type(current) is not HTTPAdapter:
        log.debug("Leaving the custom %s adapter alone.", type(current).__name__)
        return
    _mount(session, size, getattr(current, "max_retries", 0))


def token_free_copy(session: requests.Session) -> requests.Session:
    """A twin of ``session`` that never sends a token: same TLS, proxies, timeout, retries and headers
    (minus Authorization), with :class:`NoAuth` instead of the session's auth."""
    plain = TimeoutSession(getattr(session, "default_timeout", DEFAULT_TIMEOUT))
    plain.verify = session.verify
    plain.cert = session.cert
    plain.proxies = dict(session.proxies)
    plain.trust_env = session.trust_env
    plain.headers.clear()
    plain.headers.update({k: v for k, v in session.headers.items() if k.lower() != "authorization"})
    plain.auth = NoAuth()
    retries = getattr(session.adapters.get("https://"), "max_retries", 0)
    _mount(plain, max(pool_size(session), DEFAULT_POOL_SIZE), retries)
    return plain
