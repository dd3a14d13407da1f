"""``BulkExportClient``: kick-off, status polling, manifests, cancel and downloads over ``requests``.

Airflow-free and synchronous. Sessions, the origin allow-list and the retry policy live in
:class:`~airflow_provider_smart.bulk.transport.BulkTransport`, shared with the downloader.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

from airflow_provider_smart.bulk import deprecated as deprecated_keywords
from airflow_provider_smart.bulk.download import FileDownloader
from airflow_provider_smart.bulk.kickoff import FHIR_JSON, build_kickoff
from airflow_provider_smart.bulk.models import (
    DownloadOptions,
    DownloadReport,
    ExportManifest,
    ExportRequest,
    FileReport,
    StatusResult,
)
from airflow_provider_smart.bulk.outcome import body_text, is_transient, parse_outcome
from airflow_provider_smart.bulk.plan import plan_files
from airflow_provider_smart.bulk.retry import (
    TRANSIENT_POLL_STATUSES,
    RetryPolicy,
    TransientFailure,
    next_poll_delay,
)
from airflow_provider_smart.bulk.storage import DestinationLease, LandedFiles
from airflow_provider_smart.bulk.transport import BulkTransport
from airflow_provider_smart.bulk.urls import is_http_url, redact_url, resolve
from airflow_provider_smart.exceptions import BulkExportError, ExportThrottledError, ExportTimeoutError
from airflow_provider_smart.origins import OriginPolicy
from airflow_provider_smart.sessions import DEFAULT_TIMEOUT, DeadlineExceeded

log = logging.getLogger("airflow_provider_smart.bulk")

STATUS_HEADERS = {"Accept": "application/json"}
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_MAX_POLL_INTERVAL = 600.0
DEFAULT_WAIT_TIMEOUT = 7 * 24 * 3600.0  # Epic exports have taken weeks; a week is a sane default bound
MAX_MANIFEST_PAGES = 10_000
MAX_PAGE_WAITS = 120  # 202s tolerated on one manifest page before giving up
MAX_PAGE_BACKOFF = 60.0  # a page is nearly ready by definition: no need to back off for long
NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def _require_http(url: str, what: str) -> None:
    if not is_http_url(url):
        raise BulkExportError(f"The {what} must be an http(s) URL, not {url[:200]!r}.", url=url[:200])


# The longest 429 wait kick_off() sleeps in place when the caller set neither a timeout nor a max wait:
# past it, ExportThrottledError says when the server will take an export (its not_before).
UNBOUNDED_KICKOFF_MAX_WAIT = 900.0


class BulkExportClient:
    """A FHIR Bulk Data client: kick off, poll (or :meth:`wait`), download, cancel.

    :param session: the authenticated session (normally from ``SmartHook.get_conn()`` or a session whose
        auth is a ``TokenAuth``: its origin policy becomes this client's, so the two agree).
    :param fhir_base_url: the FHIR base, e.g. ``https://ehr.example/fhir/r4``.
    :param origins: the origin policy to share (default: the session auth's own).
    :param allowed_hosts: extra file hosts that may receive the token (``host``, ``host:port`` or origin).
    :param timeout: connect and read timeout of every request, in seconds.
    :param request_deadline: overall bound on one kick-off, status, manifest-page or DELETE request
        (and a download's headers), however slowly the server drips bytes; None: ``2 * timeout``.
    :param retry: the retry policy (attempts, backoff, ``Retry-After`` cap, sleep).
    :param kickoff_max_wait: the longest server-requested wait (429 ``Retry-After``) :meth:`kick_off`
        sleeps through; a longer one raises :class:`ExportThrottledError` (None: no limit when a timeout
        bounds the call, else ``UNBOUNDED_KICKOFF_MAX_WAIT``: a call with no bound at all never sleeps
        hours in place). Airflow's deferrable operator sets it, then defers until the server's time.
    :param kickoff_timeout: default ``timeout`` of :meth:`kick_off` (None: bounded only by the retry policy).
    :param comma_join_repeats: GET kick-off sends list parameters comma-joined (Cerner rejects repeats).
    :param clock: injectable ``time.monotonic``.

    Deprecated keywords (0.1.0; removed in 0.3.0, a ``DeprecationWarning`` until then): ``sleep``,
    ``transient_retries``, ``max_retry_after``, ``backoff_base``, ``backoff_max``: the same settings of ``retry``.
    """

    def __init__(
        self,
        session: requests.Session,
        fhir_base_url: str,
        *,
        origins: OriginPolicy | None = None,
        allowed_hosts: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        request_deadline: float | None = None,
        retry: RetryPolicy | None = None,
        comma_join_repeats: bool = False,
        kickoff_max_wait: float | None = None,
        kickoff_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        **deprecated: Any,
    ) -> None:
        retry = deprecated_keywords.retry_policy(retry, deprecated)
        _require_http(fhir_base_url, "fhir_base_url")
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.transport = BulkTransport(
            session,
            origins=origins,
            trusted_urls=[self.fhir_base_url],
            allowed_hosts=allowed_hosts,
            timeout=timeout,
            request_deadline=request_deadline,
            retry=retry,
            clock=clock,
        )
        self.retry = self.transport.retry
        self.comma_join_repeats = comma_join_repeats
        self.kickoff_max_wait = kickoff_max_wait
        self.kickoff_timeout = kickoff_timeout
        self.clock = clock

    @property
    def session(self) -> requests.Session:
        return self.transport.session

    def allow_origin(self, url: str) -> None:
        """Trust ``url``'s origin with the token (done for every status URL we are given or get)."""
        self.transport.trust(url)

    # -- kick-off -------------------------------------------------------------------------------
    def kick_off(self, request: ExportRequest, *, timeout: float | None = None) -> str:
        """Start an export; returns its absolute status URL.

        A 429 (one export at a time) is waited out, but never past ``timeout`` seconds (default
        ``kickoff_timeout``; :class:`ExportTimeoutError`) and never longer in one go than ``kickoff_max_wait``
        (:class:`ExportThrottledError`, whose ``not_before`` says when to try again).
        """
        spec = build_kickoff(request, self.fhir_base_url, comma_join_repeats=self.comma_join_repeats)
        data = json.dumps(spec.body).encode() if spec.body is not None else None
        timeout = self.kickoff_timeout if timeout is None else timeout
        max_wait = self.kickoff_max_wait
        if timeout is None and max_wait is None:
            max_wait = UNBOUNDED_KICKOFF_MAX_WAIT  # no bound given: a 429 storm must not sleep hours silently
        policy = self.retry.bounded(timeout=timeout, max_wait=max_wait, clock=self.clock)

        def attempt() -> requests.Response:
            try:
                response = self.transport.request(
                    spec.method, spec.url, params=spec.params, data=data, headers=spec.headers
                )
            except requests.TooManyRedirects:
                raise _redirect_loop("kick-off", spec.url) from None
            except NETWORK_ERRORS as exc:
                # Not retried: a POST/GET that reached the server may have started an export already.
                raise BulkExportError(
                    f"Kick-off {spec.method} {spec.url} failed: {type(exc).__name__}. "
                    "The export may or may not have started; check the server before retrying "
                    "(Epic/Cerner allow one at a time).",
                    url=spec.url,
                ) from None
            if response.status_code == 429:
                retry_after = self.retry.retry_after(response.headers.get("Retry-After"))
                raise _Throttled(response, retry_after)
            return response

        def give_up(failure: TransientFailure, tries: int) -> Exception:
            assert isinstance(failure, _Throttled)
            return self._kickoff_error(spec.method, spec.url, failure.response)

        try:
            response = policy.run(attempt, what=f"Kick-off {spec.method} {spec.url}", give_up=give_up)
        except (ExportThrottledError, ExportTimeoutError) as exc:
            exc.context.setdefault("url", spec.url)
            raise
        if response.status_code != 202:
            raise self._kickoff_error(spec.method, spec.url, response)
        location = response.headers.get("Content-Location")
        if not location:
            raise BulkExportError(
                f"The server accepted the kick-off ({spec.url}) but sent no Content-Location header, "
                "so there is no status URL to poll. The server is not Bulk Data conformant.",
                url=spec.url,
                status=202,
            )
        status_url = resolve(response.url or spec.url, location.strip())
        _require_http(status_url, "kick-off's Content-Location")
        self.transport.refuse_downgrade(status_url, "kick-off's Content-Location")
        self.allow_origin(status_url)
        log.info("Export kicked off with %s %s; status URL %s", spec.method, spec.url, status_url)
        return status_url

    def _kickoff_error(self, method: str, url: str, response: requests.Response) -> BulkExportError:
        status = response.status_code
        hint = {
            401: " Check the client id, key and scope: the token was refused even after renewal.",
            403: " The token's scopes do not allow this export (check the requested types and scope).",
            429: " The server is still busy: another export may be running for this client (Epic and Cerner "
            "allow one at a time). Wait, or cancel the running export.",
        }.get(status, "")
        if 400 <= status < 500 and status not in (401, 403, 429):
            hint = " The server rejected a parameter: fix the request, or try lenient=True."
        return BulkExportError(
            f"Kick-off {method} {url} failed with HTTP {status}: {body_text(response.content)}.{hint}",
            status=status,
            url=url,
            outcome=parse_outcome(response.content),
        )

    # -- status ---------------------------------------------------------------------------------
    def _status_request(
        self, url: str, *, what: str = "status", method: str = "GET", policy: RetryPolicy | None = None
    ) -> requests.Response:
        """GET (or DELETE) a status-like URL, retrying transient failures; returns the first other answer.

        Each try ends within the transport's ``request_deadline``; the retries within ``policy``'s bounds.
        """
        headers = STATUS_HEADERS if method == "GET" else {"Accept": FHIR_JSON}
        policy = policy or self.retry.bounded(clock=self.clock)

        def attempt() -> requests.Response:
            try:
                response = self.transport.request(method, url, headers=headers)
            except requests.TooManyRedirects:
                raise _redirect_loop(f"export {what}", url) from None
            except NETWORK_ERRORS as exc:
                why = f"{type(exc).__name__}: {exc}" if isinstance(exc, DeadlineExceeded) else type(exc).__name__
                raise TransientFailure(why) from None
            transient = response.status_code in TRANSIENT_POLL_STATUSES or (
                response.status_code >= 400 and is_transient(parse_outcome(response.content))
            )
            if transient:
                raise TransientFailure(
                    f"HTTP {response.status_code}: {body_text(response.content)}",
                    self.retry.retry_after(response.headers.get("Retry-After")),
                )
            return response

        def give_up(failure: TransientFailure, tries: int) -> Exception:
            return BulkExportError(
                f"The export {what} request to {redact_url(url)} kept failing ({failure}) after "
                f"{tries} attempts. The export itself may still be running: poll again later.",
                url=url,
                status_url=url,
            )

        try:
            return policy.run(attempt, what=f"Export {what} request to {redact_url(url)}", give_up=give_up)
        except (ExportThrottledError, ExportTimeoutError) as exc:
            exc.context.setdefault("status_url", url)
            raise

    def _status_error(self, url: str, response: requests.Response) -> BulkExportError:
        status = response.status_code
        if status == 404:
            why = "the export no longer exists (cancelled, expired, or never existed): kick off a new one"
        elif status in (401, 403):
            why = "access was refused: check the client's credentials and scopes"
        else:
            why = "the export failed on the server"
        return BulkExportError(
            f"Export status {redact_url(url)} answered HTTP {status}: {body_text(response.content)}; {why}.",
            status=status,
            url=url,
            status_url=url,
            outcome=parse_outcome(response.content),
        )

    def status(self, status_url: str, *, timeout: float | None = None, max_wait: float | None = None) -> StatusResult:
        """Ask once whether the export is done, without reading the manifest: the cheap poll.

        ``complete`` results carry no manifest (call :meth:`poll` for it); fatal errors raise
        :class:`BulkExportError`; transient failures are retried inside, for at most ``timeout``
        seconds (then :class:`ExportTimeoutError`) and with no single pause longer than ``max_wait``
        (a longer one raises :class:`ExportThrottledError` saying when to come back).
        """
        return self._poll(status_url, read_manifest=False, policy=self._policy(timeout, max_wait))

    def poll(self, status_url: str, *, timeout: float | None = None, max_wait: float | None = None) -> StatusResult:
        """Ask once whether the export is done (transient failures are retried inside, see :meth:`status`).

        Returns ``in_progress`` (with ``X-Progress`` and ``Retry-After``) or ``complete`` with the
        whole manifest, every ``link[relation=next]`` page merged in. Fatal errors (a failed or
        deleted export) raise :class:`BulkExportError`.
        """
        return self._poll(status_url, read_manifest=True, policy=self._policy(timeout, max_wait))

    def _policy(self, timeout: float | None = None, max_wait: float | None = None) -> RetryPolicy:
        return self.retry.bounded(timeout=timeout, max_wait=max_wait, clock=self.clock)

    def _poll(self, status_url: str, *, read_manifest: bool, policy: RetryPolicy) -> StatusResult:
        _require_http(status_url, "status URL")
        self.transport.refuse_downgrade(status_url, "status URL")
        self.allow_origin(status_url)  # the caller vouches for it: it came from our kick-off
        response = self._status_request(status_url, policy=policy)
        if response.status_code == 202:
            progress = response.headers.get("X-Progress")
            return StatusResult("in_progress", progress, self.retry.retry_after(response.headers.get("Retry-After")))
        if response.status_code != 200:
            raise self._status_error(status_url, response)
        # The pages of a finished export are read to the end: the caller's timeout was about the export.
        manifest = self._read_pages(status_url, response) if read_manifest else None
        return StatusResult("complete", manifest=manifest)

    def _read_pages(self, status_url: str, response: requests.Response) -> ExportManifest:
        manifest = ExportManifest.from_json(response.content, status_url)
        seen = {status_url}
        next_url = manifest.next_link()
        while next_url:
            next_url = resolve(status_url, next_url)
            _require_http(next_url, "manifest's next link")
            if next_url in seen or len(seen) >= MAX_MANIFEST_PAGES:
                raise BulkExportError(
                    f"The manifest's next links loop or never end (at {redact_url(next_url)}).",
                    url=status_url,
                )
            seen.add(next_url)
            page = ExportManifest.from_json(self._fetch_page(next_url).content, status_url)
            manifest = manifest.merged_with(page)
            next_url = page.next_link()
        if len(seen) > 1:
            log.info("Read a manifest of %d pages: %d output files.", len(seen), len(manifest.output))
        return manifest

    def _fetch_page(self, url: str) -> requests.Response:
        """A further manifest page; like a status URL it may answer 202 (not ready) first."""
        policy = self._policy()
        for waits in range(MAX_PAGE_WAITS + 1):
            response = self._status_request(url, what="manifest page", policy=policy)
            if response.status_code == 200:
                return response
            if response.status_code != 202:
                raise self._status_error(url, response)
            if waits < MAX_PAGE_WAITS:
                retry_after = self.retry.retry_after(response.headers.get("Retry-After"))
                cap = self.retry.max_retry_after if retry_after is not None else MAX_PAGE_BACKOFF
                delay = next_poll_delay(retry_after, waits + 1, 1.0, cap)
                policy.pause(delay, server_asked=retry_after is not None, what=f"Manifest page {redact_url(url)}")
        raise BulkExportError(
            f"The manifest page {redact_url(url)} stayed '202 Accepted' for {MAX_PAGE_WAITS} polls.",
            url=url,
        )

    def wait(
        self,
        status_url: str,
        *,
        poll_interval: float | None = None,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        min_poll_interval: float = 1.0,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_progress: Callable[[StatusResult], None] | None = None,
    ) -> ExportManifest:
        """Poll until the export completes; returns its manifest.

        Waits ``Retry-After`` when the server sends it, else backs off exponentially from
        ``poll_interval``; every wait is clamped to [``min_poll_interval``, ``max_poll_interval``] and
        never overshoots ``timeout`` (None: no limit), retries of a failing status request included.
        When the server's ``Retry-After`` points past the timeout the wait ends at the timeout without
        polling early (servers may count early polls as violations); when only our own backoff does,
        one last poll is made at the timeout. ``on_progress`` gets each in-progress result.
        On timeout raises :class:`ExportTimeoutError` with ``context["status_url"]``: the export keeps
        running on the server and a later ``wait``/``poll`` on that URL resumes it.
        """
        interval = DEFAULT_POLL_INTERVAL if poll_interval is None else poll_interval
        started = self.clock()
        policy = self._policy(timeout)
        polls = 0
        while True:
            try:
                result = self._poll(status_url, read_manifest=True, policy=policy)
            except ExportTimeoutError as exc:
                raise self._timeout_error(status_url, started, timeout, None, str(exc)) from None
            polls += 1
            if result.complete:
                assert result.manifest is not None
                log.info("Export complete after %d polls and %.0f s.", polls, self.clock() - started)
                return result.manifest
            if on_progress is not None:
                on_progress(result)
            delay = next_poll_delay(result.retry_after, polls, interval, max_poll_interval, min_poll_interval)
            log.info(
                "Export in progress (%s) after %.0f s; next poll in %.0f s.",
                result.progress or "no progress reported",
                self.clock() - started,
                delay,
            )
            remaining = policy.remaining()
            if remaining is not None and (remaining <= 0 or (result.retry_after is not None and delay > remaining)):
                # The server does not want us back before the timeout: wait it out, never poll early.
                self.transport.sleep(max(0.0, remaining))
                raise self._timeout_error(status_url, started, timeout, result.progress)
            if remaining is not None:
                delay = min(delay, remaining)  # our own backoff: one last look at the timeout
            self.transport.sleep(delay)

    def _timeout_error(
        self, status_url: str, started: float, timeout: float | None, progress: str | None, why: str = ""
    ) -> ExportTimeoutError:
        elapsed = self.clock() - started
        return ExportTimeoutError(
            f"The export at {redact_url(status_url)} was still running after {elapsed:.0f} s "
            f"(timeout {timeout or 0:.0f} s, last progress: {progress or 'none'}){f'; {why}' if why else ''}. "
            "It keeps running on the server: resume with wait()/poll() on this status URL, or cancel() it.",
            status_url=status_url,
            progress=progress,
        )

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, status_url: str) -> bool:
        """DELETE the export (cancel it, or tell the server we are done with its files).

        True if the server accepted; False if it was already gone (404/410).
        """
        _require_http(status_url, "status URL")
        self.allow_origin(status_url)
        response = self._status_request(status_url, what="cancel", method="DELETE")
        if response.status_code in (200, 202, 204):
            log.info("Deleted export %s on the server.", redact_url(status_url))
            return True
        if response.status_code in (404, 410):
            return False
        raise BulkExportError(
            f"Cancelling export {redact_url(status_url)} failed with HTTP {response.status_code}: "
            f"{body_text(response.content)}.",
            status=response.status_code,
            url=status_url,
            status_url=status_url,
            outcome=parse_outcome(response.content),
        )

    # -- download -------------------------------------------------------------------------------
    def download(
        self,
        manifest: ExportManifest,
        destination: Any,
        options: DownloadOptions | None = None,
        *,
        on_file_done: Callable[[FileReport], None] | None = None,
        ledger: LandedFiles | None = None,
        lease: DestinationLease | None = None,
        **deprecated: Any,
    ) -> DownloadReport:
        """Download every file of ``manifest`` into ``destination`` (see :meth:`download_batch`).

        Deprecated keywords (0.1.0; removed in 0.3.0): ``max_concurrent_downloads``, ``check_counts``,
        ``check_resource_types``, ``skip_existing``: the same fields of ``options`` (:class:`DownloadOptions`).
        """
        options = deprecated_keywords.download_options("download", options, deprecated)
        return self.download_batch(
            plan_files(manifest),
            destination,
            options,
            requires_access_token=manifest.requires_access_token,
            status_url=manifest.status_url,
            on_file_done=on_file_done,
            ledger=ledger,
            lease=lease,
        )

    def download_batch(
        self,
        entries: list[dict[str, Any]],
        destination: Any,
        options: DownloadOptions | None = None,
        *,
        requires_access_token: bool = True,
        status_url: str | None = None,
        on_file_done: Callable[[FileReport], None] | None = None,
        ledger: LandedFiles | None = None,
        lease: DestinationLease | None = None,
        **deprecated: Any,
    ) -> DownloadReport:
        """Download planned entries (from :func:`plan_files`, possibly one :func:`batch` of them).

        ``destination``: a directory path, or a pathlib-like object such as Airflow's
        ``ObjectStoragePath`` (see :mod:`~airflow_provider_smart.bulk.storage`). ``status_url``: the
        export's status URL, whose origin may receive the token. ``on_file_done`` is called (in this
        thread) with each finished file's report. ``ledger``: which export each landed file belongs to
        (a file is skipped only when it holds this export's file). ``lease``: the destination's lease,
        checked at every rename (an attempt that lost it renames nothing). Raises :class:`BulkDownloadError`
        listing every failed file, after trying them all.
        """
        options = deprecated_keywords.download_options("download_batch", options, deprecated)
        if status_url:
            self.allow_origin(status_url)
        downloader = FileDownloader(
            self.transport,
            destination,
            options or DownloadOptions(),
            requires_access_token=requires_access_token,
            on_file_done=on_file_done,
            ledger=ledger,
            lease=lease,
        )
        return downloader.run(list(entries))

    def __repr__(self) -> str:
        return f"BulkExportClient({self.fhir_base_url!r})"


def _redirect_loop(what: str, url: str) -> BulkExportError:
    return BulkExportError(
        f"The {what} request to {redact_url(url)} was redirected too many times (a redirect loop): "
        "the server or a proxy in front of it is misconfigured; check the URL with the server's operators.",
        url=redact_url(url),
    )


class _Throttled(TransientFailure):
    """A kick-off answered 429: wait and try again (the response is kept for the final error)."""

    def __init__(self, response: requests.Response, retry_after: float | None) -> None:
        super().__init__(f"HTTP 429: {body_text(response.content)}", retry_after)
        self.response = response
