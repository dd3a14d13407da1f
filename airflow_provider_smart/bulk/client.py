"""``BulkExportClient``: kick-off, status polling, manifests, cancel and downloads over ``requests``.

Airflow-free and synchronous. The session passed in is the authenticated one (normally a
``BackendServicesAuth`` that renews tokens and replays a 401 once); the client builds a second,
token-free session for anything that must not carry the token: files whose manifest says
``requiresAccessToken: false``, and URLs on origins we do not trust.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from airflow_provider_smart.bulk.download import FileDownloader
from airflow_provider_smart.bulk.kickoff import FHIR_JSON, build_kickoff
from airflow_provider_smart.bulk.models import (
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
    backoff_delay,
    next_poll_delay,
    parse_retry_after,
)
from airflow_provider_smart.bulk.urls import OriginPolicy, is_http_url, redact_url, resolve
from airflow_provider_smart.exceptions import BulkExportError

log = logging.getLogger("airflow_provider_smart.bulk")

STATUS_HEADERS = {"Accept": "application/json"}
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_WAIT_TIMEOUT = 7 * 24 * 3600.0  # Epic exports have taken weeks; a week is a sane default bound
MAX_MANIFEST_PAGES = 10_000
MAX_PAGE_WAITS = 120  # 202s tolerated on one manifest page before giving up
MAX_PAGE_BACKOFF = 60.0  # a page is nearly ready by definition: no need to back off for long
DEFAULT_POOL_SIZE = 10
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class _NoAuth(AuthBase):
    """Set on the token-free session: strips any Authorization header, and (being an auth) stops
    ``requests`` from falling back to ``~/.netrc`` credentials for the host."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        return request


def _pool_size(session: requests.Session, prefix: str) -> int:
    adapter = session.adapters.get(prefix)
    return int(getattr(adapter, "_pool_maxsize", 0) or 0)


def ensure_pool_size(session: requests.Session, size: int) -> None:
    """Make the http(s) connection pools hold at least ``size`` connections (keeping the retry policy).

    requests' default pool keeps 10 connections per host; parallel downloads beyond that would open
    and throw away connections (urllib3's "Connection pool is full" warning).
    """
    for prefix in ("https://", "http://"):
        current = session.adapters.get(prefix)
        if _pool_size(session, prefix) >= size:
            continue
        if current is not None and type(current) is not HTTPAdapter:
            log.debug("Leaving the custom %s adapter of %s alone.", type(current).__name__, prefix)
            continue
        retries = current.max_retries if isinstance(current, HTTPAdapter) else 0
        adapter = HTTPAdapter(pool_connections=max(size, 10), pool_maxsize=size, max_retries=retries)
        session.mount(prefix, adapter)


def make_plain_session(session: requests.Session) -> requests.Session:
    """A token-free twin of ``session``: same TLS, proxies and headers (minus Authorization), no auth."""
    plain = requests.Session()
    plain.verify = session.verify
    plain.cert = session.cert
    plain.proxies = dict(session.proxies)
    plain.trust_env = session.trust_env
    plain.headers.clear()
    plain.headers.update({k: v for k, v in session.headers.items() if k.lower() != "authorization"})
    plain.auth = _NoAuth()
    retries = getattr(session.adapters.get("https://"), "max_retries", 0)
    size = max(_pool_size(session, "https://"), DEFAULT_POOL_SIZE)
    for prefix in ("https://", "http://"):
        plain.mount(prefix, HTTPAdapter(pool_connections=size, pool_maxsize=size, max_retries=retries))
    return plain


class BulkExportClient:
    """A FHIR Bulk Data client: kick off, poll (or :meth:`wait`), download, cancel.

    :param session: the authenticated session. Its ``auth`` is used duck-typed: ``allow_origin(url)``
        and ``is_allowed(url)`` are called when present (``BackendServicesAuth`` has them).
    :param fhir_base_url: the FHIR base, e.g. ``https://ehr.example/fhir/r4``.
    :param allowed_hosts: extra file hosts that may receive the token (``host``, ``host:port`` or origin).
    :param timeout: connect and read timeout of every request, in seconds.
    :param max_retry_after: cap on any server-requested wait (Cerner has asked for five hours).
    :param transient_retries: consecutive transient failures tolerated per request or file.
    :param backoff_base: first backoff delay; doubles per retry up to ``backoff_max``.
    :param comma_join_repeats: GET kick-off sends list parameters comma-joined (Cerner rejects repeats).
    :param sleep: injectable ``time.sleep``; :param clock: injectable ``time.monotonic``.
    """

    def __init__(
        self,
        session: requests.Session,
        fhir_base_url: str,
        *,
        allowed_hosts: Iterable[str] = (),
        timeout: float = 60,
        max_retry_after: float = 3600,
        transient_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 300,
        comma_join_repeats: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not is_http_url(fhir_base_url):
            raise BulkExportError(f"fhir_base_url must be an http(s) URL, not {fhir_base_url!r}.")
        self.session = session
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self.transient_retries = transient_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.comma_join_repeats = comma_join_repeats
        self.sleep = sleep
        self.clock = clock
        self.trusted = OriginPolicy([self.fhir_base_url], allowed_hosts)
        self.plain_session = make_plain_session(session)

    # -- origins and sessions -------------------------------------------------------------------
    def allow_origin(self, url: str) -> None:
        """Trust ``url``'s origin with the token (done for every status URL we are given or get)."""
        self.trusted.add(url)
        self.authorize_origin(url)

    auth_allow = allow_origin  # the name the Airflow operator probes for when re-attaching

    def authorize_origin(self, url: str) -> None:
        """Tell the session's auth (if it keeps an origin allow-list) that ``url`` may get the token."""
        auth = getattr(self.session, "auth", None)
        allow = getattr(auth, "allow_origin", None)
        is_allowed = getattr(auth, "is_allowed", None)
        if callable(allow) and not (callable(is_allowed) and is_allowed(url)):
            allow(url)

    def _session_for(self, url: str) -> requests.Session:
        return self.session if self.trusted.allows(url) else self.plain_session

    def ensure_pool_size(self, size: int) -> None:
        ensure_pool_size(self.session, size)
        ensure_pool_size(self.plain_session, size)

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff_base, self.backoff_max)

    def _retry_after(self, response: requests.Response) -> float | None:
        return parse_retry_after(response.headers.get("Retry-After"), max_delay=self.max_retry_after)

    # -- kick-off -------------------------------------------------------------------------------
    def kick_off(self, request: ExportRequest) -> str:
        """Start an export; returns its absolute status URL. A 429 (one export at a time) is waited out."""
        spec = build_kickoff(request, self.fhir_base_url, comma_join_repeats=self.comma_join_repeats)
        data = json.dumps(spec.body).encode() if spec.body is not None else None
        attempts = 0
        while True:
            attempts += 1
            try:
                response = self.session.request(
                    spec.method,
                    spec.url,
                    params=spec.params,
                    data=data,
                    headers=spec.headers,
                    timeout=self.timeout,
                )
            except _NETWORK_ERRORS as exc:
                # Not retried: a POST/GET that reached the server may have started an export already.
                raise BulkExportError(
                    f"Kick-off {spec.method} {spec.url} failed: {type(exc).__name__}. "
                    "The export may or may not have started; check the server before retrying "
                    "(Epic/Cerner allow one at a time).",
                    url=spec.url,
                ) from None
            if response.status_code == 429 and attempts <= self.transient_retries:
                delay = self._retry_after(response)
                delay = self._backoff(attempts) if delay is None else delay
                log.warning(
                    "Kick-off throttled (HTTP 429: %s); waiting %.0f s (retry %d of %d).",
                    body_text(response.content),
                    delay,
                    attempts,
                    self.transient_retries,
                )
                self.sleep(delay)
                continue
            break
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
        if not is_http_url(status_url):
            raise BulkExportError(
                f"The kick-off's Content-Location {location!r} is not an http(s) URL.",
                url=spec.url,
            )
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
    def _status_request(self, url: str, *, what: str = "status", method: str = "GET") -> requests.Response:
        """GET (or DELETE) a status-like URL, retrying transient failures; returns the first other answer."""
        session = self._session_for(url)
        headers = STATUS_HEADERS if method == "GET" else {"Accept": FHIR_JSON}
        failures = 0
        while True:
            retry_after: float | None = None
            try:
                response = session.request(method, url, headers=headers, timeout=self.timeout)
            except _NETWORK_ERRORS as exc:
                problem = type(exc).__name__
            else:
                transient = response.status_code in TRANSIENT_POLL_STATUSES or (
                    response.status_code >= 400 and is_transient(parse_outcome(response.content))
                )
                if not transient:
                    return response
                problem = f"HTTP {response.status_code}: {body_text(response.content)}"
                retry_after = self._retry_after(response)
            failures += 1
            if failures > self.transient_retries:
                raise BulkExportError(
                    f"The export {what} request to {redact_url(url)} kept failing ({problem}) after "
                    f"{failures} attempts. The export itself may still be running: poll again later.",
                    url=url,
                    status_url=url,
                )
            delay = self._backoff(failures) if retry_after is None else retry_after
            log.warning(
                "Transient failure on %s (%s); retry %d of %d in %.1f s.",
                redact_url(url),
                problem,
                failures,
                self.transient_retries,
                delay,
            )
            self.sleep(delay)

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

    def poll(self, status_url: str) -> StatusResult:
        """Ask once whether the export is done (transient failures are retried inside).

        Returns ``in_progress`` (with ``X-Progress`` and ``Retry-After``) or ``complete`` with the
        whole manifest, every ``link[relation=next]`` page merged in. Fatal errors (a failed or
        deleted export) raise :class:`BulkExportError`.
        """
        if not is_http_url(status_url):
            raise BulkExportError(f"The status URL must be an http(s) URL, not {status_url!r}.")
        self.allow_origin(status_url)  # the caller vouches for it: it came from our kick-off
        response = self._status_request(status_url)
        if response.status_code == 202:
            progress = response.headers.get("X-Progress")
            return StatusResult("in_progress", progress, self._retry_after(response))
        if response.status_code != 200:
            raise self._status_error(status_url, response)
        manifest = self._read_pages(status_url, response)
        return StatusResult("complete", manifest=manifest)

    check_status = poll  # the other name this operation goes by

    def _read_pages(self, status_url: str, response: requests.Response) -> ExportManifest:
        manifest = ExportManifest.from_json(response.content, status_url)
        seen = {status_url}
        next_url = manifest.next_link()
        while next_url:
            next_url = resolve(status_url, next_url)
            if not is_http_url(next_url):
                raise BulkExportError(
                    f"The manifest's next link {next_url!r} is not an http(s) URL.",
                    url=status_url,
                )
            if next_url in seen or len(seen) >= MAX_MANIFEST_PAGES:
                raise BulkExportError(
                    f"The manifest's next links loop or never end (at {next_url}).",
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
        for waits in range(MAX_PAGE_WAITS + 1):
            response = self._status_request(url, what="manifest page")
            if response.status_code == 200:
                return response
            if response.status_code != 202:
                raise self._status_error(url, response)
            if waits < MAX_PAGE_WAITS:
                retry_after = self._retry_after(response)
                cap = self.max_retry_after if retry_after is not None else MAX_PAGE_BACKOFF
                self.sleep(next_poll_delay(retry_after, waits + 1, 1.0, cap))
        raise BulkExportError(
            f"The manifest page {url} stayed '202 Accepted' for {MAX_PAGE_WAITS} polls.",
            url=url,
        )

    def wait(
        self,
        status_url: str,
        *,
        poll_interval: float | None = None,
        max_poll_interval: float = 600.0,
        min_poll_interval: float = 1.0,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_progress: Callable[[StatusResult], None] | None = None,
    ) -> ExportManifest:
        """Poll until the export completes; returns its manifest.

        Waits ``Retry-After`` when the server sends it, else backs off exponentially from
        ``poll_interval``; every wait is clamped to [``min_poll_interval``, ``max_poll_interval``] and
        never overshoots ``timeout`` (None: no limit). ``on_progress`` gets each in-progress result.
        On timeout raises :class:`BulkExportError` with ``context["status_url"]``: the export keeps
        running on the server and a later ``wait``/``poll`` on that URL resumes it.
        """
        interval = DEFAULT_POLL_INTERVAL if poll_interval is None else poll_interval
        started = self.clock()
        polls = 0
        while True:
            result = self.poll(status_url)
            polls += 1
            if result.state == "complete":
                assert result.manifest is not None
                log.info("Export complete after %d polls and %.0f s.", polls, self.clock() - started)
                return result.manifest
            if on_progress is not None:
                on_progress(result)
            delay = next_poll_delay(result.retry_after, polls, interval, max_poll_interval, min_poll_interval)
            elapsed = self.clock() - started
            log.info(
                "Export in progress (%s) after %.0f s; next poll in %.0f s.",
                result.progress or "no progress reported",
                elapsed,
                delay,
            )
            if timeout is not None:
                remaining = timeout - elapsed
                if remaining <= 0:
                    raise BulkExportError(
                        f"The export at {status_url} was still running after {elapsed:.0f} s "
                        f"(timeout {timeout:.0f} s, last progress: {result.progress or 'none'}). "
                        "It keeps running on the server: resume with wait()/poll() on this status URL, "
                        "or cancel() it.",
                        status_url=status_url,
                        progress=result.progress,
                    )
                delay = min(delay, remaining)
            self.sleep(delay)

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, status_url: str) -> bool:
        """DELETE the export (cancel it, or tell the server we are done with its files).

        True if the server accepted; False if it was already gone (404/410).
        """
        if not is_http_url(status_url):
            raise BulkExportError(f"The status URL must be an http(s) URL, not {status_url!r}.")
        self.allow_origin(status_url)
        response = self._status_request(status_url, what="cancel", method="DELETE")
        if response.status_code in (200, 202, 204):
            log.info("Deleted export %s on the server.", status_url)
            return True
        if response.status_code in (404, 410):
            return False
        detail = body_text(response.content)
        raise BulkExportError(
            f"Cancelling export {status_url} failed with HTTP {response.status_code}: {detail}.",
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
        *,
        max_concurrent_downloads: int = 4,
        check_counts: bool = True,
        check_resource_types: bool = False,
        skip_existing: bool = True,
        on_file_done: Callable[[FileReport], None] | None = None,
    ) -> DownloadReport:
        """Download every file of ``manifest`` into ``destination`` (see :meth:`download_batch`)."""
        return self.download_batch(
            plan_files(manifest),
            destination,
            requires_access_token=manifest.requires_access_token,
            status_url=manifest.status_url,
            max_concurrent_downloads=max_concurrent_downloads,
            check_counts=check_counts,
            check_resource_types=check_resource_types,
            skip_existing=skip_existing,
            on_file_done=on_file_done,
        )

    def download_batch(
        self,
        entries: list[dict[str, Any]],
        destination: Any,
        *,
        requires_access_token: bool = True,
        status_url: str | None = None,
        max_concurrent_downloads: int = 4,
        check_counts: bool = True,
        check_resource_types: bool = False,
        skip_existing: bool = True,
        on_file_done: Callable[[FileReport], None] | None = None,
    ) -> DownloadReport:
        """Download planned entries (from :func:`plan_files`, possibly one :func:`batch` of them).

        ``destination``: a directory path, or a pathlib-like object such as Airflow's
        ``ObjectStoragePath`` (only ``/``, ``open``, ``exists``, ``mkdir``, ``replace``/``rename``,
        ``unlink`` and ``stat`` are used). ``status_url``: the export's status URL, whose origin may
        receive the token. ``on_file_done`` is called (in this thread) with each finished file's
        report. Raises :class:`BulkDownloadError` listing every failed file, after trying them all.
        """
        if status_url:
            self.allow_origin(status_url)
        downloader = FileDownloader(
            self,
            destination,
            requires_access_token=requires_access_token,
            check_counts=check_counts,
            check_resource_types=check_resource_types,
            skip_existing=skip_existing,
            on_file_done=on_file_done,
        )
        return downloader.run(list(entries), max_concurrent_downloads)

    def __repr__(self) -> str:
        return f"BulkExportClient({self.fhir_base_url!r})"
