"""The one place ``requests`` sessions are built and their connection pools sized.

Every session of the package comes from :func:`new_session` (the hook's authenticated FHIR session,
the auth's token-endpoint session) or :func:`token_free_copy` (the bulk client's session for URLs
that must not get the token), so TLS, timeouts, retries and pool sizes cannot disagree.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from airflow_provider_smart import log_redaction

if TYPE_CHECKING:
    from requests.sessions import _Settings

log = logging.getLogger(__name__)
log_redaction.install()  # every session is built here: urllib3's request lines never carry a signature

DEFAULT_TIMEOUT = 60.0  # seconds per connect and per read; requests has no default, and a hung socket hangs a task
DEFAULT_POOL_SIZE = 10  # requests' own default: connections kept per host
PREFIXES = ("https://", "http://")


class TimeoutSession(requests.Session):
    """A session with a default per-request timeout, whose own ``verify`` beats the environment's.

    ``requests`` lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a session's ``verify`` (a CA
    path, or False) when ``trust_env`` is on; here a ``verify`` the connection chose wins, and the
    environment still supplies proxies (and the CA bundle when the connection left ``verify=True``).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> _Settings:
        if verify is None and self.verify is not True:
            verify = self.verify  # requests would only look at the environment for None/True
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


# -- overall deadlines ----------------------------------------------------------------------------
# A per-read timeout restarts with every byte, so a server dripping one byte under it keeps a request
# alive forever. An overall deadline needs someone to cut the socket: the connections below record
# their sockets (in the requesting thread, when they connect or are reused), and a watchdog shuts
# them down when the deadline passes, which ends any blocked read at once. (The socket, not the
# connection: http.client lets go of a connection's socket while a close-delimited body is read.)
_current = threading.local()


class DeadlineExceeded(requests.exceptions.Timeout):
    """No complete answer within the overall deadline (the server was too slow, or dripped bytes)."""


class _Watch:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._socks: list[Any] = []
        self._done = threading.Event()
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.fired:
            raise DeadlineExceeded(f"no complete answer within {self.seconds:g} s")

    def track(self, sock: Any) -> None:
        with self._lock:
            self._socks.append(sock)
            fired = self.fired
        if fired:
            cut_socket(sock)

    def run(self) -> None:
        if not self._done.wait(self.seconds):
            self.fire()

    def fire(self) -> None:
        """Cut every socket of the request now (the deadline passed, or the caller saw it pass)."""
        with self._lock:
            self.fired = True
            socks = list(self._socks)
        for sock in socks:
            cut_socket(sock)

    def stop(self) -> None:
        self._done.set()


def cut_socket(sock: Any) -> None:
    """Shut ``sock`` down so that a read blocked on it returns at once (its owner still closes it)."""
    try:
        if isinstance(sock, socket.socket):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: leave SSL state alone
        else:
            sock.close()
    except OSError:
        pass


def _track(sock: Any) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None and sock is not None:
        watch.track(sock)


class _WatchedMixin:
    def _new_conn(self) -> Any:
        sock = super()._new_conn()  # type: ignore[misc]
        _track(sock)  # before any TLS handshake: a dripping handshake is cut too
        return sock


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


@contextmanager
def overall_deadline(seconds: float | None) -> Iterator[_Watch | None]:
    """Within this block (this thread), requests on sessions built here end after ``seconds`` in total.

    Enforced for sessions whose adapters come from this module (:func:`new_session`,
    :func:`token_free_copy`, :func:`ensure_deadline_adapter`); a custom adapter gets per-read timeouts only.
    Use :func:`request_within` rather than this directly: it turns a cut connection into
    :class:`DeadlineExceeded`.
    """
    if seconds is None:
        yield None
        return
    watch = _Watch(max(0.0, seconds))
    previous = getattr(_current, "watch", None)
    _current.watch = watch
    thread = threading.Thread(target=watch.run, name="smart-deadline", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop()
        _current.watch = previous


def request_within(
    session: requests.Session, seconds: float | None, method: str, url: str, **kwargs: Any
) -> requests.Response:
    """``session.request(...)`` that ends within ``seconds`` in total, raising :class:`DeadlineExceeded`.

    With ``stream=True`` the bound covers the status line and headers; reading the body is the caller's.
    """
    with overall_deadline(seconds) as watch:
        try:
            response = session.request(method, url, **kwargs)
        except Exception:
            if watch is not None and watch.fired:
                raise DeadlineExceeded(f"{method} gave no complete answer within {seconds:g} s") from None
            raise
        if watch is not None and watch.fired:
            response.close()  # the body may be cut short (a close-delimited body looks complete)
            raise DeadlineExceeded(f"{method} gave no complete answer within {seconds:g} s")
    return response


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        return _get_watched_conn(self, super()._get_conn, timeout)


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        return _get_watched_conn(self, super()._get_conn, timeout)


def _get_watched_conn(pool: HTTPConnectionPool, get: Any, timeout: float | None) -> Any:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.check()  # e.g. a redirect hop after the deadline
    conn = get(timeout)
    _track(getattr(conn, "sock", None))  # a reused connection is connected already
    return conn


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose pools (direct and via an HTTP proxy) honour :func:`overall_deadline`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


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
    adapter = DeadlineAdapter(
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
    current = session.adapters.get("https://")
    if pool_size(session) >= size and type(current) is DeadlineAdapter:
        return
    if current is not None and type(current) not in (HTTPAdapter, DeadlineAdapter):
        log.debug("Leaving the custom %s adapter alone.", type(current).__name__)
        return
    _mount(session, max(size, pool_size(session)), getattr(current, "max_retries", 0))


def ensure_deadline_adapter(session: requests.Session) -> None:
    """Give a session with ``requests``' stock adapters ours (same pool size and retries), so
    :func:`overall_deadline` applies to it; custom adapters are left alone."""
    ensure_pool_size(session, max(pool_size(session), DEFAULT_POOL_SIZE))


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
