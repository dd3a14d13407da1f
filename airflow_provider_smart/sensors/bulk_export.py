"""``SmartBulkExportSensor``: wait for a Bulk Data export kicked off by another task."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.compat import BaseSensorOperator, PokeReturnValue, conf
from airflow_provider_smart.hooks.secrets import scrubs_failures
from airflow_provider_smart.hooks.smart import SmartHook

if TYPE_CHECKING:
    from airflow_provider_smart.bulk import BulkExportClient, ExportManifest
    from airflow_provider_smart.compat import Context


class SmartBulkExportSensor(BaseSensorOperator):
    """Wait until the export at ``status_url`` is complete; return its files, planned in batches.

    The return value (XCom) is a list of batches ``{"status_url", "keys", "paths", "count"}`` (``keys``
    name file URLs by hash: URLs never travel through XCom)
    ready for ``SmartBulkExportDownloadOperator.partial(...).expand(batch=sensor.output)``. Files are
    grouped so the list never exceeds ``max_batches`` (Airflow caps a mapped list at
    ``[core] max_map_length``, 1,024 by default, while Cerner-style exports hold 20,000+ small files).

    :param status_url: the status URL (templated; e.g. ``"{{ ti.xcom_pull('kickoff', key='status_url') }}"``).
    :param max_batches: at most this many batches (and so mapped download tasks).
    :param deferrable: wait in the triggerer instead of poking from a worker.
    :param max_poll_interval: cap on the wait between polls in deferrable mode (Retry-After included).
    """

    template_fields: Sequence[str] = ("status_url", "smart_conn_id", "scope")
    ui_color = "#c9e4f5"

    def __init__(
        self,
        *,
        status_url: str,
        smart_conn_id: str = SmartHook.default_conn_name,
        max_batches: int = 32,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_poll_interval: float = 600.0,
        scope: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.status_url = status_url
        self.smart_conn_id = smart_conn_id
        self.max_batches = max_batches
        self.deferrable = deferrable
        self.max_poll_interval = max_poll_interval
        self.scope = scope
        self._last_retry_after: float | None = None

    @cached_property
    def hook(self) -> SmartHook:
        return SmartHook(self.smart_conn_id, scope=self.scope)

    def post_execute(self, context: Any, result: Any = None) -> None:
        if "hook" in self.__dict__:
            self.hook.ensure_tokens_saved()

    @cached_property
    def client(self) -> BulkExportClient:
        """Built once and reused by every poke of this task attempt (one session, one cached token)."""
        return self.hook.get_bulk_client()

    def _batches(self, manifest: ExportManifest | None) -> list[dict[str, Any]]:
        from airflow_provider_smart.bulk import plan_batches

        assert manifest is not None
        return plan_batches(manifest, self.status_url, self.max_batches)

    def poke(self, context: Context) -> PokeReturnValue:
        result = self.client.poll(self.status_url)
        self._last_retry_after = result.retry_after
        if result.complete:
            return PokeReturnValue(is_done=True, xcom_value=self._batches(result.manifest))
        self.log.info("Export %s in progress: %s", self.status_url, result.progress or "no progress reported")
        return PokeReturnValue(is_done=False)

    @scrubs_failures
    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        end_time = time.time() + float(self.timeout)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger, next_poll_time

        poll_interval = float(self.poke_interval)
        self.defer(
            trigger=SmartBulkExportTrigger(
                status_url=self.status_url,
                smart_conn_id=self.smart_conn_id,
                end_time=end_time,
                poll_interval=poll_interval,
                max_poll_interval=self.max_poll_interval,
                scope=self.scope,
                # the trigger's first poll keeps the pace the server set on this one
                not_before=next_poll_time(self._last_retry_after, poll_interval, self.max_poll_interval),
                vendor=self.client.vendor.name,
            ),
            method_name="execute_complete",
        )

    @scrubs_failures
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Resume after the trigger: plan the batches on success, re-raise the trigger's error otherwise."""
        from airflow_provider_smart.triggers.bulk_export import raise_for_event

        raise_for_event(event)
        return self._batches(self.client.poll(self.status_url).manifest)
