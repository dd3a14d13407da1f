"""FHIR Bulk Data export operators: kick-off + wait + download in one task, or download on its own.

Importing this module is cheap (Airflow parses DAG files constantly): the Bulk Data client, the trigger
and ``requests`` are imported inside ``execute()``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator, conf

from airflow_provider_smart.hooks.smart import SmartHook
from airflow_provider_smart.operators._lineage_assets import emit_asset_events, openlineage_facets

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_smart.bulk import BulkExportClient, ExportManifest
    from airflow_provider_smart.export_job import ExportJob

EXPORT_LEVELS = ("system", "patient", "group")
KICKOFF_METHODS = ("auto", "GET", "POST")
ONE_WEEK = 7 * 24 * 3600.0


def log_summary(log: Any, summary: dict[str, Any]) -> None:
    """One line per resource type: files, resources and bytes landed."""
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
    log.info("Bulk export landed in %s:\n%s", summary.get("destination"), "\n".join(lines))


class _BulkDownloadMixin:
    """Download a complete export into its destination and record it (shared by both operators)."""

    log: Any
    max_concurrent_downloads: int
    check_resource_types: bool
    delete_on_success: bool

    def _land(self, client: BulkExportClient, job: ExportJob, status_url: str, manifest: ExportManifest) -> dict:
        started = time.monotonic()
        report = client.download(
            manifest,
            job.destination,
            max_concurrent_downloads=self.max_concurrent_downloads,
            check_resource_types=self.check_resource_types,
            skip_existing=True,
        )
        summary = job.record_completion(status_url, manifest, report)
        self.log.info("Downloaded in %.1f s.", time.monotonic() - started)
        log_summary(self.log, summary)
        if self.delete_on_success:
            # Epic and Cerner allow one export per client at a time: free the slot once the files are ours.
            client.cancel(status_url)
        return summary

    @staticmethod
    def _raise_for_error_issues(summary: dict[str, Any]) -> None:
        issues = summary.get("error_issues") or []
        if issues:
            listed = "; ".join(f"{i.get('severity')} {i.get('code')}: {i.get('diagnostics')}" for i in issues[:10])
            raise AirflowException(
                f"The server reported {len(issues)} error issue(s) in the export's error files "
                f"(all files were saved to {summary.get('destination')}): {listed}"
            )


class SmartBulkExportOperator(_BulkDownloadMixin, BaseOperator):
    """Kick off a FHIR Bulk Data export, wait for it, and land its files in ``destination``.

    Files go to ``<destination>/<Type>.<n>.ndjson`` (``deleted/`` and ``error/`` subfolders), followed by
    ``manifest.json``. Returns (XCom) a JSON summary: ``status_url``, ``transaction_time``, ``request``,
    ``requires_access_token``, ``destination`` and ``output``/``deleted``/``error`` lists of
    ``{"type", "url", "path", "count", "lines", "bytes"}``.

    A retried task re-attaches to the export its earlier try started (the destination remembers it) and
    skips files already downloaded and checked.

    :param smart_conn_id: the ``smart`` connection.
    :param export_level: ``"system"`` (``$export``), ``"patient"`` (``Patient/$export``) or ``"group"``.
    :param group_id: the Group id, for ``export_level="group"``.
    :param resource_types: ``_type``: resource types to export (list or comma-separated string).
    :param since: ``_since`` instant, or ``"auto"`` for the ``transactionTime`` of this task's last
        successful run (a full export the first time).
    :param until: ``_until`` instant (Bulk Data STU3).
    :param type_filters: ``_typeFilter`` queries such as ``"Observation?category=laboratory"``.
    :param elements: ``_elements``.
    :param patients: ``patient`` ids or references (forces a POST kick-off).
    :param include_associated_data: ``includeAssociatedData`` values.
    :param output_format: ``_outputFormat``.
    :param kickoff_method: ``"auto"`` (POST when ``patients`` are given, else GET), ``"GET"`` or ``"POST"``.
    :param comma_join_repeats: send list parameters as one comma-joined value (Cerner rejects repeats).
    :param lenient: ``Prefer: handling=lenient``: let the server ignore parameters it does not support.
    :param destination: a local path or any ``ObjectStoragePath`` URI (``s3://conn@bucket/x``...).
        Template it per run (``.../{{ ds }}/``): a destination holding another export is refused.
    :param wait_for_completion: False: only kick off and return ``{"status_url": ...}`` (then use
        :class:`~airflow_provider_smart.sensors.bulk_export.SmartBulkExportSensor`).
    :param deferrable: wait in the triggerer instead of holding a worker slot.
    :param poll_interval: first wait when the server sends no ``Retry-After``; then doubles.
    :param max_poll_interval: cap on any wait between polls, the server's ``Retry-After`` included.
    :param timeout: how long to wait for the export in total (Epic exports can take days).
    :param max_concurrent_downloads: parallel file downloads (polite default 4).
    :param transient_retries: retries of a status poll or a file after transient failures (429, 5xx, drops).
    :param check_resource_types: also check every line's ``resourceType`` against the manifest entry's
        type (line counts are always checked). Off by default: on a 2-core worker it costs about half the
        download throughput, because the scan holds Python's GIL (see benchmarks/).
    :param delete_on_success: DELETE the export on the server once its files are saved.
    :param cancel_on_kill: DELETE the export when the task is killed or the wait times out.
    :param scope: request this scope instead of the connection's.
    """

    template_fields: Sequence[str] = (
        "smart_conn_id",
        "group_id",
        "resource_types",
        "since",
        "until",
        "type_filters",
        "elements",
        "patients",
        "destination",
        "scope",
    )
    ui_color = "#c9e4f5"

    def __init__(
        self,
        *,
        smart_conn_id: str = SmartHook.default_conn_name,
        export_level: str = "system",
        group_id: str | None = None,
        resource_types: str | Sequence[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        type_filters: str | Sequence[str] | None = None,
        elements: str | Sequence[str] | None = None,
        patients: Sequence[str] | None = None,
        include_associated_data: str | Sequence[str] | None = None,
        output_format: str = "application/fhir+ndjson",
        kickoff_method: str = "auto",
        comma_join_repeats: bool = False,
        lenient: bool = False,
        destination: str | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        max_poll_interval: float = 600.0,
        timeout: float = ONE_WEEK,
        max_concurrent_downloads: int = 4,
        transient_retries: int = 5,
        check_resource_types: bool = False,
        delete_on_success: bool = True,
        cancel_on_kill: bool = True,
        scope: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if export_level not in EXPORT_LEVELS:
            raise ValueError(f"export_level must be one of {EXPORT_LEVELS}, not {export_level!r}.")
        if export_level == "group" and not group_id:
            raise ValueError("export_level='group' needs group_id.")
        if kickoff_method not in KICKOFF_METHODS:
            raise ValueError(f"kickoff_method must be one of {KICKOFF_METHODS}, not {kickoff_method!r}.")
        if wait_for_completion and not destination:
            raise ValueError("destination is required when wait_for_completion=True.")
        self.smart_conn_id = smart_conn_id
        self.export_level = export_level
        self.group_id = group_id
        self.resource_types = resource_types
        self.since = since
        self.until = until
        self.type_filters = type_filters
        self.elements = elements
        self.patients = patients
        self.include_associated_data = include_associated_data
        self.output_format = output_format
        self.kickoff_method = kickoff_method
        self.comma_join_repeats = comma_join_repeats
        self.lenient = lenient
        self.destination = destination
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.timeout = timeout
        self.max_concurrent_downloads = max_concurrent_downloads
        self.transient_retries = transient_retries
        self.check_resource_types = check_resource_types
        self.delete_on_success = delete_on_success
        self.cancel_on_kill = cancel_on_kill
        self.scope = scope
        self._status_url: str | None = None

    # --- building blocks --------------------------------------------------------------------------
    def _client(self) -> BulkExportClient:
        hook = SmartHook(self.smart_conn_id, scope=self.scope)
        return hook.get_bulk_client(
            max_concurrent_downloads=self.max_concurrent_downloads,
            comma_join_repeats=self.comma_join_repeats,
            transient_retries=self.transient_retries,
        )

    def _resolve_since(self, context: Context) -> str | None:
        if self.since != "auto":
            return self.since or None
        previous = context["ti"].xcom_pull(task_ids=self.task_id, key="transaction_time", include_prior_dates=True)
        if previous:
            self.log.info("since='auto': exporting changes since %s (the last successful run).", previous)
            return str(previous)
        self.log.info("since='auto': no earlier successful run, so this is a full export.")
        return None

    def _request_params(self, context: Context) -> dict[str, Any]:
        """The kick-off parameters as plain JSON (they fingerprint the export and ride through deferral)."""
        from airflow_provider_smart.bulk import ExportRequest

        request = ExportRequest(
            level=self.export_level,
            group_id=self.group_id,
            resource_types=self.resource_types or [],
            since=self._resolve_since(context),
            until=self.until or None,
            type_filters=self.type_filters or [],
            elements=self.elements or [],
            patients=list(self.patients or []),
            include_associated_data=self.include_associated_data or [],
            output_format=self.output_format,
            method=self.kickoff_method,
            lenient=self.lenient,
        )
        return request.to_dict()

    def _job(self, params: dict[str, Any]) -> ExportJob:
        from airflow_provider_smart.export_job import ExportJob

        return ExportJob(self.destination, params)

    # --- execution --------------------------------------------------------------------------------
    def _start(self, client: BulkExportClient, job: ExportJob | None, params: dict[str, Any]) -> tuple[str, Any]:
        """Re-attach to this export's earlier kick-off if it still exists, else kick off; first status."""
        from airflow_provider_smart.bulk import ExportRequest
        from airflow_provider_smart.exceptions import BulkExportError

        status_url = job.export_in_flight() if job is not None else None
        if status_url:
            self.log.info("Re-attaching to the export an earlier try started: %s", status_url)
            client.allow_origin(status_url)
            try:
                return status_url, client.poll(status_url)
            except BulkExportError as exc:
                # Gone (404/410) or failed for good: a retry is a request to try again, so start afresh.
                self.log.warning("That export cannot be resumed (%s); starting a new one.", exc)
                assert job is not None
                job.forget_kickoff()
        status_url = client.kick_off(ExportRequest(**params))
        self.log.info("Export kicked off; status URL %s", status_url)
        if job is not None:
            job.record_kickoff(status_url)
        return status_url, None

    def execute(self, context: Context) -> dict[str, Any]:
        params = self._request_params(context)
        client = self._client()
        job = self._job(params) if self.destination else None
        if job is not None and (done := job.completed_summary()) is not None:
            self.log.info("This export already landed in %s; nothing to do.", job.destination)
            self._raise_for_error_issues(done)
            return self._finish(context, done)

        status_url, first = self._start(client, job, params)
        self._status_url = status_url
        # Pushed before any wait, so a user (or a later task) can find the export even if this one dies.
        context["ti"].xcom_push(key="status_url", value=status_url)
        if not self.wait_for_completion:
            return {"status_url": status_url}
        assert job is not None

        if self.deferrable:
            result = first or client.poll(status_url)
            if not result.complete:
                from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger

                self.defer(
                    trigger=SmartBulkExportTrigger(
                        status_url=status_url,
                        smart_conn_id=self.smart_conn_id,
                        end_time=time.time() + self.timeout,
                        poll_interval=self.poll_interval,
                        max_poll_interval=self.max_poll_interval,
                        scope=self.scope,
                    ),
                    method_name="execute_complete",
                    kwargs={"params": params},
                )
            manifest = result.manifest
        else:
            deadline = time.monotonic() + self.timeout
            try:
                manifest = client.wait(
                    status_url,
                    poll_interval=self.poll_interval,
                    max_poll_interval=self.max_poll_interval,
                    timeout=self.timeout,
                    on_progress=self._log_progress(),
                )
            except Exception:
                if time.monotonic() >= deadline:
                    self._cancel_if_asked(status_url, "the wait timed out")
                raise
        return self._complete(context, client, job, status_url, manifest)

    def _log_progress(self) -> Any:
        started = time.monotonic()

        def log_progress(result: Any) -> None:
            self.log.info(
                "Export in progress (%s) after %.0f s.",
                result.progress or "no progress reported",
                time.monotonic() - started,
            )

        return log_progress

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, params: Any = None) -> dict:
        if not event:
            raise AirflowException("The bulk export trigger ended without an event.")
        status_url = event.get("status_url") or ""
        self._status_url = status_url
        if event.get("status") == "timeout":
            self._cancel_if_asked(status_url, "the wait timed out")
        if event.get("status") != "success":
            raise AirflowException(
                f"Bulk export {event.get('status')}: {event.get('message')} (status URL {status_url})"
            )
        client = self._client()
        client.allow_origin(status_url)
        manifest = client.poll(status_url).manifest
        return self._complete(context, client, self._job(params or {}), status_url, manifest)

    def _complete(
        self, context: Context, client: BulkExportClient, job: ExportJob, status_url: str, manifest: Any
    ) -> dict[str, Any]:
        summary = self._land(client, job, status_url, manifest)
        self._raise_for_error_issues(summary)
        return self._finish(context, summary)

    def _finish(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        # Pushed only on success: it is what the next run's since="auto" starts from.
        context["ti"].xcom_push(key="transaction_time", value=summary.get("transaction_time"))
        emit_asset_events(context, self.outlets, summary)
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return openlineage_facets(self, task_instance)

    def _cancel_if_asked(self, status_url: str | None, why: str) -> None:
        if not (self.cancel_on_kill and status_url):
            return
        try:
            gone = self._client().cancel(status_url)
            self.log.info("Cancelled export %s (%s)%s.", status_url, why, "" if gone else ": it was already gone")
        except Exception as exc:  # cancelling is best effort; the original failure matters more
            self.log.warning("Could not cancel export %s: %s", status_url, exc)

    def on_kill(self) -> None:
        self._cancel_if_asked(self._status_url, "the task was killed")


class SmartBulkExportDownloadOperator(_BulkDownloadMixin, BaseOperator):
    """Download a completed export: all of it, or one ``batch`` of files (for ``.expand()``).

    With ``batch`` (one item of :class:`~airflow_provider_smart.sensors.bulk_export.SmartBulkExportSensor`'s
    batch list) only those files are fetched. Without it, every file not yet in ``destination`` is
    fetched, ``manifest.json`` is written and the export is deleted on the server: run it once after the
    mapped batches to finish the export.

    :param status_url: the export's status URL (templated; e.g. the kick-off task's XCom).
    :param destination: a local path or ``ObjectStoragePath`` URI, the same for every batch.
    :param batch: ``{"status_url", "paths": [...]}``: one item of the sensor's batch list.
    """

    template_fields: Sequence[str] = ("smart_conn_id", "status_url", "destination", "batch", "scope")
    ui_color = "#c9e4f5"

    def __init__(
        self,
        *,
        destination: str,
        status_url: str | None = None,
        batch: dict[str, Any] | None = None,
        smart_conn_id: str = SmartHook.default_conn_name,
        max_concurrent_downloads: int = 4,
        check_resource_types: bool = False,
        delete_on_success: bool = True,
        scope: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (status_url or batch):
            raise ValueError("Give status_url (the whole export) or batch (one mapped batch).")
        self.destination = destination
        self.status_url = status_url
        self.batch = batch
        self.smart_conn_id = smart_conn_id
        self.max_concurrent_downloads = max_concurrent_downloads
        self.check_resource_types = check_resource_types
        self.delete_on_success = delete_on_success
        self.scope = scope

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.export_job import ExportJob, resolve_destination

        hook = SmartHook(self.smart_conn_id, scope=self.scope)
        client = hook.get_bulk_client(max_concurrent_downloads=self.max_concurrent_downloads)
        if self.batch:
            return self._download_batch(client, resolve_destination(self.destination))
        assert self.status_url
        job = ExportJob(self.destination, {"status_url": self.status_url})
        if (done := job.completed_summary()) is not None:
            self._raise_for_error_issues(done)
            emit_asset_events(context, self.outlets, done)
            return done
        result = client.poll(self.status_url)
        if result.state != "complete":
            raise AirflowException(f"Export {self.status_url} is not complete yet ({result.progress}).")
        summary = self._land(client, job, self.status_url, result.manifest)
        self._raise_for_error_issues(summary)
        emit_asset_events(context, self.outlets, summary)
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return openlineage_facets(self, task_instance)

    def _download_batch(self, client: BulkExportClient, destination: Any) -> dict[str, Any]:
        from airflow_provider_smart.bulk import plan_files

        assert self.batch is not None
        status_url = self.batch["status_url"]
        client.allow_origin(status_url)
        result = client.poll(status_url)
        if not result.complete:
            raise AirflowException(f"Export {status_url} is not complete ({result.progress}).")
        wanted = set(self.batch["paths"])
        entries = [e for e in plan_files(result.manifest) if e["path"] in wanted]
        if len(entries) != len(wanted):
            raise AirflowException(
                f"{len(wanted) - len(entries)} file(s) of this batch are no longer in the export's manifest "
                f"({status_url}); re-run the sensor to plan again."
            )
        report = client.download_batch(
            entries,
            destination,
            requires_access_token=result.manifest.requires_access_token,
            status_url=status_url,
            max_concurrent_downloads=self.max_concurrent_downloads,
            check_resource_types=self.check_resource_types,
            skip_existing=True,
        )
        totals = report.to_dict()["totals"]
        self.log.info("Batch done: %s", totals)
        return totals
