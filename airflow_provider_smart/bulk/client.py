"""``BulkExportClient``: kick-off, status polling, manifests, cancel and downloads over ``requests``.

Airflow-free and synchronous. What is sent and how answers are read, classified and retried is the
transport-free protocol (:mod:`~airflow_provider_smart.bulk.protocol`), shared with the async trigger;
this client is its ``requests`` transport. Sessions, the origin allow-list and the retry policy live in
:class:`~airflow_provider_smart.bulk.transport.BulkTransport`, shared with the downloader.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import requests

from airflow_provider_smart.auth.scopes import missing_scopes
from airflow_provider_smart.bulk import deprecated as deprecated_keywords
from airflow_provider_smart.bulk.download import FileDownloader
from airflow_provider_smart.bulk.kickoff import FHIR_JSON
from airflow_provider_smart.bulk.models import (
    DownloadOptions,
    DownloadReport,
    ExportManifest,
    ExportRequest,
    FileReport,
    StatusResult,
)
from airflow_provider_smart.bulk.plan import plan_files
from airflow_provider_smart.bulk.progress import TransferProgress
from airflow_provider_smart.bulk.protocol import (
    Exchange,
    Failure,
    Request,
    Response,
    Server,
    ServerProfile,
    WaitState,
    cancel_exchange,
    drive,
    kickoff_exchange,
    poll_exchange,
    require_http,
    wait_exchange,
)
from airflow_provider_smart.bulk.retry import RetryPolicy
from airflow_provider_smart.bulk.storage import DestinationLease, LandedFiles
from airflow_provider_smart.bulk.transport import BulkTransport
from airflow_provider_smart.bulk.urls import redact_url
from airflow_provider_smart.bulk.vendors import GENERIC, PROFILES, VendorProfile, vendor_of
from airflow_provider_smart.exceptions import BulkExportError, ExportTimeoutError
from airflow_provider_smart.origins import OriginPolicy
from airflow_provider_smart.sessions import DEFAULT_TIMEOUT, DeadlineExceeded

log = logging.getLogger("airflow_provider_smart.bulk")
T = TypeVar("T")

DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_MAX_POLL_INTERVAL = 600.0
DEFAULT_WAIT_TIMEOUT = 7 * 24 * 3600.0  # Epic exports have taken weeks; a week is a sane default bound
NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
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
    :param comma_join_repeats: None (default): GET kick-off parameters in the spec's form, or as the
        ``profile`` wants them; False: repeat list parameters; True: comma-join ``_typeFilter`` too.
    :param profile: per-server behaviour: a vendor profile
        (:class:`~airflow_provider_smart.bulk.vendors.VendorProfile`, default ``generic``: the spec as
        written) or any :class:`~airflow_provider_smart.bulk.protocol.ServerProfile`. The session auth's
        client id is bound to it (Epic-Client-ID).
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
        comma_join_repeats: bool | None = None,
        kickoff_max_wait: float | None = None,
        kickoff_timeout: float | None = None,
        profile: ServerProfile | None = None,
        clock: Callable[[], float] = time.monotonic,
        **deprecated: Any,
    ) -> None:
        retry = deprecated_keywords.retry_policy(retry, deprecated)
        require_http(fhir_base_url, "fhir_base_url")
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
        profile = profile or PROFILES[GENERIC]
        if comma_join_repeats is not None:
            profile = dataclasses.replace(profile, comma_join_repeats=comma_join_repeats)
        if isinstance(profile, VendorProfile) and not profile.client_id and self.client_id:
            profile = dataclasses.replace(profile, client_id=self.client_id)
        self.server = Server(self.transport.origins, profile)
        self.comma_join_repeats = profile.comma_join_repeats
        self.kickoff_max_wait = kickoff_max_wait
        self.kickoff_timeout = kickoff_timeout
        self.clock = clock

    @property
    def profile(self) -> ServerProfile:
        return self.server.profile

    @property
    def vendor(self) -> VendorProfile:
        """The vendor profile in use (``generic`` when the profile is a plain ``ServerProfile``)."""
        return vendor_of(self.server.profile)

    @property
    def session(self) -> requests.Session:
        return self.transport.session

    @property
    def client_id(self) -> str:
        """The SMART client id of the session's auth ("" when unknown)."""
        return str(getattr(self.session.auth, "client_id", "") or "")

    def granted_scope(self) -> str | None:
        """The scope the current token was granted, when the session's auth can tell (never the token)."""
        get_token = getattr(self.session.auth, "get_token", None)
        if get_token is None:
            return None
        try:
            return getattr(get_token(), "scope", None)
        except Exception:
            return None

    def allow_origin(self, url: str) -> None:
        """Trust ``url``'s origin with the token (done for every status URL we are given or get)."""
        self.transport.trust(url)

    # -- the transport under the protocol (bulk/protocol.py) ----------------------------------------
    def _send(self, request: Request) -> Response | Failure:
        """One try of a protocol request over ``requests`` (the session's auth adds the token and replays a 401)."""
        try:
            response = self.transport.request(
                request.method,
                request.url,
                params=request.params or None,
                data=request.body,
                headers=dict(request.headers),
                deadline=request.deadline,
            )
        except requests.TooManyRedirects:
            return Failure("redirects", "TooManyRedirects")
        except NETWORK_ERRORS as exc:
            if isinstance(exc, DeadlineExceeded):
                return Failure("deadline", f"{type(exc).__name__}: {exc}")
            return Failure("network", type(exc).__name__)
        return Response(response.status_code, response.headers, response.content, response.url or request.url)

    def _run(self, exchange: Exchange[T]) -> T:
        return drive(exchange, self._send, self.transport.sleep)

    def _policy(self, timeout: float | None = None, max_wait: float | None = None) -> RetryPolicy:
        return self.retry.bounded(timeout=timeout, max_wait=max_wait, clock=self.clock)

    # -- kick-off -------------------------------------------------------------------------------
    def kick_off(self, request: ExportRequest, *, timeout: float | None = None) -> str:
        """Start an export; returns its absolute status URL.

        A 429 (one export at a time) is waited out, but never past ``timeout`` seconds (default
        ``kickoff_timeout``; :class:`ExportTimeoutError`) and never longer in one go than ``kickoff_max_wait``
        (:class:`ExportThrottledError`, whose ``not_before`` says when to try again).
        """
        timeout = self.kickoff_timeout if timeout is None else timeout
        max_wait = self.kickoff_max_wait
        if timeout is None and max_wait is None:
            max_wait = UNBOUNDED_KICKOFF_MAX_WAIT  # no bound given: a 429 storm must not sleep hours silently
        policy = self.retry.bounded(timeout=timeout, max_wait=max_wait, clock=self.clock)
        self._check_scopes(request)
        try:
            return self._run(kickoff_exchange(request, self.fhir_base_url, self.server, policy))
        except BulkExportError as exc:
            if exc.status == 403 and (granted := self.granted_scope()) is not None:
                exc.message = f"{exc.message} The token was granted scope {granted!r}."
                exc.args = (exc.message,)
                exc.context["granted_scope"] = granted
            raise

    def _check_scopes(self, request: ExportRequest) -> None:
        """Warn before a kick-off the vendor is documented to refuse for want of scopes (Cerner: a read scope
        for every exported type), naming what is missing from the granted scope."""
        needed = self.vendor.required_scopes(request)
        granted = self.granted_scope() if needed else None
        missing = missing_scopes(granted, needed) if granted is not None else []
        if missing:
            log.warning(
                "%s is documented to need %s for this export, and the token was granted %r without them: expect a "
                "403. Add them to the connection's scope (extra 'scope') and have the server grant them.",
                self.vendor.title,
                " ".join(missing),
                granted,
            )

    # -- status ---------------------------------------------------------------------------------
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

    def _poll(self, status_url: str, *, read_manifest: bool, policy: RetryPolicy) -> StatusResult:
        return self._run(poll_exchange(status_url, self.server, policy, read_manifest=read_manifest))

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
        server = self.server
        if min_poll_interval > server.profile.min_poll_interval:  # the vendor's cadence is a floor too
            server = Server(server.origins, dataclasses.replace(server.profile, min_poll_interval=min_poll_interval))
        state = WaitState(started=self.clock())
        exchange = wait_exchange(
            status_url,
            server,
            self._policy(timeout),
            poll_interval=DEFAULT_POLL_INTERVAL if poll_interval is None else poll_interval,
            max_poll_interval=max_poll_interval,
            state=state,
            on_progress=on_progress,
        )
        try:
            result = self._run(exchange)
        except ExportTimeoutError as exc:
            why = "" if "polls" in exc.context else str(exc)  # the wait's own timeout, or a retried request's
            raise self._timeout_error(status_url, state.started, timeout, state.progress, why) from None
        assert result.manifest is not None
        return result.manifest

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

    # -- server ---------------------------------------------------------------------------------
    def capability_statement(self) -> dict[str, Any] | None:
        """The server's ``/metadata`` (CapabilityStatement), or None when it cannot be had: it only
        describes the server (software, FHIR version, operations), so nothing depends on it."""
        url = f"{self.fhir_base_url}/metadata"
        try:
            response = self.transport.request("GET", url, headers={"Accept": FHIR_JSON})
            data = response.json() if response.status_code == 200 else None
        except Exception as exc:  # any failure only means "unknown"
            log.debug("Could not read %s: %s", url, type(exc).__name__)
            return None
        return data if isinstance(data, dict) else None

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, status_url: str) -> bool:
        """DELETE the export (cancel it, or tell the server we are done with its files).

        True if the server accepted; False if it was already gone (404/410).
        """
        return self._run(cancel_exchange(status_url, self.server, self._policy()))

    # -- download -------------------------------------------------------------------------------
    def download(
        self,
        manifest: ExportManifest,
        destination: Any,
        options: DownloadOptions | None = None,
        *,
        on_file_done: Callable[[FileReport], None] | None = None,
        ledger: LandedFiles | None = None,
        on_file_start: Callable[[dict[str, Any]], None] | None = None,
        progress: TransferProgress | None = None,
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
            on_file_start=on_file_start,
            progress=progress,
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
        on_file_start: Callable[[dict[str, Any]], None] | None = None,
        progress: TransferProgress | None = None,
        lease: DestinationLease | None = None,
        **deprecated: Any,
    ) -> DownloadReport:
        """Download planned entries (from :func:`plan_files`, possibly one :func:`batch` of them).

        ``destination``: a directory path, or a pathlib-like object such as Airflow's
        ``ObjectStoragePath`` (see :mod:`~airflow_provider_smart.bulk.storage`). ``status_url``: the
        export's status URL, whose origin may receive the token. ``on_file_done`` is called (in this
        thread) with each finished file's report. ``ledger``: which export each landed file belongs to
        (a file is skipped only when it holds this export's file). ``lease``: the destination's lease,
        checked at every rename (an attempt that lost it renames nothing). ``on_file_start`` is called (in a
        download thread) with each planned entry before its first attempt; ``progress`` receives the files and
        bytes as they land (see :mod:`~airflow_provider_smart.bulk.progress`). Raises
        :class:`BulkDownloadError` listing every failed file, after trying them all.
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
            on_file_start=on_file_start,
            ledger=ledger,
            progress=progress,
            lease=lease,
        )
        return downloader.run(list(entries))

    def __repr__(self) -> str:
        return f"BulkExportClient({self.fhir_base_url!r})"
