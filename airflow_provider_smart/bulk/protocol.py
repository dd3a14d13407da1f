"""The Bulk Data protocol without I/O: what each request is, how its answer is read, classified and retried.

One protocol, two transports. The kick-off, status, manifest-page and cancel logic is written here
once, as generators ("exchanges") that *yield* what they need and get the answer back:

* yield a :class:`Request`  -> the driver sends it and sends back a :class:`Response` (status, headers,
  body read in full, final URL) or a :class:`Failure` (the request never got an answer);
* yield a :class:`~airflow_provider_smart.bulk.retry.Sleep` -> the driver sleeps (or awaits) and sends None;
* return -> the exchange's result (a status URL, a :class:`StatusResult`, a manifest...); raising is
  raising (our typed errors, the same whoever drives).

:func:`drive` runs an exchange over a blocking ``send`` (``requests``: :class:`BulkExportClient`),
:func:`adrive` over an ``async`` one (``aiohttp`` on the triggerer's event loop:
:mod:`airflow_provider_smart.bulk.aio`). Transports only move bytes: tokens (and the one replay after a
401), redirects, TLS, pools, the per-try deadline the :class:`Request` carries.

**The seam for per-server behaviour** (vendor profiles): every exchange takes a :class:`Server`,
whose ``profile`` is a :class:`ServerProfile`. Its defaults are the spec's behaviour and this
package's. A vendor profile is a ``ServerProfile`` (an instance with other field values, or a subclass
overriding its methods) handed to :class:`~airflow_provider_smart.bulk.client.BulkExportClient`
(``profile=``) and to the trigger's transport (``Server(origins, profile)``), so both pick it up at once.
What it decides:

* request building: :meth:`ServerProfile.kickoff` (parameter encoding, e.g. ``comma_join_repeats``),
  :meth:`ServerProfile.status_headers`, :meth:`ServerProfile.cancel_headers`;
* response classification: :meth:`ServerProfile.is_transient` (which answers are "not now"),
  :meth:`ServerProfile.retry_after` (reading the server's wait);
* pacing: :meth:`ServerProfile.poll_delay` (cadence and caps), ``max_page_waits``/``max_page_backoff``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from airflow_provider_smart.bulk.kickoff import FHIR_JSON, KickoffRequest, build_kickoff
from airflow_provider_smart.bulk.models import ExportManifest, ExportRequest, StatusResult
from airflow_provider_smart.bulk.outcome import body_text, is_transient, parse_outcome
from airflow_provider_smart.bulk.retry import (
    TRANSIENT_POLL_STATUSES,
    RetryPolicy,
    Sleep,
    TransientFailure,
    next_poll_delay,
)
from airflow_provider_smart.bulk.urls import is_http_url, redact_url, resolve
from airflow_provider_smart.exceptions import BulkExportError, ExportThrottledError, ExportTimeoutError
from airflow_provider_smart.origins import OriginPolicy

log = logging.getLogger("airflow_provider_smart.bulk")
T = TypeVar("T")

MAX_MANIFEST_PAGES = 10_000
MAX_PAGE_WAITS = 120  # 202s tolerated on one manifest page before giving up
MAX_PAGE_BACKOFF = 60.0  # a page is nearly ready by definition: no need to back off for long
LAST_TRY_GRACE = 1.0  # a last try at the deadline still gets this long to answer


# -- what an exchange says to its driver, and hears back ------------------------------------------
@dataclass(frozen=True)
class Request:
    """One HTTP request to send. ``deadline``: seconds this try may take in all (None: the transport's own
    bound; a transport uses the smaller of the two)."""

    method: str
    url: str
    headers: Mapping[str, str]
    what: str
    params: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    deadline: float | None = None


@dataclass(frozen=True)
class Response:
    """An answer, body read in full. ``headers`` is case-insensitive (requests' and aiohttp's both are);
    ``url`` is the final URL, after redirects."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


@dataclass(frozen=True)
class Failure:
    """No answer: ``network`` (refused, reset, TLS...), ``deadline`` (no full answer in time) or
    ``redirects`` (a redirect loop). ``detail`` names the error, never the request."""

    kind: Literal["network", "deadline", "redirects"]
    detail: str


Action = Request | Sleep
Exchange = Generator[Action, Any, T]


def drive(exchange: Exchange[T], send: Callable[[Request], Response | Failure], sleep: Callable[[float], None]) -> T:
    """Run ``exchange`` with a blocking ``send`` and ``sleep``; its result or its exception."""
    try:
        action = next(exchange)
        while True:
            if isinstance(action, Sleep):
                sleep(action.seconds)
                action = exchange.send(None)
            else:
                action = exchange.send(send(action))
    except StopIteration as done:
        return done.value


async def adrive(
    exchange: Exchange[T],
    send: Callable[[Request], Awaitable[Response | Failure]],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``exchange`` on an event loop: ``send`` and ``sleep`` are awaited, nothing blocks."""
    try:
        action = next(exchange)
        while True:
            if isinstance(action, Sleep):
                await sleep(action.seconds)
                action = exchange.send(None)
            else:
                action = exchange.send(await send(action))
    except StopIteration as done:
        return done.value


# -- the seam: per-server behaviour ----------------------------------------------------------------
@dataclass(frozen=True)
class ServerProfile:
    """How to talk to one kind of server. The defaults are the spec's, and this package's, behaviour.

    :param comma_join_repeats: None (default): GET kick-off list parameters in the spec's form (``_type=A,B``,
        one ``_typeFilter`` per query); False: repeated (``_type=A&_type=B``); True: ``_typeFilter`` queries
        comma-joined too (see :func:`~airflow_provider_smart.bulk.kickoff.encode_get_params`).
    :param transient_poll_statuses: status-URL answers that mean "not now" whatever their body.
    :param min_poll_interval: floor of every wait between polls (a server saying 0 must not make us spin).
    :param max_page_waits: ``202`` answers tolerated on one further manifest page.
    :param max_page_backoff: cap of our own backoff between those.
    """

    comma_join_repeats: bool | None = None
    transient_poll_statuses: frozenset[int] = TRANSIENT_POLL_STATUSES
    min_poll_interval: float = 1.0
    max_page_waits: int = MAX_PAGE_WAITS
    max_page_backoff: float = MAX_PAGE_BACKOFF

    # request building
    def kickoff(self, request: ExportRequest, fhir_base_url: str) -> KickoffRequest:
        return build_kickoff(request, fhir_base_url, comma_join_repeats=self.comma_join_repeats)

    def kickoff_error(
        self, method: str, url: str, response: Response, request: ExportRequest | None = None
    ) -> BulkExportError:
        """Our error for a kick-off the server refused (vendor profiles word it for their server)."""
        return kickoff_error(method, url, response)

    def status_headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def cancel_headers(self) -> dict[str, str]:
        return {"Accept": FHIR_JSON}

    # response classification
    def retry_after(self, response: Response, retry: RetryPolicy) -> float | None:
        """The server's wait in seconds (capped by the retry policy), or None."""
        return retry.retry_after(response.headers.get("Retry-After"))

    def is_transient(self, response: Response) -> bool:
        """A status-like answer that says "not now": throttling, overload, a transient OperationOutcome."""
        return response.status in self.transient_poll_statuses or (
            response.status >= 400 and is_transient(parse_outcome(response.body))
        )

    # pacing
    def poll_delay(
        self, retry_after: float | None, polls: int, poll_interval: float, max_poll_interval: float
    ) -> float:
        """Seconds to the next status poll (see :func:`~airflow_provider_smart.bulk.retry.next_poll_delay`)."""
        return next_poll_delay(retry_after, polls, poll_interval, max_poll_interval, self.min_poll_interval)


DEFAULT_PROFILE = ServerProfile()


@dataclass(frozen=True)
class Server:
    """The server an exchange talks to: the origins that may receive the token (shared with the
    transport, which attaches it) and how the server behaves (its :class:`ServerProfile`)."""

    origins: OriginPolicy
    profile: ServerProfile = DEFAULT_PROFILE


# -- shared checks ---------------------------------------------------------------------------------
def require_http(url: str, what: str) -> None:
    if not is_http_url(url):
        raise BulkExportError(f"The {what} must be an http(s) URL, not {url[:200]!r}.", url=url[:200])


def vouch_for_status_url(origins: OriginPolicy, url: str, what: str = "status URL") -> None:
    """A status URL we were given (or got from our kick-off): http(s), no downgrade, and its origin trusted."""
    require_http(url, what)
    refusal = origins.refusal(url)
    if refusal:
        raise BulkExportError(f"The {what} {refusal}.", url=redact_url(url))
    origins.add(url)


def redirect_loop(what: str, url: str) -> BulkExportError:
    return BulkExportError(
        f"The {what} request to {redact_url(url)} was redirected too many times (a redirect loop): "
        "the server or a proxy in front of it is misconfigured; check the URL with the server's operators.",
        url=redact_url(url),
    )


def answered_error(message: str, response: Response, **context: Any) -> BulkExportError:
    """Our error for a fatal answer: ``{body}`` in ``message`` becomes the body's readable text; the
    status and any OperationOutcome go into the context."""
    return BulkExportError(
        message.replace("{body}", body_text(response.body)),
        status=response.status,
        outcome=parse_outcome(response.body),
        **context,
    )


def _try_deadline(policy: RetryPolicy) -> float | None:
    remaining = policy.remaining()
    return None if remaining is None else max(remaining, LAST_TRY_GRACE)


# -- kick-off --------------------------------------------------------------------------------------
class _Throttled(TransientFailure):
    """A kick-off answered 429: wait and try again (the response is kept for the final error)."""

    def __init__(self, response: Response, retry_after: float | None) -> None:
        super().__init__(f"HTTP 429: {body_text(response.body)}", retry_after)
        self.response = response


def kickoff_error(method: str, url: str, response: Response, *, scope_hint: str = "") -> BulkExportError:
    """A refused kick-off, with the server's own words (OperationOutcome text) and what to change."""
    status = response.status
    hint = {
        401: " Check the client id, key and scope: the token was refused even after renewal.",
        403: scope_hint or " The token's scopes do not allow this export (check the requested types and scope).",
        422: " The server does not support a parameter value (Oracle/Cerner answer 422 for those): remove it, "
        "or try lenient=True.",
        429: " The server is still busy: another export may be running for this client (Epic and Cerner "
        "allow one at a time). Wait, or cancel the running export (airflow-smart cancel-export).",
    }.get(status, "")
    if 400 <= status < 500 and status not in (401, 403, 422, 429):
        hint = " The server rejected a parameter: fix the request, or try lenient=True."
    elif status >= 500:
        hint = " The server failed; its own words are above (export errors often come back as an opaque 500)."
    return answered_error(f"Kick-off {method} {url} failed with HTTP {status}: {{body}}.{hint}", response, url=url)


def kickoff_exchange(request: ExportRequest, fhir_base_url: str, server: Server, policy: RetryPolicy) -> Exchange[str]:
    """Start an export; returns its absolute status URL (trusted in ``server.origins``).

    A 429 is waited out within ``policy``; a request that got no answer is not retried (it may have
    started an export already).
    """
    profile = server.profile
    spec = profile.kickoff(request, fhir_base_url)
    body = json.dumps(spec.body).encode() if spec.body is not None else None

    def attempt() -> Exchange[Response]:
        answer = yield Request(
            # The exact query string (literal commas in list values), not pairs for the transport to re-encode.
            spec.method,
            spec.full_url,
            spec.headers,
            "kick-off",
            [],
            body,
            deadline=_try_deadline(policy),
        )
        if isinstance(answer, Failure):
            if answer.kind == "redirects":
                raise redirect_loop("kick-off", spec.url)
            raise BulkExportError(
                f"Kick-off {spec.method} {spec.url} failed: {answer.detail}. "
                "The export may or may not have started; check the server before retrying "
                "(Epic/Cerner allow one at a time).",
                url=spec.url,
            )
        if answer.status == 429:
            raise _Throttled(answer, profile.retry_after(answer, policy))
        return answer

    def give_up(failure: TransientFailure, tries: int) -> Exception:
        assert isinstance(failure, _Throttled)
        return profile.kickoff_error(spec.method, spec.url, failure.response, request)

    try:
        response = yield from policy.retrying(attempt, what=f"Kick-off {spec.method} {spec.url}", give_up=give_up)
    except (ExportThrottledError, ExportTimeoutError) as exc:
        exc.context.setdefault("url", spec.url)
        raise
    if response.status != 202:
        raise profile.kickoff_error(spec.method, spec.url, response, request)
    location = response.headers.get("Content-Location")
    if not location:
        raise BulkExportError(
            f"The server accepted the kick-off ({spec.url}) but sent no Content-Location header, "
            "so there is no status URL to poll. The server is not Bulk Data conformant.",
            url=spec.url,
            status=202,
        )
    status_url = resolve(response.url or spec.url, location.strip())
    vouch_for_status_url(server.origins, status_url, "kick-off's Content-Location")
    log.info("Export kicked off with %s %s; status URL %s", spec.method, spec.url, status_url)
    return status_url


# -- status, manifest pages, cancel ----------------------------------------------------------------
def status_request_exchange(
    url: str,
    *,
    policy: RetryPolicy,
    profile: ServerProfile = DEFAULT_PROFILE,
    what: str = "status",
    method: str = "GET",
) -> Exchange[Response]:
    """GET (or DELETE) a status-like URL, retrying transient failures; returns the first other answer."""
    headers = profile.status_headers() if method == "GET" else profile.cancel_headers()

    def attempt() -> Exchange[Response]:
        answer = yield Request(method, url, headers, what, deadline=_try_deadline(policy))
        if isinstance(answer, Failure):
            if answer.kind == "redirects":
                raise redirect_loop(f"export {what}", url)
            raise TransientFailure(answer.detail)
        if profile.is_transient(answer):
            raise TransientFailure(
                f"HTTP {answer.status}: {body_text(answer.body)}", profile.retry_after(answer, policy)
            )
        return answer

    def give_up(failure: TransientFailure, tries: int) -> Exception:
        return BulkExportError(
            f"The export {what} request to {redact_url(url)} kept failing ({failure}) after "
            f"{tries} attempts. The export itself may still be running: poll again later.",
            url=url,
            status_url=url,
        )

    try:
        return (
            yield from policy.retrying(attempt, what=f"Export {what} request to {redact_url(url)}", give_up=give_up)
        )
    except (ExportThrottledError, ExportTimeoutError) as exc:
        exc.context.setdefault("status_url", url)
        raise


def status_error(url: str, response: Response) -> BulkExportError:
    status = response.status
    if status == 404:
        why = "the export no longer exists (cancelled, expired, or never existed): kick off a new one"
    elif status in (401, 403):
        why = "access was refused: check the client's credentials and scopes"
    else:
        why = "the export failed on the server"
    return answered_error(
        f"Export status {redact_url(url)} answered HTTP {status}: {{body}}; {why}.", response, url=url, status_url=url
    )


def poll_exchange(
    status_url: str, server: Server, policy: RetryPolicy, *, read_manifest: bool, vouched: bool = False
) -> Exchange[StatusResult]:
    """Ask once whether the export is done: ``in_progress`` (``X-Progress``, ``Retry-After``) or
    ``complete`` (with the whole manifest when ``read_manifest``). Fatal answers raise.
    ``vouched``: :func:`vouch_for_status_url` was done already (by a wait, once for all its polls)."""
    if not vouched:
        vouch_for_status_url(server.origins, status_url)  # the caller vouches for it: it came from our kick-off
    profile = server.profile
    response = yield from status_request_exchange(status_url, policy=policy, profile=profile)
    if response.status == 202:
        progress = response.headers.get("X-Progress")
        return StatusResult("in_progress", progress, profile.retry_after(response, policy))
    if response.status != 200:
        raise status_error(status_url, response)
    # The pages of a finished export are read to the end: the caller's timeout was about the export.
    manifest = (
        (yield from manifest_exchange(status_url, response, policy=policy, profile=profile)) if read_manifest else None
    )
    return StatusResult("complete", manifest=manifest)


def manifest_exchange(
    status_url: str, first: Response, *, policy: RetryPolicy, profile: ServerProfile = DEFAULT_PROFILE
) -> Exchange[ExportManifest]:
    """The manifest of a finished export, every ``link[relation=next]`` page merged in."""
    manifest = ExportManifest.from_json(first.body, status_url)
    seen = {status_url}
    next_url = manifest.next_link()
    while next_url:
        next_url = resolve(status_url, next_url)
        require_http(next_url, "manifest's next link")
        if next_url in seen or len(seen) >= MAX_MANIFEST_PAGES:
            raise BulkExportError(
                f"The manifest's next links loop or never end (at {redact_url(next_url)}).",
                url=status_url,
            )
        seen.add(next_url)
        page_response = yield from _page_exchange(next_url, policy=policy, profile=profile)
        page = ExportManifest.from_json(page_response.body, status_url)
        manifest = manifest.merged_with(page)
        next_url = page.next_link()
    if len(seen) > 1:
        log.info("Read a manifest of %d pages: %d output files.", len(seen), len(manifest.output))
    return manifest


def _page_exchange(url: str, *, policy: RetryPolicy, profile: ServerProfile) -> Exchange[Response]:
    """A further manifest page; like a status URL it may answer 202 (not ready) first."""
    # The pages of a finished export are read to the end: the caller's timeout was about the export.
    page_policy = dataclasses.replace(policy, deadline=None, max_wait=None)
    for waits in range(profile.max_page_waits + 1):
        response = yield from status_request_exchange(url, policy=page_policy, profile=profile, what="manifest page")
        if response.status == 200:
            return response
        if response.status != 202:
            raise status_error(url, response)
        if waits < profile.max_page_waits:
            retry_after = profile.retry_after(response, policy)
            cap = policy.max_retry_after if retry_after is not None else profile.max_page_backoff
            delay = next_poll_delay(retry_after, waits + 1, 1.0, cap)
            seconds, error = page_policy.plan_pause(
                delay, server_asked=retry_after is not None, what=f"Manifest page {redact_url(url)}"
            )
            yield Sleep(seconds)
            if error is not None:
                raise error
    raise BulkExportError(
        f"The manifest page {redact_url(url)} stayed '202 Accepted' for {profile.max_page_waits} polls.",
        url=url,
    )


def cancel_exchange(status_url: str, server: Server, policy: RetryPolicy) -> Exchange[bool]:
    """DELETE the export: True if the server accepted, False if it was already gone (404/410)."""
    require_http(status_url, "status URL")
    server.origins.add(status_url)
    response = yield from status_request_exchange(
        status_url, policy=policy, profile=server.profile, what="cancel", method="DELETE"
    )
    if response.status in (200, 202, 204):
        log.info("Deleted export %s on the server.", redact_url(status_url))
        return True
    if response.status in (404, 410):
        return False
    raise BulkExportError(
        f"Cancelling export {redact_url(status_url)} failed with HTTP {response.status}: {body_text(response.body)}.",
        status=response.status,
        url=status_url,
        status_url=status_url,
        outcome=parse_outcome(response.body),
    )


# -- waiting for an export -------------------------------------------------------------------------
@dataclass
class WaitState:
    """What a wait has seen so far (read by callers that report progress, e.g. the trigger's events)."""

    polls: int = 0
    progress: str | None = None
    started: float = field(default_factory=time.monotonic)


def wait_exchange(
    status_url: str,
    server: Server,
    policy: RetryPolicy,
    *,
    poll_interval: float,
    max_poll_interval: float,
    read_manifest: bool = True,
    state: WaitState | None = None,
    on_progress: Callable[[StatusResult], None] | None = None,
    progress_log: Any = log,
) -> Exchange[StatusResult]:
    """Poll until the export completes; returns the complete :class:`StatusResult`.

    Waits ``Retry-After`` when the server sends it, else backs off from ``poll_interval``; every wait is
    clamped by :meth:`ServerProfile.poll_delay` and never overshoots ``policy``'s deadline, retries of a
    failing status request included. When the server's ``Retry-After`` points past the deadline the
    wait ends at the deadline without polling early (servers may count early polls as violations);
    when only our own backoff does, one last poll is made at the deadline. On timeout raises
    :class:`ExportTimeoutError` (``context["status_url"]``, ``context["progress"]``).
    ``on_progress`` gets each in-progress result; ``progress_log`` (a logger) says each one and the next wait.
    """
    state = state or WaitState()
    vouch_for_status_url(server.origins, status_url)
    while True:
        result = yield from poll_exchange(status_url, server, policy, read_manifest=read_manifest, vouched=True)
        state.polls += 1
        if result.complete:
            log.info("Export %s complete after %d polls.", redact_url(status_url), state.polls)
            return result
        state.progress = result.progress
        delay = server.profile.poll_delay(result.retry_after, state.polls, poll_interval, max_poll_interval)
        if on_progress is not None:
            on_progress(result)
        progress_log.info(
            "Export %s in progress (%s) after %.0f s; next poll in %.0f s.",
            redact_url(status_url),
            result.progress or "no progress reported",
            time.monotonic() - state.started,
            delay,
        )
        remaining = policy.remaining()
        if remaining is not None and (remaining <= 0 or (result.retry_after is not None and delay > remaining)):
            # The server does not want us back before the deadline: wait it out, never poll early.
            yield Sleep(max(0.0, remaining))
            raise ExportTimeoutError(
                f"The export at {redact_url(status_url)} did not finish before the timeout.",
                status_url=status_url,
                progress=result.progress,
                polls=state.polls,
            )
        yield Sleep(delay if remaining is None else min(delay, remaining))
