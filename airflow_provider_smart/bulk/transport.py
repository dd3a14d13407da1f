"""What the Bulk Data client and its downloader share: two sessions, one origin policy, one retry policy.

The authenticated session carries the token (its auth attaches it only to origins the policy allows);
the token-free twin serves files whose manifest says ``requiresAccessToken: false`` and any URL on an
origin we do not trust. Both the auth and this transport consult the same :class:`OriginPolicy`
object, so trusting a status URL's origin once trusts it everywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

from airflow_provider_smart.bulk.retry import RetryPolicy
from airflow_provider_smart.exceptions import BulkExportError
from airflow_provider_smart.origins import OriginPolicy, redact_url
from airflow_provider_smart.sessions import (
    DEFAULT_TIMEOUT,
    ensure_deadline_adapter,
    ensure_pool_size,
    request_within,
    token_free_copy,
)

# A status answer, manifest page or kick-off is small: twice the per-read timeout is plenty for all of it.
REQUEST_DEADLINE_FACTOR = 2.0


def shared_origins(session: requests.Session) -> OriginPolicy | None:
    """The origin policy of the session's token auth, if it keeps one (``TokenAuth.origins``)."""
    origins = getattr(getattr(session, "auth", None), "origins", None)
    return origins if isinstance(origins, OriginPolicy) else None


class BulkTransport:
    """Sessions, origins, timeout and retry policy of one Bulk Data client.

    :param session: the authenticated session.
    :param origins: origins that may receive the token; by default the session's auth's own policy
        (so both stay one), else a new one. ``trusted_urls`` and ``allowed_hosts`` are added to it.
    :param timeout: connect and per-read timeout of every request.
    :param request_deadline: overall bound, in seconds, on one kick-off, status, manifest-page or
        DELETE request and on a download's status line and headers (a server dripping bytes under
        the per-read timeout is cut off there); None: ``2 * timeout``; ``math.inf``: no bound.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        origins: OriginPolicy | None = None,
        trusted_urls: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        request_deadline: float | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        ensure_deadline_adapter(session)
        self.session = session
        self.plain_session = token_free_copy(session)
        # A policy of its own knows the FHIR base first: an https base forbids plain http everywhere.
        self.origins = origins or shared_origins(session) or OriginPolicy(list(trusted_urls))
        for entry in [*trusted_urls, *allowed_hosts]:
            self.origins.add(entry)
        self.timeout = timeout
        bound = REQUEST_DEADLINE_FACTOR * timeout if request_deadline is None else request_deadline
        self.request_deadline: float | None = None if math.isinf(bound) else bound
        self.retry = retry or RetryPolicy()
        self.clock = clock or time.monotonic

    def trust(self, url: str) -> None:
        """Let ``url``'s origin receive the token (done for every status URL we are given or get)."""
        self.origins.add(url)

    def trusts(self, url: str) -> bool:
        return self.origins.allows(url)

    def refuse_downgrade(self, url: str, what: str) -> None:
        """Raise when ``url`` would need the token over plain http (an https server sent an http URL)."""
        refusal = self.origins.refusal(url)
        if refusal:
            raise BulkExportError(f"The {what} {refusal}.", url=redact_url(url))

    def session_for(self, url: str, *, with_token: bool = True) -> requests.Session:
        return self.session if with_token and self.trusts(url) else self.plain_session

    def ensure_pool_size(self, size: int) -> None:
        ensure_pool_size(self.session, size)
        ensure_pool_size(self.plain_session, size)

    def sleep(self, seconds: float) -> None:
        self.retry.sleep(seconds)

    def request(
        self,
        method: str,
        url: str,
        *,
        session: requests.Session | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One request on the right session for ``url`` (or ``session``), with this transport's
        timeout, ending within ``request_deadline`` or ``deadline`` if sooner (else
        :class:`~airflow_provider_smart.sessions.DeadlineExceeded`, a ``requests.Timeout``)."""
        kwargs.setdefault("timeout", self.timeout)
        return request_within(session or self.session_for(url), self.bound(deadline), method, url, **kwargs)

    def bound(self, deadline: float | None) -> float | None:
        """The overall bound of one request: ``request_deadline``, or the caller's ``deadline`` if sooner."""
        if deadline is None or self.request_deadline is None:
            return self.request_deadline if deadline is None else deadline
        return min(deadline, self.request_deadline)
