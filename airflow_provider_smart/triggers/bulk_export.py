"""``SmartBulkExportTrigger``: wait for a Bulk Data export in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_provider_smart.bulk import BulkExportClient

DEFAULT_MAX_POLL_INTERVAL = 600.0  # the same cap as the operator's and the client's


class SmartBulkExportTrigger(BaseTrigger):
    """Poll a Bulk Data status URL until the export completes, fails or ``end_time`` passes.

    Its serialised arguments are plain JSON and hold nothing secret: the auth is rebuilt from the
    connection id (fetched the async way) every time the trigger starts, so a triggerer restart or a
    move to another triggerer just resumes polling. Polls read only the status (code, headers,
    progress), never the manifest pages: the operator reads the manifest once, after completion.
    Everything blocking (building the session, importing ``requests``, each HTTP call) runs in a
    thread, so the triggerer's event loop, shared with other DAGs, never waits on it.

    Yields exactly one event: ``{"status": "success" | "error" | "timeout", "status_url", "message",
    "progress", "polls"}``, plus ``"error"`` (the error's ``to_dict()``) on errors, which
    :func:`raise_for_event` turns back into the same kind of exception.

    :param status_url: the export's status URL (``Content-Location`` of the kick-off).
    :param smart_conn_id: the ``smart`` connection.
    :param end_time: epoch seconds after which the wait gives up with a ``timeout`` event.
    :param poll_interval: first wait when the server sends no ``Retry-After``; doubles up to ``max_poll_interval``.
    :param max_poll_interval: cap on any wait, including a server's ``Retry-After``.
    :param scope: the scope the operator asked for (tokens are scoped per request).
    """

    def __init__(
        self,
        *,
        status_url: str,
        smart_conn_id: str,
        end_time: float,
        poll_interval: float = 30.0,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        scope: str | None = None,
    ) -> None:
        super().__init__()
        self.status_url = status_url
        self.smart_conn_id = smart_conn_id
        self.end_time = end_time
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.scope = scope

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "status_url": self.status_url,
                "smart_conn_id": self.smart_conn_id,
                "end_time": self.end_time,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
                "scope": self.scope,
            },
        )

    async def _client(self) -> BulkExportClient:
        from airflow_provider_smart.hooks.smart import SmartHook

        hook = SmartHook(self.smart_conn_id, scope=self.scope)
        await hook.aresolve_settings()
        # requests, PyJWT and cryptography are imported and the session built here: off the event loop.
        return await asyncio.to_thread(hook.get_bulk_client)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        event: dict[str, Any] = {"status_url": self.status_url, "polls": 0, "progress": None}
        try:
            client = await self._client()
            from airflow_provider_smart.bulk.retry import next_poll_delay

            started = time.monotonic()
            while True:
                result = await asyncio.to_thread(client.status, self.status_url)
                event["polls"] += 1
                if result.complete:
                    yield TriggerEvent({**event, "status": "success", "message": "Export complete."})
                    return
                event["progress"] = result.progress
                self.log.info(
                    "Export %s in progress (%s) after %.0f s.",
                    self.status_url,
                    result.progress or "no progress reported",
                    time.monotonic() - started,
                )
                remaining = self.end_time - time.time()
                if remaining <= 0:
                    message = "The export did not finish before the timeout."
                    yield TriggerEvent({**event, "status": "timeout", "message": message})
                    return
                delay = next_poll_delay(result.retry_after, event["polls"], self.poll_interval, self.max_poll_interval)
                await asyncio.sleep(min(delay, remaining))
        except Exception as exc:  # triggers report errors as events; the operator raises them
            from airflow_provider_smart.exceptions import SmartError

            error = exc.to_dict() if isinstance(exc, SmartError) else None
            yield TriggerEvent({**event, "status": "error", "message": str(exc), "error": error})


def raise_for_event(event: dict[str, Any] | None) -> None:
    """Raise what a trigger event reports, if it is not a success: the trigger's own error kind, an
    :class:`~airflow_provider_smart.exceptions.ExportTimeoutError` on timeout."""
    from airflow_provider_smart.exceptions import BulkExportError, ExportTimeoutError, error_from_dict

    if not event:
        raise BulkExportError("The bulk export trigger ended without an event.")
    status, status_url = event.get("status"), event.get("status_url")
    if status == "success":
        return
    if status == "timeout":
        raise ExportTimeoutError(
            f"The export at {status_url} did not finish before the timeout (last progress: "
            f"{event.get('progress') or 'none'}). It keeps running on the server unless cancelled.",
            status_url=status_url,
            progress=event.get("progress"),
        )
    if isinstance(event.get("error"), dict):
        raise error_from_dict(event["error"])
    raise BulkExportError(
        f"Bulk export {status}: {event.get('message')} (status URL {status_url})", status_url=status_url
    )
