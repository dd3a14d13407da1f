"""``SmartBulkExportTrigger``: wait for a Bulk Data export in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow_provider_smart.compat import BaseTrigger, TriggerEvent

DEFAULT_MAX_POLL_INTERVAL = 600.0  # the same cap as the operator's and the client's


class SmartBulkExportTrigger(BaseTrigger):
    """Poll a Bulk Data status URL until the export completes, fails or ``end_time`` passes.

    Its serialised arguments are plain JSON and hold nothing secret: the auth is rebuilt from the
    connection id (fetched the async way) when the trigger starts, so a triggerer restart or a
    move to another triggerer just resumes polling. Polls read only the status (code, headers,
    progress), never the manifest pages: the operator reads the manifest once, after completion.

    Polls run on the event loop, no thread per poll: the Bulk Data protocol
    (:mod:`~airflow_provider_smart.bulk.protocol`, the same as the sync client's) over ``aiohttp``
    (:mod:`~airflow_provider_smart.bulk.aio`), with one connection pool, one auth and one token per
    connection shared by all its triggers (:mod:`~airflow_provider_smart.triggers.shared`). Only what
    blocks runs in a thread, once per connection: validating the connection and minting a token.
    Waits the server asks for (``Retry-After``, a 429 block) are slept on the event loop.

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
    :param vendor: the vendor profile the operator used (``bulk.vendors``; None: the spec's behaviour), so
        the polls here send its headers and keep its cadence without detecting it again.
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
        vendor: str | None = None,
    ) -> None:
        super().__init__()
        self.vendor = vendor
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
                "vendor": self.vendor,
            },
        )

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
            if self.not_before is not None and not await self._wait_until(self.not_before):
                yield TriggerEvent(timeout)
                return
            result = await self._wait(event)
        except Exception as exc:  # triggers report errors as events; the operator raises them
            from airflow_provider_smart.exceptions import SmartError

            error = exc.to_dict() if isinstance(exc, SmartError) else None
            result = {**event, "status": "error", "message": str(exc), "error": error}
        yield TriggerEvent(result)

    async def _wait(self, event: dict[str, Any]) -> dict[str, Any]:
        """Poll on the event loop (no thread per poll) until the export ends or ``end_time``; the event."""
        from airflow_provider_smart.bulk.protocol import Server, WaitState, adrive, wait_exchange
        from airflow_provider_smart.bulk.retry import RetryPolicy
        from airflow_provider_smart.bulk.vendors import bound_profile
        from airflow_provider_smart.exceptions import ExportTimeoutError, SmartError
        from airflow_provider_smart.triggers.shared import shared_connection

        async with shared_connection(self.smart_conn_id, self.scope) as shared:
            assert shared.transport is not None
            state = WaitState()
            exchange = wait_exchange(
                self.status_url,
                Server(shared.hook.origins, bound_profile(self.vendor, shared.hook.settings.client_id)),
                RetryPolicy().bounded(timeout=self.end_time - time.time()),
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                read_manifest=False,
                state=state,
                progress_log=self.log,
            )
            try:
                await adrive(exchange, shared.transport.send)
                result = {**event, "status": "success", "message": "Export complete."}
            except ExportTimeoutError as exc:
                why = "" if "polls" in exc.context else f" {exc}"
                result = {
                    **event,
                    "status": "timeout",
                    "message": f"The export did not finish before the timeout.{why}",
                }
            except SmartError as exc:  # reported after the token check below: neither may hide the other
                result = {**event, "status": "error", "message": str(exc), "error": exc.to_dict()}
            result.update(polls=state.polls, progress=state.progress)
            await self._ensure_tokens_saved(shared.auth, result)
        return result

    async def _ensure_tokens_saved(self, auth: Any, result: dict[str, Any]) -> None:
        """A rotated refresh token the store refused must not end with this trigger unsaid: retry the
        write (in a thread) and, if it still fails, report the :class:`TokenStoreError` instead of the
        export's event (the token stays in this triggerer's memory and the write is retried; the task's
        error says what to fix, and what the export was doing)."""
        from airflow_provider_smart.exceptions import TokenStoreError

        if not auth.unsaved_refresh_token:
            return
        try:
            await asyncio.to_thread(auth.ensure_saved)
        except TokenStoreError as exc:
            raise TokenStoreError(
                f"{exc.message} The export itself: {result['status']} ({result['message']}), status URL "
                f"{self.status_url}.",
                **exc.context,
            ) from None


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
