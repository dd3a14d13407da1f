"""The Bulk Data protocol over ``aiohttp`` on an event loop: the transport of the triggerer's waits.

:mod:`~airflow_provider_smart.bulk.protocol` decides what to send and how to read, classify and retry
the answers; this module only moves bytes, without a thread per request:

* **One pool per connection.** An :class:`AsyncBulkTransport` holds one ``aiohttp.ClientSession``
  (keep-alive connections, up to ``pool_size`` at once); every trigger of a connection shares it (see
  :mod:`airflow_provider_smart.triggers.shared`).
* **The token only where the sync client sends it**: to origins the connection's
  :class:`~airflow_provider_smart.origins.OriginPolicy` allows (never over plain http from an https
  base), decided again at every redirect hop. A 401 renews the token once and replays the request.
* **Redirects followed here** (up to :data:`MAX_REDIRECTS`, as ``requests`` does), a loop reported as such.
* **A deadline per try**: the request deadline, or what the protocol says is left of the caller's
  timeout if sooner, covering the redirects and the body.
* **Tokens without blocking the loop** (:class:`AsyncTokenSource`): a fresh cached token is used as
  is; a mint (signing a JWT, the token request, the token store) runs in a thread, one at a time per
  connection, and every request waiting for it shares its result.

Why ``aiohttp``: it is the async client of Airflow's own HTTP, Databricks and dbt Cloud hooks, and its
connection pool hands out a kept-alive connection in constant time. ``httpx``, which Airflow core
already installs, was measured first: its pool (httpcore 1.0) scans every connection, with a socket
check each, for every request, and spent 8 ms of event loop per poll with 100 triggers (about 80 ms at
1,000: the loop stalls and polls fall behind). See the README's performance table.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp
import yarl

from airflow_provider_smart.bulk.protocol import Failure, Request, Response
from airflow_provider_smart.origins import OriginPolicy, is_http_url

if TYPE_CHECKING:
    from airflow_provider_smart.auth.backend import TokenAuth
    from airflow_provider_smart.auth.tokens import StoredToken

MAX_REDIRECTS = 30  # requests' default
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_POOL_SIZE = 1000  # connections kept per connection's pool: one per waiting export at most
KEEPALIVE_EXPIRY = 60.0  # an idle connection is kept this long (polls come back every few seconds to minutes)
REQUEST_DEADLINE_FACTOR = 2.0  # the same bound as the sync transport's: twice the per-read timeout
# Requests started (and answers taken up) in one turn of the event loop before the next ones wait for the
# following turn. A thousand triggers woken together (the token arrived, a triggerer restarted) would
# otherwise open a thousand connections in one turn, 1-2 ms each here: the loop, shared with every other
# DAG's triggers, would stall for over a second.
STARTS_PER_TURN = 16


class AsyncTokenSource:
    """Bearer tokens for one connection on one event loop.

    A fresh token is returned from memory, on the loop. Otherwise one call of ``auth.get_token()``
    runs in a thread (signing, the token request and the token store all block) and every caller that
    needs a token meanwhile awaits that same call: however many triggers ask at once, one mint.
    ``auth`` keeps its own process-wide lock, so hooks in other threads share that mint too.
    """

    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth
        self._token: StoredToken | None = None
        self._pending: asyncio.Future[StoredToken] | None = None

    async def bearer(self) -> str:
        token = self._token
        if token is not None and self.auth.is_fresh(token):
            return token.access_token
        return (await self._refresh(None)).access_token

    async def renew(self, rejected: str) -> str:
        """A token other than ``rejected`` (the one a 401 refused), minting one only if nobody has yet."""
        token = self._token
        if token is not None and token.access_token != rejected and self.auth.is_fresh(token):
            return token.access_token
        return (await self._refresh(rejected)).access_token

    async def _refresh(self, rejected: str | None) -> StoredToken:
        for _ in range(2):  # a mint already in flight may predate the 401: then one of our own
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._fetch(rejected))
            token = await asyncio.shield(self._pending)
            if rejected is None or token.access_token != rejected:
                return token
        return token

    async def _fetch(self, rejected: str | None) -> StoredToken:
        try:
            token = await asyncio.to_thread(self._get_token, rejected)
            self._token = token
            return token
        finally:
            self._pending = None

    def _get_token(self, rejected: str | None) -> StoredToken:
        if rejected is not None:
            self.auth.invalidate(rejected)
        return self.auth.get_token()


def ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    """The TLS settings ``requests`` would use for ``verify``: a CA path as given; ``True`` lets
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` name the CA bundle (as the sync sessions do), else certifi's."""
    if verify is False:
        return False
    cafile = verify if isinstance(verify, str) else None
    cafile = cafile or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not cafile:
        import certifi

        cafile = certifi.where()
    if os.path.isdir(cafile):
        return ssl.create_default_context(capath=cafile)
    return ssl.create_default_context(cafile=cafile)


def environment_proxy(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy ``requests`` would take from the environment for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``...);
    ``proxies``: ``urllib.request.getproxies_environment()``, read once."""
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme)
    if not proxy or not parts.hostname:
        return None
    bypass = urllib.request.proxy_bypass_environment(parts.hostname, proxies)  # type: ignore[attr-defined]
    return None if bypass else proxy


class AsyncBulkTransport:
    """Send protocol :class:`~airflow_provider_smart.bulk.protocol.Request` s over one pooled ``aiohttp`` session.

    The session is opened on the loop at the first request, and the CA certificates loaded (in a
    thread) at the first https one. Close it with :meth:`aclose`, on the loop.

    :param origins: the connection's origin policy (shared with its sync client and auth).
    :param tokens: where bearer tokens come from (None: never send one).
    :param verify: ``True``, ``False`` or a CA bundle path, as the connection's ``verify``.
    :param headers: static headers of every request (the connection's extra headers).
    :param timeout: connect and per-read timeout.
    :param request_deadline: overall bound on one try; None: ``2 * timeout``; ``math.inf``: none.
    :param pool_size: the most connections open at once.
    """

    def __init__(
        self,
        *,
        origins: OriginPolicy,
        tokens: AsyncTokenSource | None,
        verify: bool | str = True,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        request_deadline: float | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.origins = origins
        self.tokens = tokens
        bound = REQUEST_DEADLINE_FACTOR * timeout if request_deadline is None else request_deadline
        self.request_deadline: float | None = None if math.isinf(bound) else bound
        self.timeout = timeout
        self.pool_size = pool_size
        self.headers = {"Accept": "application/fhir+json", **(headers or {})}
        self._verify = verify
        self._ssl: ssl.SSLContext | bool | None = None  # loaded at the first https request (not for http servers)
        self._ssl_lock = asyncio.Lock()
        self._proxies = urllib.request.getproxies_environment()  # read once: scanning os.environ per poll costs
        self._session: aiohttp.ClientSession | None = None
        self._started_this_turn = 0

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=0, keepalive_timeout=KEEPALIVE_EXPIRY)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
                trust_env=False,  # no ~/.netrc credentials; proxies are taken from the environment below
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def bound(self, deadline: float | None) -> float | None:
        if deadline is None or self.request_deadline is None:
            return self.request_deadline if deadline is None else deadline
        return min(deadline, self.request_deadline)

    async def send(self, request: Request) -> Response | Failure:
        """One try: redirects followed, the token attached where allowed, one replay after a 401."""
        bound = self.bound(request.deadline)
        try:
            async with asyncio.timeout(bound):
                return await self._send(request)
        except aiohttp.ClientError as exc:  # refused, reset, TLS, a read timeout...: the type, never the request
            return Failure("network", type(exc).__name__)
        except TimeoutError:
            return Failure("deadline", f"DeadlineExceeded: no complete answer within {bound:g} s")

    async def _tls(self) -> ssl.SSLContext | bool:
        """The TLS context of https requests. The CA bundle is parsed once, in a thread: it is a single C
        call holding the GIL for some 50 ms here, paid at the first https request of a connection."""
        if self._ssl is None:
            async with self._ssl_lock:
                if self._ssl is None:
                    self._ssl = await asyncio.to_thread(ssl_context, self._verify)
        return self._ssl

    async def _take_turn(self) -> None:
        """Wait for a turn of the event loop in which fewer than ``STARTS_PER_TURN`` requests started."""
        while self._started_this_turn >= STARTS_PER_TURN:
            await asyncio.sleep(0)  # to the back of the ready queue: the next turn
        if self._started_this_turn == 0:
            asyncio.get_running_loop().call_soon(self._new_turn)
        self._started_this_turn += 1

    def _new_turn(self) -> None:
        self._started_this_turn = 0

    async def _send(self, request: Request) -> Response | Failure:
        session = self._open()
        method, url, body = request.method, request.url, request.body
        params: list[tuple[str, str]] | None = request.params or None
        replayed = False
        hops = 0
        while True:
            headers = dict(request.headers)
            sent = await self.tokens.bearer() if self.tokens is not None and self.origins.allows(url) else None
            if sent is not None:
                headers["Authorization"] = f"Bearer {sent}"
            await self._take_turn()  # after the token: a mint wakes every request that waited for it at once
            async with session.request(
                method,
                yarl.URL(url, encoded=True),
                params=params,
                data=body,
                headers=headers,
                allow_redirects=False,
                proxy=environment_proxy(url, self._proxies),
                ssl=await self._tls() if url[:6].lower() == "https:" else True,
            ) as response:
                content = await response.read()
                status, final_url = response.status, str(response.url)
                response_headers = response.headers
            await self._take_turn()  # answers arrive in bursts too: what follows (reading, logging) is shared out
            if status == 401 and sent is not None and not replayed and self.tokens is not None:
                replayed = True
                await self.tokens.renew(sent)
                continue
            location = response_headers.get("Location")
            if status not in REDIRECT_STATUSES or not location:
                return Response(status, response_headers, content, final_url)
            hops += 1
            if hops > MAX_REDIRECTS:
                return Failure("redirects", "TooManyRedirects")
            url = urljoin(final_url, location)
            if not is_http_url(url):
                return Failure("network", "InvalidSchema")
            params = None  # the Location is the whole next URL
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body = "GET", None  # what browsers and requests do

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
