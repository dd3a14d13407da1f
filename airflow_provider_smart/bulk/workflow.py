"""One Bulk Data export landing in one destination: start or re-attach, land the files, record it.

The destination remembers the export in flight (``.smart-export.json``: status URL and a fingerprint
of what identifies the export), so a retried task, a restarted worker or triggerer re-attaches to the
export instead of starting a second one, and files already downloaded are skipped. ``manifest.json``
is written last, atomically: its presence means the export landed complete and checked. A destination
holding another export's files is refused rather than silently mixed.

Airflow-free: the operators, sensor and trigger are thin adapters over this module and the client.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from airflow_provider_smart.bulk.client import BulkExportClient
from airflow_provider_smart.bulk.export_log import ExportLog, plain_url, request_parameters
from airflow_provider_smart.bulk.inflight import InFlightRegistry, claim_slot
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
from airflow_provider_smart.bulk.requested import (
    deletion_warning,
    drop_unrequested,
    ignored_parameters,
    requested_types,
    sends_repeated_types,
    types_without_files,
)
from airflow_provider_smart.bulk.storage import (
    DestinationLease,
    LandedFiles,
    as_destination,
    attempt_id,
    read_json,
    sweep_partials,
    write_json_atomically,
)
from airflow_provider_smart.bulk.urls import origin_of, redact_url
from airflow_provider_smart.exceptions import BulkDownloadError, BulkExportError

log = logging.getLogger("airflow_provider_smart.bulk")

STATE_FILE = ".smart-export.json"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE_FIELDS = ("type", "url", "path", "count", "lines", "bytes")
MAX_LISTED_ERROR_ISSUES = 10  # in the error message
MAX_SUMMARY_ISSUES = 100
MAX_LINK_REFRESHES = 3  # manifest re-reads for fresh file links within one landing
EXPIRED_LINK_STATUSES = (401, 403, 404, 410)  # in the summary (XCom, manifest.json); the totals count them all
# A FHIR instant: date, time to the second (fractions optional) and a zone.
INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StartedExport:
    """The export a workflow is attached to. ``first_status``: the re-attach poll, if one was made."""

    status_url: str
    first_status: StatusResult | None = None
    reattached: bool = False


class ExportWorkflow:
    """The life of one export in ``destination``; see the module docstring.

    :param client: the Bulk Data client.
    :param destination: a local directory or a pathlib-like object (``ObjectStoragePath``).
    :param identity: what identifies this export (the request's parameters, or its status URL); a
        destination holding an export with another identity is refused.
    :param options: how files are downloaded and checked.
    :param delete_on_success: DELETE the export on the server once its files are saved (Epic and
        Cerner allow one export per client at a time: free the slot once the files are ours).
    :param run_id: the run that owns the destination (Airflow's run id): a destination holding another
        run's export is refused, so a daily run into a non-templated destination fails loudly instead
        of returning yesterday's files.
    :param export_log: write ``log.ndjson`` (the standard Bulk Data export log Cumulus ETL reads) beside
        the files; see :mod:`~airflow_provider_smart.bulk.export_log`.
    :param progress: counters the downloads report into (files, bytes; a progress bar reads them).
    :param connection: what identifies the credentials (Airflow's connection id): part of the export's
        identity with the FHIR server's base URL, so an export another connection or server started in
        this destination is never adopted, its summary never reused, its status URL never sent our token.
    :param registry: where this connection's exports in flight are recorded (whatever the destination):
        before a kick-off to a single-slot server (Epic, Cerner, athena) the workflow re-attaches to ours,
        or says which export holds the slot (see :mod:`~airflow_provider_smart.bulk.inflight`).
    """

    def __init__(
        self,
        client: BulkExportClient,
        destination: Any,
        identity: dict[str, Any],
        *,
        options: DownloadOptions | None = None,
        delete_on_success: bool = True,
        run_id: str | None = None,
        export_log: bool = True,
        progress: TransferProgress | None = None,
        connection: str | None = None,
        registry: InFlightRegistry | None = None,
    ) -> None:
        self.client = client
        self.registry = registry
        self.destination = as_destination(destination)
        self.identity = identity
        self.server = client.fhir_base_url
        self.connection = connection
        self.fingerprint = fingerprint({**identity, "server": self.server, "connection": connection})
        self._legacy_fingerprint = fingerprint(identity)  # records written before server and connection counted
        self.options = options or DownloadOptions()
        self.delete_on_success = delete_on_success
        self.state_path = self.destination / STATE_FILE
        self.manifest_path = self.destination / MANIFEST_FILE
        self.run_id = run_id
        self.owner = run_id or f"attempt {attempt_id()}"
        self.write_log = export_log
        self._log: ExportLog | None = None
        self.progress = progress

    @property
    def log(self) -> ExportLog | None:
        """The destination's ``log.ndjson`` (read on first use), or None when not written."""
        if self.write_log and self._log is None:
            self._log = ExportLog(self.destination)
        return self._log

    def lease(self) -> DestinationLease:
        """An exclusive lease on the destination for this attempt (``with workflow.lease().held(): ...``)."""
        return DestinationLease(self.destination, self.owner)

    def _refuse_other_run(self, recorded: dict[str, Any], what: str) -> None:
        other = recorded.get("run_id")
        if self.run_id is None or other is None or other == self.run_id:
            return
        raise BulkExportError(
            f"{self.destination} holds {what} of another run ({other}); this run is {self.run_id}. "
            "Each run needs its own destination: template it, e.g. destination='.../{{ ds }}/' or "
            "'.../{{ run_id }}/' (or empty this one if that run's files are no longer wanted).",
            destination=str(self.destination),
            run_id=other,
        )

    # -- what the destination holds ---------------------------------------------------------------
    def completed_summary(self) -> dict[str, Any] | None:
        """The summary of this same export if it already landed here; refuses another export's files."""
        manifest = read_json(self.manifest_path)
        if manifest is None:
            return None
        summary = manifest.get("summary") or {}
        self._refuse_other_run(summary, "the completed export")
        if not self._same_export(summary):
            raise BulkExportError(
                f"{self.destination} already holds a completed export with other parameters "
                f"(transactionTime {summary.get('transaction_time')}). Use a fresh destination per run, "
                "e.g. destination='.../{{ ds }}/' or '.../{{ run_id }}/', or empty this one.",
                destination=str(self.destination),
            )
        self._tidy_completed(summary)
        return summary

    def _tidy_completed(self, summary: dict[str, Any]) -> None:
        """Finish the cleanup a try that died right after writing ``manifest.json`` did not get to: its
        per-file records, a stale ``.smart-export.json``, temporary files. Beside a manifest.json only the
        files it lists remain. Best effort: the export is landed whatever happens here."""
        try:
            LandedFiles(self.destination, str(summary.get("status_url") or ""), None).clear()
            removed = sweep_partials(self.destination)
            if removed:
                log.info("Removed %d temporary file(s) left beside %s.", removed, self.manifest_path)
            self._forget_kickoff()
        except OSError:
            log.debug("Could not tidy %s", self.destination, exc_info=True)

    def export_in_flight(self) -> str | None:
        """The status URL of this export if an earlier attempt kicked it off."""
        state = read_json(self.state_path)
        if state is None:
            return None
        if not self._same_export(state):
            raise BulkExportError(
                f"{self.destination} holds files of another export in progress "
                f"({redact_url(str(state.get('status_url')))}, kicked off {state.get('kicked_off_at')}). Use a "
                f"fresh destination, or delete {STATE_FILE} and the files there if that export is abandoned.",
                destination=str(self.destination),
            )
        other = state.get("run_id")
        if self.run_id is not None and other is not None and other != self.run_id:
            # Same parameters, unfinished: a failed run re-triggered. Its export is what this run asks
            # for, so adopt it (a completed export of another run, by contrast, is refused).
            log.warning(
                "Adopting the unfinished export run %s started here with the same parameters (%s).",
                other,
                redact_url(str(state.get("status_url"))),
            )
            self._record_kickoff(str(state["status_url"]))
        return str(state["status_url"])

    def _same_export(self, recorded: dict[str, Any]) -> bool:
        """``recorded`` (``.smart-export.json`` or a summary) is this export: same parameters, server and
        connection. A record from before those counted is accepted only for a status URL on our server."""
        found = recorded.get("fingerprint")
        if found == self.fingerprint:
            return True
        legacy = "server" not in recorded and found == self._legacy_fingerprint
        status_url = recorded.get("status_url")
        return legacy and isinstance(status_url, str) and origin_of(status_url) == origin_of(self.server)

    def _trusted_record(self, status_url: str) -> bool:
        """A status URL read back from the destination (it may be a shared bucket) gets our token only if
        the connection's origin policy allows its origin; recording it there is no reason to trust it."""
        if self.client.transport.trusts(status_url):
            return True
        log.warning(
            "Not re-attaching to the export recorded in %s: its status URL %s is not on an origin this "
            "connection may send its token to (the FHIR server's, or allowed_hosts). Starting a new export.",
            self.state_path,
            redact_url(status_url),
        )
        return False

    def _record_kickoff(self, status_url: str) -> None:
        self.destination.mkdir(parents=True, exist_ok=True)
        state = {
            "status_url": status_url,
            "fingerprint": self.fingerprint,
            "kicked_off_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request": self.identity,
            "run_id": self.run_id,
            "server": self.server,
            "connection": self.connection,
        }
        write_json_atomically(self.state_path, state)

    def _forget_kickoff(self) -> None:
        if self.state_path.exists():
            self.state_path.unlink()

    # -- steps ------------------------------------------------------------------------------------
    def start(self, request: ExportRequest) -> StartedExport:
        """Re-attach to the export an earlier attempt started if it still exists, else kick off.

        The destination is leased (which also proves it writable) before anything is started on the
        server: an unwritable destination never leaves an orphan export behind.
        """
        with self.lease().held():
            return self._start(request)

    def _start(self, request: ExportRequest) -> StartedExport:
        status_url = self.export_in_flight()
        if status_url and not self._trusted_record(status_url):
            self._forget_kickoff()
            status_url = None
        if status_url:
            log.info("Re-attaching to the export an earlier try started: %s", redact_url(status_url))
            try:
                return StartedExport(status_url, self.client.poll(status_url), reattached=True)
            except BulkExportError as exc:
                # Gone (404/410) or failed for good: a retry is a request to try again, so start afresh.
                log.warning("That export cannot be resumed (%s); starting a new one.", exc)
                if self.registry is not None:
                    self.registry.remove(status_url)
                removed = LandedFiles(self.destination, "", None).sweep_other_exports()
                if removed:
                    log.warning("Removed %d file(s) the abandoned export had landed here.", removed)
                self._forget_kickoff()
        if self.registry is not None and self.client.vendor.single_slot:
            found = claim_slot(self.registry, self.client, self.fingerprint, request)
            if found is not None:
                self._record_kickoff(found[0])
                return StartedExport(found[0], found[1], reattached=True)
        status_url = self._kick_off(request)
        self._record_kickoff(status_url)
        if self.registry is not None:
            self.registry.add(
                status_url,
                fingerprint=self.fingerprint,
                level=request.level,
                group_id=request.group_id,
                destination=str(self.destination),
                run_id=self.run_id,
            )
        return StartedExport(status_url)

    def _kick_off(self, request: ExportRequest) -> str:
        """Kick off, and log it (accepted or refused) in ``log.ndjson``."""
        export_log = self.log
        if export_log is None:
            return self.client.kick_off(request)
        spec = self.client.profile.kickoff(request, self.client.fhir_base_url)  # what kick_off() sends
        url = spec.full_url
        parameters = request_parameters(spec.params, spec.body)
        try:
            status_url = self.client.kick_off(request)
        except BulkExportError as exc:
            error_body = exc.context.get("outcome") or exc.message
            capability = self.client.capability_statement()
            export_log.kickoff(url, parameters, capability, error_code=exc.context.get("status"), error_body=error_body)
            export_log.flush()
            raise
        export_log.use_export_id(status_url)
        # Read after the kick-off: the server description must not delay (or reorder) the request that matters.
        export_log.kickoff(url, parameters, self.client.capability_statement())
        export_log.flush()
        return status_url

    def wait(self, status_url: str, **options: Any) -> ExportManifest:
        """``client.wait()`` (same options), with each poll's progress and a failure in ``log.ndjson``."""
        export_log = self.log
        if export_log is None:
            return self.client.wait(status_url, **options)
        export_log.use_export_id(status_url)
        caller = options.pop("on_progress", None)

        def on_progress(result: StatusResult) -> None:
            export_log.status_progress(result.progress, result.retry_after)
            if caller is not None:
                caller(result)

        try:
            return self.client.wait(status_url, on_progress=on_progress, **options)
        except BulkExportError as exc:
            export_log.status_error(exc.message, exc.context.get("status"), exc.context.get("outcome"))
            raise
        finally:
            export_log.flush()

    def land(self, status_url: str, manifest: ExportManifest) -> dict[str, Any]:
        """Download every file not yet here, write ``manifest.json``, and delete the export if asked.

        Holds the destination's lease throughout. Before anything is deleted on the server, every file
        of the manifest must be on disk exactly once, as this export's file.
        """
        check_transaction_time(manifest)
        asked = self.identity if "resource_types" in self.identity else None  # a request, not a status URL
        manifest, unrequested = drop_unrequested(manifest, requested_types(asked))
        lease = self.lease()
        with lease.held():
            started = time.monotonic()
            swept = sweep_partials(self.destination)
            if swept:
                log.warning("Removed %d temporary file(s) a dead attempt left in %s.", swept, self.destination)
            ledger = self._ledger(status_url, manifest)
            manifest, report = self._download(status_url, manifest, ledger, requested_types(asked), lease)
            self._verify_landed(status_url, manifest, ledger)
            without_files = types_without_files(manifest, requested_types(asked))
            checks: dict[str, Any] = {
                "unrequested_types": unrequested,
                "types_without_files": without_files,
                "server_ignored": ignored_parameters(
                    asked,
                    self.client.vendor,
                    unrequested,
                    report,
                    self.destination,
                    without_files=without_files,
                    repeated_types=sends_repeated_types(asked, self.client.profile),
                ),
                "vendor": self.client.vendor.name,
            }
            if asked is not None:
                # What the tables step reads an incremental export by: the manifest's request URL
                # carries no parameters after a POST kick-off (and may be dropped by a later spec).
                checks["since"] = asked.get("since")
            if warning := deletion_warning(asked, self.client.vendor):
                log.warning(warning)
                checks["deletions_not_reported"] = True
            with lease.renaming():
                summary = self._record_completion(status_url, manifest, report, checks)
            ledger.clear()  # manifest.json now says which export every file belongs to
        log.info("Downloaded in %.1f s.", time.monotonic() - started)
        log.info("Bulk export landed in %s:\n%s", self.destination, summary_table(summary))
        if self.delete_on_success:
            self._delete_landed(status_url)
        if self.registry is not None:
            self.registry.remove(status_url)  # landed: nothing left to re-attach to
        return summary

    def _download(
        self,
        status_url: str,
        manifest: ExportManifest,
        ledger: LandedFiles,
        types: list[str],
        lease: DestinationLease,
    ) -> tuple[ExportManifest, DownloadReport]:
        """Download the manifest's files, reading the manifest again when links expire (see :meth:`_refreshing`).
        ``log.ndjson`` gets the completion, each file, a final failure and the totals."""
        export_log = self.log
        hooks = self._log_hooks(status_url, manifest) if export_log is not None else {}

        def download(current: ExportManifest) -> DownloadReport:
            return self.client.download(
                current, self.destination, self.options, ledger=ledger, lease=lease, progress=self.progress, **hooks
            )

        def reread() -> ExportManifest:
            return drop_unrequested(self._completed_manifest(status_url), types)[0]

        try:
            manifest, report = self._refreshing(manifest, download, reread)
        except BulkDownloadError as exc:
            if export_log is not None:
                for failure in exc.context.get("failures") or []:
                    export_log.download_error(str(failure.get("url")), str(failure.get("error")))
                export_log.flush()
            raise
        if export_log is not None:
            export_log.export_complete(len(report.files), report.lines, report.bytes)
            export_log.flush()
        return manifest, report

    def _log_hooks(self, status_url: str, manifest: ExportManifest) -> dict[str, Any]:
        """Log the completion (and a kick-off made elsewhere) now; the download callbacks that log each file."""
        export_log = self.log
        assert export_log is not None
        export_log.use_export_id(status_url)
        if not export_log.has_event("kickoff") and manifest.request:
            # Kicked off elsewhere (a kick-off-only task, another tool): the manifest's request says how.
            pairs = parse_qsl(urlsplit(manifest.request).query)
            export_log.kickoff(manifest.request, request_parameters(pairs, None), None)
        if not export_log.has_event("status_complete"):
            export_log.status_complete(manifest)
        logged = export_log.logged_files()

        def started(entry: dict[str, Any]) -> None:
            export_log.download_request(entry)

        def done(report: FileReport) -> None:
            if not (report.skipped and plain_url(report.url) in logged):
                export_log.download_complete(report.url, report.lines, report.bytes)

        return {"on_file_start": started, "on_file_done": done}

    @staticmethod
    def _refreshing(
        manifest: ExportManifest,
        download: Callable[[ExportManifest], DownloadReport],
        reread: Callable[[], ExportManifest],
    ) -> tuple[ExportManifest, DownloadReport]:
        """``download(manifest)``; when links expire (401/403/404/410 on a file), ``reread()`` the manifest for
        fresh links and carry on: files already landed are kept (a file's identity ignores its URL's
        signature), the rest are fetched from the new links."""
        for refresh in range(MAX_LINK_REFRESHES + 1):
            try:
                return manifest, download(manifest)
            except BulkDownloadError as exc:
                failures = exc.context.get("failures") or []
                expired = [f for f in failures if f.get("status") in EXPIRED_LINK_STATUSES]
                if not expired or refresh == MAX_LINK_REFRESHES:
                    raise
                log.warning(
                    "%d file link(s) were refused (HTTP %s): they may have expired. Reading the export's manifest "
                    "again for fresh links (%d of %d).",
                    len(expired),
                    ", ".join(sorted({str(f["status"]) for f in expired})),
                    refresh + 1,
                    MAX_LINK_REFRESHES,
                )
                manifest = reread()
        raise AssertionError("unreachable")

    def _ledger(self, status_url: str, manifest: ExportManifest) -> LandedFiles:
        ledger = LandedFiles(self.destination, status_url, manifest.transaction_time)
        removed = ledger.sweep_other_exports()
        if removed:
            log.warning("Removed %d file(s) another (abandoned) export had landed in %s.", removed, self.destination)
        return ledger

    def _verify_landed(self, status_url: str, manifest: ExportManifest, ledger: LandedFiles) -> None:
        """Every manifest file is on disk exactly once, as this export's file; else nothing is deleted."""
        planned = plan_files(manifest)
        missing = [e["path"] for e in planned if ledger.owns(e["path"], e["url"]) is None]
        if missing:
            listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise BulkExportError(
                f"{len(missing)} of {len(planned)} file(s) of export {redact_url(status_url)} are not in "
                f"{self.destination} as this export's files: {listed}. The export was not deleted on the "
                "server; retry the task to fetch them.",
                status_url=status_url,
                destination=str(self.destination),
            )

    def _delete_landed(self, status_url: str) -> None:
        """DELETE the export once its files are ours; the data is safe, so a refusal is only a warning."""
        try:
            if not self.client.cancel(status_url):
                # HAPI reaps finished jobs by itself: a 404 there is expected, elsewhere worth a look.
                say = log.info if self.client.vendor.delete_may_404 else log.warning
                say("The export %s was already gone when deleting it after landing.", redact_url(status_url))
        except BulkExportError as exc:
            log.warning(
                "Every file landed, but deleting the export on the server failed (%s). The data is safe; the "
                "server will expire the export (set delete_on_success=False if it does not allow DELETE).",
                exc,
            )

    def land_completed(self, status_url: str) -> dict[str, Any]:
        """Land an export that must already be complete on the server (no waiting)."""
        return self.land(status_url, self._completed_manifest(status_url))

    def land_batch(self, status_url: str, paths: list[str], keys: list[str] | None = None) -> DownloadReport:
        """Download one batch of a complete export: the files whose URL ``keys`` it lists (older batches
        without keys name planned ``paths``). Files are found by key whatever order this read of the
        manifest lists them in; several batches may run at once (no lease: they write disjoint files).
        Expired links are renewed from the manifest, as :meth:`land` does."""
        manifest = self._completed_manifest(status_url)
        ledger = LandedFiles(self.destination, status_url, manifest.transaction_time)

        def download(current: ExportManifest) -> DownloadReport:
            return self.client.download_batch(
                self._batch_entries(status_url, current, paths, keys),
                self.destination,
                self.options,
                requires_access_token=current.requires_access_token,
                status_url=status_url,
                ledger=ledger,
            )

        return self._refreshing(manifest, download, lambda: self._completed_manifest(status_url))[1]

    @staticmethod
    def _batch_entries(
        status_url: str, manifest: ExportManifest, paths: list[str], keys: list[str] | None
    ) -> list[dict[str, Any]]:
        planned = plan_files(manifest)
        if keys is not None:
            wanted, field = set(keys), "key"
        else:
            wanted, field = set(paths), "path"
        entries = [e for e in planned if e[field] in wanted]
        if len(entries) != len(wanted):
            raise BulkExportError(
                f"{len(wanted) - len(entries)} file(s) of this batch are no longer in the export's manifest "
                f"({redact_url(status_url)}); re-run the sensor to plan again.",
                status_url=status_url,
            )
        if keys is not None and paths and sorted(e["path"] for e in entries) != sorted(paths):
            raise BulkExportError(
                f"The export's manifest ({redact_url(status_url)}) no longer gives this batch's files the names "
                "the sensor planned; re-run the sensor to plan again.",
                status_url=status_url,
            )
        return entries

    def _completed_manifest(self, status_url: str) -> ExportManifest:
        result = self.client.poll(status_url)
        if result.manifest is None:
            raise BulkExportError(
                f"Export {redact_url(status_url)} is not complete yet ({result.progress or 'no progress reported'}).",
                status_url=status_url,
            )
        return result.manifest

    def _record_completion(
        self,
        status_url: str,
        manifest: ExportManifest,
        report: DownloadReport,
        checks: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write ``manifest.json`` (the server's manifest plus our summary) and return the summary.

        ``checks``: what was asked against what came (``unrequested_types``, ``server_ignored``...).
        """
        files = [f.to_dict() for f in report.files]
        summary = {
            "status_url": status_url,
            "transaction_time": manifest.transaction_time,
            "request": manifest.request,
            "requires_access_token": manifest.requires_access_token,
            "destination": str(self.destination),
            "fingerprint": self.fingerprint,
            "run_id": self.run_id,
            "server": self.server,
            "output": [_summary_entry(f) for f in files if f["kind"] == "output"],
            "deleted": [_summary_entry(f) for f in files if f["kind"] == "deleted"],
            "error": [_summary_entry(f) for f in files if f["kind"] == "error"],
            # fatal/error OperationOutcome issues from the error files (capped, diagnostics truncated)
            "error_issues": list(report.error_issues[:MAX_SUMMARY_ISSUES]),
            "error_issue_count": report.error_issue_count,
            "warning_count": report.warning_count,
            # files kept although their line count is not the manifest's (two complete copies agreed)
            "count_mismatches": [
                {**m, "path": _relative(m["path"], self.destination)} for m in report.count_mismatches
            ],
            # files nothing proved complete, landed under unframed_bodies="mark" (or "refetch_and_mark")
            "unverified": [{**u, "path": _relative(u["path"], self.destination)} for u in report.unverified],
            **(checks or {}),
        }
        write_json_atomically(self.manifest_path, {"manifest": manifest.raw, "summary": summary})
        self._forget_kickoff()
        return summary


def check_transaction_time(manifest: ExportManifest) -> None:
    """``transactionTime`` must be a FHIR instant: it is what the next ``since="auto"`` run starts from."""
    value = manifest.transaction_time
    if value is None:
        log.warning(
            "The export's manifest has no transactionTime: runs using since='auto' after this one cannot "
            "start from it and will export everything again."
        )
        return
    if not isinstance(value, str) or not INSTANT.fullmatch(value.strip()):
        raise BulkExportError(
            f"The export's manifest has transactionTime {str(value)[:80]!r}, which is not a FHIR instant "
            "(e.g. 2024-05-01T00:00:00Z). It would break every later since='auto' run, so the export is "
            "not landed; the server is not Bulk Data conformant (report it), or pass since explicitly.",
            url=manifest.status_url,
        )


def _summary_entry(f: dict[str, Any]) -> dict[str, Any]:
    entry = {k: f.get(k) for k in SUMMARY_FILE_FIELDS}
    # The summary goes to XCom: a pre-signed URL's query is a credential (manifest.json keeps it whole).
    entry["url"] = redact_url(entry["url"]) if entry["url"] else None
    return entry


def _relative(path: str, destination: Any) -> str:
    root = str(destination).rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else path


def _issue_listing(summary: dict[str, Any]) -> tuple[int, str]:
    found = summary.get("error_issues") or []
    total = int(summary.get("error_issue_count") or len(found))
    listed = "; ".join(
        f"{i.get('severity')} {i.get('code')}: {i.get('diagnostics')}" for i in found[:MAX_LISTED_ERROR_ISSUES]
    )
    if total > MAX_LISTED_ERROR_ISSUES:
        listed += f"; ... {total - MAX_LISTED_ERROR_ISSUES} more (see the summary's error_issues and error/)"
    return total, listed


def raise_for_error_issues(summary: dict[str, Any]) -> None:
    """Fail when the export's error files reported fatal/error issues (after every file was saved).

    Used when the operator's ``fail_on_error_issues=True``; by default they are only logged
    (:func:`log_error_issues`): one resource the server could not export must not block a pipeline.
    """
    total, listed = _issue_listing(summary)
    if total:
        raise BulkExportError(
            f"The server reported {total} error issue(s) in the export's error files "
            f"(all files were saved to {summary.get('destination')}; fail_on_error_issues=True makes this "
            f"fail, False only logs them): {listed}",
            destination=summary.get("destination"),
        )


def log_error_issues(summary: dict[str, Any]) -> None:
    """Log the error files' fatal/error issues at error level without failing (the default)."""
    total, listed = _issue_listing(summary)
    if total:
        log.error(
            "The server reported %d error issue(s) in the export's error files; the export landed anyway "
            "(set fail_on_error_issues=True to fail the task on them): %s",
            total,
            listed,
        )


def summary_table(summary: dict[str, Any]) -> str:
    """One line per kind and resource type: files, resources and MB landed."""
    totals: dict[tuple[str, str], list[int]] = {}
    for kind in ("output", "deleted", "error"):
        for entry in summary.get(kind) or []:
            row = totals.setdefault((kind, entry.get("type") or "?"), [0, 0, 0])
            row[0] += 1
            row[1] += entry.get("lines") or 0
            row[2] += entry.get("bytes") or 0
    lines = [f"{'kind':<8} {'type':<24} {'files':>6} {'resources':>10} {'MB':>10}"]
    for (kind, rtype), (files, resources, size) in sorted(totals.items()):
        lines.append(f"{kind:<8} {rtype:<24} {files:>6} {resources:>10} {size / 1e6:>10.2f}")
    return "\n".join(lines)
