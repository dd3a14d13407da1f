"""``SmartBulkExportTrigger``: wait for a Bulk Data export in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.compat import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_provider_smart.bulk import BulkExportClient

DEFAULT_MAX_POLL_INTERVAL = 600.0  # the same cap as the operator's and the client's
IN_THREAD_WAIT = 5.0  # longest retry pause a status call may sleep in its thread; longer ones are slept here


class SmartBulkExportTrigger(BaseTrigger):
    """Poll a Bulk Data status URL until the export completes, fails or ``end_time`` passes.

    Its serialised arguments are plain JSON and hold nothing secret: the auth is rebuilt from the
    connection id (fetched the async way) every time the trigger starts, so a triggerer restart or a
    move to another triggerer just resumes polling. Polls read only the status (code, headers,
    progress), never the manifest pages: the operator reads the manifest once, after completion.
    Everything blocking (building the session, importing ``requests``, each HTTP call) runs in a
    thread, so the triggerer's event loop, shared with other DAGs, never waits on it; waits the
    server asks for (``Retry-After``, a 429 block) are slept on the event loop, never in that thread.

    Pacing: no poll before ``not_before`` (the time the last poll before deferring, or a 429, allowed);
    nothing runs past ``end_time``. When the server's next allowed poll lies after ``end_time`` the
    trigger waits until ``end_time`` and reports ``timeout`` without polling early; when only our
    own backoff does, it polls one last time at ``end_time``.

    Yields exactly one event: ``{"status": "success" | "error" | "timeout" | "kickoff_due",
    "status_url", "message", "progress", "polls"}``, plus ``"error"`` (the error's ``to_dict()``)
    on errors, which :func:`raise_for_event` turns back into the same kind of exception.

    :param status_url: the export's status URL (``Content-Location`` of the kick-off); empty while
        ``kickoff_pending``.
    :param smart_conn_id: the ``smart`` connection.
    :param end_time: epoch seconds after which the wait gives up with a ``timeout`` event.
    :param poll_interval: first wait when the server sends no ``Retry-After``; doubles up to ``max_poll_interval``.
    :param max_poll_interval: cap on any wait between polls, including a 202's ``Retry-After`` (a 429's
        block is honoured up to the retry policy's ``max_retry_after``).
    :param scope: the scope the operator asked for (tokens are scoped per request).
    :param not_before: epoch seconds before which the server does not want the next request.
    :param kickoff_pending: the server throttled the kick-off: just wait until ``not_before`` and
        yield ``kickoff_due`` (the operator then kicks off again), or ``timeout`` if ``end_time`` is first.
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
        not_before: float | None = None,
        kickoff_pending: bool = False,
    ) -> None:
        super().__init__()
        self.status_url = status_url
        self.smart_conn_id = smart_conn_id
        self.end_time = end_time
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.scope = scope
        self.not_before = not_before
        self.kickoff_pending = kickoff_pending

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
                "not_before": self.not_before,
                "kickoff_pending": self.kickoff_pending,
            },
        )

    async def _client(self) -> BulkExportClient:
        from airflow_provider_smart.hooks.smart import SmartHook

        hook = SmartHook(self.smart_conn_id, scope=self.scope)
        await hook.aresolve_settings()
        # requests, PyJWT and cryptography are imported and the session built here: off the event loop.
        return await asyncio.to_thread(hook.get_bulk_client)

    async def _wait_until(self, when: float) -> bool:
        """Sleep until ``when`` (epoch), but not past ``end_time``; False if ``end_time`` came first."""
        if when > self.end_time:
            await asyncio.sleep(max(0.0, self.end_time - time.time()))
            return False
        await asyncio.sleep(max(0.0, when - time.time()))
        return True

    async def run(self) -> AsyncIterator[TriggerEvent]:
        event: dict[str, Any] = {"status_url": self.status_url, "polls": 0, "progress": None}
        timeout = {**event, "status": "timeout", "message": "The export did not finish before the timeout."}
        if self.kickoff_pending:
            if await self._wait_until(self.not_before or 0.0):
                yield TriggerEvent({**event, "status": "kickoff_due", "message": "The server allows a kick-off now."})
            else:
                yield TriggerEvent({**timeout, "message": "The server did not accept a kick-off before the timeout."})
            return
        try:
            from airflow_provider_smart.bulk.retry import next_poll_delay
            from airflow_provider_smart.exceptions import ExportThrottledError, ExportTimeoutError

            if self.not_before is not None and not await self._wait_until(self.not_before):
                yield TriggerEvent(timeout)
                return
            client = await self._client()
            started = time.monotonic()
            while True:
                try:
                    result = await asyncio.to_thread(
                        client.status,
                        self.status_url,
                        timeout=max(0.0, self.end_time - time.time()),
                        max_wait=IN_THREAD_WAIT,
                    )
                except ExportThrottledError as exc:  # e.g. a 429 with a 5-minute block: wait here, not in a thread
                    self.log.info("Export %s: %s Waiting until then.", self.status_url, exc)
                    if not await self._wait_until(exc.not_before):
                        yield TriggerEvent({**timeout, "message": f"{timeout['message']} {exc}"})
                        return
                    continue
                except ExportTimeoutError as exc:
                    yield TriggerEvent({**timeout, "message": f"{timeout['message']} {exc}"})
                    return
                event["polls"] += 1
                if result.complete:
                    yield TriggerEvent({**event, "status": "success", "message": "Export complete."})
                    return
                event["progress"] = result.progress
                timeout["progress"], timeout["polls"] = result.progress, event["polls"]
                self.log.info(
                    "Export %s in progress (%s) after %.0f s.",
                    self.status_url,
                    result.progress or "no progress reported",
                    time.monotonic() - started,
                )
                delay = next_poll_delay(result.retry_after, event["polls"], self.poll_interval, self.max_poll_interval)
                remaining = self.end_time - time.time()
                if remaining <= 0:
                    yield TriggerEvent(timeout)
                    return
                if delay > remaining and result.retry_after is not None:
                    await asyncio.sleep(remaining)  # the server wants us back after the timeout: no early poll
                    yield TriggerEvent(timeout)
                    return
                await asyncio.sleep(min(delay, remaining))
        except Exception as exc:  # triggers report errors as events; the operator raises them
            from airflow_provider_smart.exceptions import SmartError

            error = exc.to_dict() if isinstance(exc, SmartError) else None
            yield TriggerEvent({**event, "status": "error", "message": str(exc), "error": error})


def next_poll_time(retry_after: float | None, poll_interval: float, max_poll_interval: float) -> float:
    """Epoch time of the first poll after deferring: the last poll's ``Retry-After`` (capped), else
    ``poll_interval`` from now; what the operator and the sensor hand the trigger as ``not_before``."""
    from airflow_provider_smart.bulk.retry import next_poll_delay

    return time.time() + next_poll_delay(retry_after, 1, poll_interval, max_poll_interval)


def raise_for_event(event: dict[str, Any] | None) -> None:
    """Raise what a trigger event reports, if it is not a success: the trigger's own error kind, an
    :class:`~airflow_provider_smart.exceptions.ExportTimeoutError` on timeout."""
    from airflow_provider_smart.exceptions import BulkExportError, ExportTimeoutError, error_from_dict

    if not event:
        raise BulkExportError("The bulk export trigger ended without an event.")
    status, status_url = event.get("status"), event.get("status_url")
    if status in ("success", "kickoff_due"):
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
