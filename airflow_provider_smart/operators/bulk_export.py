"""FHIR Bulk Data export operators: kick-off + wait + download in one task, or download on its own.

Thin adapters over :class:`~airflow_provider_smart.bulk.workflow.ExportWorkflow`. Importing this module is
cheap (Airflow parses DAG files constantly): the Bulk Data client, the trigger and ``requests`` are
imported inside ``execute()``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.compat import BaseOperator, conf
from airflow_provider_smart.hooks.secrets import scrub, scrubs_failures
from airflow_provider_smart.hooks.smart import SmartHook
from airflow_provider_smart.operators._lineage_assets import emit_asset_events, openlineage_facets

if TYPE_CHECKING:
    from airflow_provider_smart.bulk import BulkExportClient, ExportManifest, ExportWorkflow
    from airflow_provider_smart.bulk.workflow import StartedExport
    from airflow_provider_smart.compat import Context

EXPORT_LEVELS = ("system", "patient", "group")
KICKOFF_METHODS = ("auto", "GET", "POST")
ONE_WEEK = 7 * 24 * 3600.0
DEFAULT_MIN_DOWNLOAD_RATE = 4096.0  # the library's default (DownloadOptions), kept here for a cheap import
# With deferrable=True a server-requested wait longer than this (a 429 at kick-off) is spent deferred,
# not sleeping in the worker slot.
MAX_WORKER_WAIT = 60.0


class _ExportTaskMixin:
    """What both operators share: the hook, the client, and the workflow over ``destination``."""

    smart_conn_id: str
    scope: str | None
    destination: Any
    max_concurrent_downloads: int
    check_resource_types: bool
    delete_on_success: bool
    strict_counts: bool = False
    unframed_bodies: str = "refetch"
    fail_on_error_issues: bool = False
    min_download_rate: float = DEFAULT_MIN_DOWNLOAD_RATE
    transient_retries: int | None = None
    comma_join_repeats: bool | None = None
    export_log: bool = True
    _smart_export_summary: dict[str, Any] | None = None  # kept by emit_asset_events for the lineage below

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return openlineage_facets(self, task_instance)

    @cached_property
    def hook(self) -> SmartHook:
        return SmartHook(self.smart_conn_id, scope=self.scope)

    @cached_property
    def client(self) -> BulkExportClient:
        return self.hook.get_bulk_client(
            max_concurrent_downloads=self.max_concurrent_downloads,
            transient_retries=self.transient_retries,
            comma_join_repeats=self.comma_join_repeats,
        )

    def post_execute(self, context: Any, result: Any = None) -> None:
        if "hook" in self.__dict__:
            self.hook.ensure_tokens_saved()

    def workflow(self, identity: dict[str, Any], run_id: str | None = None) -> ExportWorkflow:
        from airflow_provider_smart.bulk import DownloadOptions, ExportWorkflow
        from airflow_provider_smart.operators._destination import resolve_destination

        options = DownloadOptions(
            max_concurrent_downloads=self.max_concurrent_downloads,
            check_resource_types=self.check_resource_types,
            strict_counts=self.strict_counts,
            unframed_bodies=self.unframed_bodies,
            min_download_rate=self.min_download_rate,
        )
        return ExportWorkflow(
            self.client,
            resolve_destination(self.destination),
            identity,
            options=options,
            delete_on_success=self.delete_on_success,
            run_id=run_id,
            export_log=self.export_log,
            connection=self.smart_conn_id,
            registry=self.hook.inflight_registry(),
        )

    def _check_error_issues(self, summary: dict[str, Any]) -> None:
        from airflow_provider_smart.bulk.workflow import log_error_issues, raise_for_error_issues

        if self.fail_on_error_issues:
            raise_for_error_issues(summary)
        else:
            log_error_issues(summary)


class SmartBulkExportOperator(_ExportTaskMixin, BaseOperator):
    """Kick off a FHIR Bulk Data export, wait for it, and land its files in ``destination``.

    Files go to ``<destination>/<Type>.<n>.ndjson`` (``deleted/`` and ``error/`` subfolders), followed by
    ``manifest.json``. Returns (XCom) a JSON summary: ``status_url``, ``transaction_time``, ``request``,
    ``since`` (the ``_since`` asked for), ``requires_access_token``, ``destination`` and
    ``output``/``deleted``/``error`` lists of ``{"type", "url", "path", "count", "lines", "bytes"}``.

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
    :param comma_join_repeats: None (default): list parameters in the spec's form (``_type=A,B``) or as the
        connection's vendor profile wants them; False: repeat them (``_type=A&_type=B``); True: comma-join
        ``_typeFilter`` queries too.
    :param lenient: ``Prefer: handling=lenient``: let the server ignore parameters it does not support.
    :param extra_parameters: kick-off parameters outside the spec, sent as given, e.g.
        ``{"_container": "exports"}`` for Microsoft's FHIR server.
    :param destination: a local path or any ``ObjectStoragePath`` URI (``s3://conn@bucket/x``...).
        Template it per run (``.../{{ ds }}/``): a destination holding another export is refused.
    :param wait_for_completion: False: only kick off and return ``{"status_url": ...}`` (then use
        :class:`~airflow_provider_smart.sensors.bulk_export.SmartBulkExportSensor`).
    :param deferrable: wait in the triggerer instead of holding a worker slot: the wait for the export,
        and any kick-off the server throttles for longer than a minute (429 ``Retry-After``).
    :param poll_interval: first wait when the server sends no ``Retry-After``; then doubles.
    :param max_poll_interval: cap on any wait between polls, the server's ``Retry-After`` included.
    :param timeout: how long to wait for the export in total, a throttled kick-off included (Epic
        exports can take days); no wait, the server's ``Retry-After`` included, goes past it.
    :param max_concurrent_downloads: parallel file downloads (polite default 4).
    :param transient_retries: retries of a status poll or a file after transient failures (429, 5xx, drops).
    :param check_resource_types: also check every line's ``resourceType`` against the manifest entry's
        type (line counts are always checked). Off by default: on a 2-core worker it costs about half the
        download throughput, because the scan holds Python's GIL (see benchmarks/).
    :param min_download_rate: bytes/s a file must average over every two minutes or so, else it is retried (a
        server dripping bytes just under the read timeout would hold the task for days); 0 turns it off.
    :param strict_counts: fail a file whose line count differs from the manifest's ``count`` even when a
        second download gives the same count (by default it is kept with a warning and listed in the
        summary's ``count_mismatches``: some servers' counts ignore the export's filters).
    :param unframed_bodies: a file body nothing proves complete (no Content-Length, not chunked, no
        manifest ``count`` that matches): ``"refetch"`` (default) lands it when a second copy agrees in
        length and SHA-256, ``"mark"`` lands it listed in the summary's ``unverified`` with a warning,
        ``"refetch_and_mark"`` does both, ``"fail"`` refuses it.
    :param fail_on_error_issues: fail the task (after saving every file) when the export's error files
        report fatal/error issues. By default they are logged at error level and listed in the summary
        (``error_issues``, ``error_issue_count``), and the task succeeds.
    :param delete_on_success: DELETE the export on the server once its files are saved.
    :param export_log: write ``log.ndjson`` beside the files: the standard Bulk Data export log (kick-off,
        polls, completion, each file, totals) that Cumulus ETL reads.
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
        comma_join_repeats: bool | None = None,
        lenient: bool = False,
        extra_parameters: dict[str, str] | None = None,
        destination: str | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        max_poll_interval: float = 600.0,
        timeout: float = ONE_WEEK,
        max_concurrent_downloads: int = 4,
        transient_retries: int = 5,
        check_resource_types: bool = False,
        strict_counts: bool = False,
        unframed_bodies: str = "refetch",
        min_download_rate: float = DEFAULT_MIN_DOWNLOAD_RATE,
        fail_on_error_issues: bool = False,
        delete_on_success: bool = True,
        export_log: bool = True,
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
        self.extra_parameters = dict(extra_parameters or {})
        self.destination = destination
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.timeout = timeout
        self.max_concurrent_downloads = max_concurrent_downloads
        self.transient_retries = transient_retries
        self.check_resource_types = check_resource_types
        self.strict_counts = strict_counts
        self.unframed_bodies = unframed_bodies
        self.min_download_rate = min_download_rate
        self.fail_on_error_issues = fail_on_error_issues
        self.delete_on_success = delete_on_success
        self.export_log = export_log
        self.cancel_on_kill = cancel_on_kill
        self.scope = scope
        self._status_url: str | None = None

    # --- building blocks --------------------------------------------------------------------------
    def _resolve_since(self, context: Context) -> str | None:
        if self.since != "auto":
            return self.since or None
        previous = context["ti"].xcom_pull(task_ids=self.task_id, key="transaction_time", include_prior_dates=True)
        if previous:
            self.log.info("since='auto': exporting changes since %s (the last successful run).", previous)
            return str(previous)
        self.log.info("since='auto': no earlier successful run, so this is a full export.")
        return None

    def _export_request(self, context: Context) -> dict[str, Any]:
        """The kick-off parameters as plain JSON (they identify the export and ride through deferral)."""
        from airflow_provider_smart.bulk import ExportRequest
        from airflow_provider_smart.bulk.models import as_filter_list, as_list

        request = ExportRequest(
            level=self.export_level,
            group_id=self.group_id,
            resource_types=as_list(self.resource_types),
            since=self._resolve_since(context),
            until=self.until or None,
            type_filters=as_filter_list(self.type_filters),
            elements=as_list(self.elements),
            patients=list(self.patients or []),
            include_associated_data=as_list(self.include_associated_data),
            output_format=self.output_format,
            method=self.kickoff_method,
            lenient=self.lenient,
            extra_parameters=self.extra_parameters,
        )
        return request.to_dict()

    # --- execution --------------------------------------------------------------------------------
    @scrubs_failures
    def execute(self, context: Context) -> dict[str, Any]:
        export_request = self._export_request(context)
        workflow = self.workflow(export_request, context.get("run_id")) if self.destination else None
        if workflow is not None and (done := workflow.completed_summary()) is not None:
            self.log.info("This export already landed in %s; nothing to do.", workflow.destination)
            return self._finish(context, done)
        return self._start(context, workflow, export_request, time.time() + self.timeout)

    def _start(
        self, context: Context, workflow: ExportWorkflow | None, export_request: dict[str, Any], end_time: float
    ) -> dict[str, Any]:
        """Kick off (or re-attach), then wait; ``end_time`` (epoch) bounds every wait, deferred or not."""
        from airflow_provider_smart.bulk import ExportRequest
        from airflow_provider_smart.bulk.workflow import StartedExport
        from airflow_provider_smart.exceptions import ExportThrottledError

        request = ExportRequest(**export_request)
        # A 429 at kick-off is waited out within the timeout; a long one only without deferral: with
        # it, the task defers until the server's time (ExportWorkflow.start() calls kick_off()).
        remaining = max(0.0, end_time - time.time())
        self.client.kickoff_timeout = remaining
        self.client.kickoff_max_wait = MAX_WORKER_WAIT if self.deferrable else None
        try:
            started = workflow.start(request) if workflow is not None else StartedExport(self.client.kick_off(request))
        except ExportThrottledError as exc:
            if not self.deferrable:
                raise
            self._defer_kickoff(exc, export_request, end_time)
        self._remember(context, started.status_url)
        if not self.wait_for_completion:
            return {"status_url": started.status_url}
        assert workflow is not None
        if self.deferrable:
            return self.execute_async(context, workflow, started, export_request, end_time=end_time)
        return self.execute_sync(context, workflow, started, timeout=remaining)

    def _defer_kickoff(self, exc: Exception, export_request: dict[str, Any], end_time: float) -> None:
        from airflow_provider_smart.exceptions import ExportThrottledError
        from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger

        assert isinstance(exc, ExportThrottledError)
        self.log.info("%s Deferring until then instead of holding this worker slot.", exc)
        self.defer(
            trigger=SmartBulkExportTrigger(
                status_url="",
                smart_conn_id=self.smart_conn_id,
                end_time=end_time,
                scope=self.scope,
                not_before=exc.not_before,
                kickoff_pending=True,
            ),
            method_name="execute_complete",
            kwargs={"export_request": export_request, "end_time": end_time},
        )

    def _remember(self, context: Context, status_url: str) -> None:
        self._status_url = status_url
        # Pushed before any wait, so a user (or a later task) can find the export even if this one dies.
        context["ti"].xcom_push(key="status_url", value=status_url)

    def execute_sync(
        self, context: Context, workflow: ExportWorkflow, started: StartedExport, *, timeout: float | None = None
    ) -> dict[str, Any]:
        from airflow_provider_smart.exceptions import ExportTimeoutError

        first = started.first_status
        if first is not None and first.complete:
            assert first.manifest is not None
            manifest = first.manifest
        else:
            try:
                manifest = workflow.wait(
                    started.status_url,
                    poll_interval=self.poll_interval,
                    max_poll_interval=self.max_poll_interval,
                    timeout=self.timeout if timeout is None else timeout,
                )
            except ExportTimeoutError:
                self._cancel_if_asked(started.status_url, "the wait timed out")
                raise
        return self._complete(context, workflow, started.status_url, manifest)

    def execute_async(
        self,
        context: Context,
        workflow: ExportWorkflow,
        started: StartedExport,
        export_request: dict[str, Any],
        *,
        end_time: float | None = None,
    ) -> dict[str, Any]:
        from airflow_provider_smart.exceptions import ExportThrottledError
        from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger, next_poll_time

        end_time = time.time() + self.timeout if end_time is None else end_time
        try:
            result = started.first_status or self.client.poll(started.status_url, max_wait=MAX_WORKER_WAIT)
        except ExportThrottledError as exc:  # a status 429 block: the trigger waits it out
            not_before = exc.not_before
        else:
            if result.complete:
                assert result.manifest is not None
                return self._complete(context, workflow, started.status_url, result.manifest)
            # Keep the server's pace across the deferral: the trigger's first poll honours this Retry-After.
            not_before = next_poll_time(result.retry_after, self.poll_interval, self.max_poll_interval)
        self.defer(
            trigger=SmartBulkExportTrigger(
                status_url=started.status_url,
                smart_conn_id=self.smart_conn_id,
                end_time=end_time,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                scope=self.scope,
                not_before=not_before,
                vendor=self.client.vendor.name,
            ),
            method_name="execute_complete",
            kwargs={"export_request": export_request, "end_time": end_time},
        )

    @scrubs_failures
    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        export_request: dict[str, Any] | None = None,
        end_time: float | None = None,
    ) -> dict[str, Any]:
        """Resume after the trigger: kick off again when a throttled kick-off is due, land the files on
        success, re-raise the trigger's error otherwise."""
        from airflow_provider_smart.exceptions import ExportTimeoutError
        from airflow_provider_smart.triggers.bulk_export import raise_for_event

        if (event or {}).get("status") == "kickoff_due":
            request = export_request or {}
            workflow = self.workflow(request) if self.destination else None
            return self._start(context, workflow, request, end_time or time.time() + self.timeout)

        status_url = (event or {}).get("status_url") or ""
        self._status_url = status_url
        try:
            raise_for_event(event)
        except ExportTimeoutError:
            self._cancel_if_asked(status_url, "the wait timed out")
            raise
        workflow = self.workflow(export_request or {}, context.get("run_id"))
        return self._complete(context, workflow, status_url, self.client.poll(status_url).manifest)

    def _complete(
        self, context: Context, workflow: ExportWorkflow, status_url: str, manifest: ExportManifest | None
    ) -> dict[str, Any]:
        assert manifest is not None
        return self._finish(context, workflow.land(status_url, manifest))

    def _finish(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        summary = scrub(summary)  # a token the server echoed never reaches XCom, asset extra or lineage
        self._check_error_issues(summary)
        if self.since == "auto" and not summary.get("transaction_time"):
            self.log.warning(
                "since='auto': the server's manifest has no transactionTime, so the next run cannot start from "
                "this one and will be a full export."
            )
        # Pushed only on success: it is what the next run's since="auto" starts from.
        context["ti"].xcom_push(key="transaction_time", value=summary.get("transaction_time"))
        emit_asset_events(context, self.outlets, summary)
        return summary

    def _cancel_if_asked(self, status_url: str | None, why: str) -> None:
        if not (self.cancel_on_kill and status_url):
            return
        try:
            gone = self.client.cancel(status_url)
            self.log.info("Cancelled export %s (%s)%s.", status_url, why, "" if gone else ": it was already gone")
        except Exception as exc:  # cancelling is best effort; the original failure matters more
            self.log.warning("Could not cancel export %s: %s", status_url, exc)

    def on_kill(self) -> None:
        self._cancel_if_asked(self._status_url, "the task was killed")


class SmartBulkExportDownloadOperator(_ExportTaskMixin, BaseOperator):
    """Download a completed export: all of it, or one ``batch`` of files (for ``.expand()``).

    With ``batch`` (one item of :class:`~airflow_provider_smart.sensors.bulk_export.SmartBulkExportSensor`'s
    batch list) only those files are fetched. Without it, every file not yet in ``destination`` is
    fetched, ``manifest.json`` is written and the export is deleted on the server: run it once after the
    mapped batches to finish the export.

    :param status_url: the export's status URL (templated; e.g. the kick-off task's XCom).
    :param destination: a local path or ``ObjectStoragePath`` URI, the same for every batch.
    :param batch: ``{"status_url", "keys": [...], "paths": [...]}``: one item of the sensor's batch list.
        Files are found by their URL's key, so a server that lists files in another order on each
        read still gets every file fetched once. The finishing step (no ``batch``) checks that every
        manifest file landed exactly once before it deletes the export.
    :param min_download_rate: bytes/s a file must average over every two minutes or so, else it is retried (a
        server dripping bytes just under the read timeout would hold the task for days); 0 turns it off.
    :param strict_counts: fail a file whose line count differs from the manifest's ``count`` even when a
        second download gives the same count (by default it is kept with a warning and listed in the
        summary's ``count_mismatches``: some servers' counts ignore the export's filters).
    :param unframed_bodies: a file body nothing proves complete (no Content-Length, not chunked, no
        manifest ``count`` that matches): ``"refetch"`` (default) lands it when a second copy agrees in
        length and SHA-256, ``"mark"`` lands it listed in the summary's ``unverified`` with a warning,
        ``"refetch_and_mark"`` does both, ``"fail"`` refuses it.
    :param fail_on_error_issues: fail the task (after saving every file) when the export's error files
        report fatal/error issues. By default they are logged at error level and listed in the summary
        (``error_issues``, ``error_issue_count``), and the task succeeds.
    :param export_log: the finishing step (no ``batch``) writes ``log.ndjson`` beside the files (the export
        log Cumulus ETL reads; its kick-off is taken from the manifest's ``request``). Batches never write it.
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
        strict_counts: bool = False,
        unframed_bodies: str = "refetch",
        min_download_rate: float = DEFAULT_MIN_DOWNLOAD_RATE,
        fail_on_error_issues: bool = False,
        delete_on_success: bool = True,
        export_log: bool = True,
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
        self.strict_counts = strict_counts
        self.unframed_bodies = unframed_bodies
        self.min_download_rate = min_download_rate
        self.fail_on_error_issues = fail_on_error_issues
        self.delete_on_success = delete_on_success
        self.export_log = export_log
        self.scope = scope

    @scrubs_failures
    def execute(self, context: Context) -> dict[str, Any]:
        if self.batch:
            status_url = self.batch["status_url"]
            keys = self.batch.get("keys")
            workflow = self.workflow({"status_url": status_url}, context.get("run_id"))
            report = workflow.land_batch(
                status_url, list(self.batch.get("paths") or []), list(keys) if keys is not None else None
            )
            totals = report.totals()
            self.log.info("Batch done: %s", totals)
            return totals
        assert self.status_url
        workflow = self.workflow({"status_url": self.status_url}, context.get("run_id"))
        summary = scrub(workflow.completed_summary() or workflow.land_completed(self.status_url))
        self._check_error_issues(summary)
        emit_asset_events(context, self.outlets, summary)
        return summary
