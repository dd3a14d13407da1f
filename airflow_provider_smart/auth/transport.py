"""The one way the auth library talks HTTP: bounded in time and size, never redirected, TLS as configured.

Every auth call (token requests of every grant, discovery) goes through :func:`send`:

* **An overall deadline**, not only a per-read timeout. A server that drips one byte just under the read
  timeout would otherwise keep a request alive forever. A watchdog timer shuts the request's sockets
  down when the deadline passes, whether the request is connecting, waiting for headers or reading the
  body; the caller gets :class:`~airflow_provider_smart.exceptions.SmartTransportError`.
* **No redirects followed.** The caller sees the 3xx and decides (the token endpoint refuses them: a
  redirected POST would hand the client secret or a fresh signed assertion to the ``Location``).
* **Bounded bodies**: token and discovery answers are small; more than ``max_bytes`` is an error.
* **The session's ``verify`` wins** over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``. ``requests`` lets
  the environment replace a session's ``verify`` (a CA path, or ``False``) on every request; here a
  CA path or ``False`` on the session is used as given. ``verify=True`` still lets the environment's CA
  bundle apply (corporate CAs are configured that way); verification stays on.
* **Only what the caller gave is sent**: no session auth, no ``~/.netrc`` credentials, no cookies.

The session supplies settings only (``verify``, ``cert``, ``proxies``, ``trust_env``, ``headers``);
requests go through :class:`~airflow_provider_smart.sessions.DeadlineAdapter`, whose connections
register their sockets with the watchdog (:func:`~airflow_provider_smart.sessions.overall_deadline`) of
the request running in the current thread: the same mechanism as the Bulk Data client's.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping

import requests
from requests.structures import CaseInsensitiveDict

from airflow_provider_smart.exceptions import SmartTransportError
from airflow_provider_smart.origins import redact_url
from airflow_provider_smart.sessions import DeadlineAdapter, overall_deadline

MAX_AUTH_RESPONSE_BYTES = 1024 * 1024  # token and discovery answers are a few kB
_CHUNK = 16 * 1024


class Deadline:
    """A point in monotonic time that every step of one logical request must finish by."""

    def __init__(self, seconds: float) -> None:
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"a deadline needs a positive finite number of seconds, not {seconds!r}")
        self.seconds = float(seconds)
        self.expires = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0


_ADAPTER = DeadlineAdapter(pool_connections=8, pool_maxsize=8, max_retries=0)


def effective_verify(session: requests.Session) -> bool | str:
    """The ``verify`` to use for ``session``: its own, unless it is ``True`` and the environment names a CA."""
    verify = session.verify
    if verify is True or verify is None:
        if session.trust_env:
            return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        return True
    return verify


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    deadline: Deadline,
    timeout: float,
    what: str,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
    auth: requests.auth.AuthBase | None = None,
    max_bytes: int = MAX_AUTH_RESPONSE_BYTES,
) -> requests.Response:
    """One request, its body read in full, within ``deadline``; redirects are returned, not followed.

    :param timeout: the per-read (and connect) timeout; each is also capped by the time left.
    :param what: names the endpoint in errors ("the token endpoint", "SMART discovery").
    :raises SmartTransportError: unreachable, broken connection, deadline passed, or body too large.
        Messages carry the URL without query or user info, and never the request.
    """
    shown = redact_url(url)
    remaining = deadline.remaining()
    if remaining <= 0:
        raise _deadline_error(what, shown, deadline)
    merged_headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(
        {k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in session.headers.items()}
    )
    merged_headers.pop("Authorization", None)
    merged_headers.update(headers or {})
    prepared = requests.Request(method, url, headers=dict(merged_headers), data=data, auth=auth).prepare()
    proxies: dict[str, str] = {}
    if session.trust_env:
        proxies.update(requests.utils.get_environ_proxies(url, no_proxy=session.proxies.get("no_proxy")))
    proxies.update(session.proxies or {})
    per_read = min(timeout, remaining)
    response: requests.Response | None = None
    with overall_deadline(max(remaining, 0.0)) as watch:
        assert watch is not None
        try:
            response = _ADAPTER.send(
                prepared,
                stream=True,
                timeout=(per_read, per_read),
                verify=effective_verify(session),
                cert=session.cert,
                proxies=proxies,
            )
            body = bytearray()
            for chunk in response.iter_content(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise SmartTransportError(
                        f"{_capital(what)} {shown} sent more than {max_bytes} bytes; refusing to read further.",
                        url=shown,
                        reason="response_too_large",
                    )
                if deadline.expired():
                    watch.fire()
                    break
            if watch.fired:
                raise _deadline_error(what, shown, deadline)
            response._content = bytes(body)  # what requests does itself once a body is read
            response._content_consumed = True  # type: ignore[attr-defined]
            return response
        except requests.RequestException as exc:
            if watch.fired or deadline.expired():
                raise _deadline_error(what, shown, deadline) from None
            # The exception text may echo the request; name only its type.
            raise SmartTransportError(
                f"Could not reach {what} {shown}: {type(exc).__name__}.",
                url=shown,
                reason=type(exc).__name__,
            ) from None
        finally:
            if response is not None:
                response.close()


def _deadline_error(what: str, shown: str, deadline: Deadline) -> SmartTransportError:
    return SmartTransportError(
        f"{_capital(what)} {shown} did not answer within {deadline.seconds:g} s (the overall timeout); "
        "the server is too slow or stalled. Try again later, or raise the connection's timeout.",
        url=shown,
        reason="deadline_exceeded",
        timeout=deadline.seconds,
    )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
