"""What the triggers of one connection share in a triggerer: settings, auth, token source and HTTP pool.

A triggerer runs up to a thousand triggers on one event loop. Each used to build its own session and
auth; now the first trigger of a connection builds, off the loop and once, what they all need, and
the others reuse it:

* the validated :class:`~airflow_provider_smart.connection.ConnectionSettings` and the connection's
  :class:`~airflow_provider_smart.auth.backend.TokenAuth` (one token per connection, minted in a
  thread by :class:`~airflow_provider_smart.bulk.aio.AsyncTokenSource`, once however many ask);
* one :class:`~airflow_provider_smart.bulk.aio.AsyncBulkTransport` (one ``aiohttp`` connection pool),
  open while at least one trigger uses it, closed when the last one ends.

Entries are keyed by event loop, connection id, scope and a digest of the connection's fields, so an
edited connection gets a new entry. A thousand triggers starting at once (a triggerer restart) read
the connection once: its fields serve the triggers that start within ``CONNECTION_TTL`` seconds.
The auth outlives its triggers (a rotated refresh token the store refused stays in memory, and is
retried, rather than going away with the trigger that minted it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_smart.auth.backend import TokenAuth
    from airflow_provider_smart.bulk.aio import AsyncBulkTransport, AsyncTokenSource
    from airflow_provider_smart.hooks.smart import ConnectionFields, SmartHook


@dataclass
class SharedConnection:
    """One connection's shared pieces on one event loop."""

    hook: SmartHook
    tokens: AsyncTokenSource
    transport: AsyncBulkTransport | None = None
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def auth(self) -> TokenAuth:
        return self.hook.auth


_ENTRIES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], SharedConnection]] = (
    weakref.WeakKeyDictionary()
)
_BUILDING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
# (connection id, scope) -> (when its fields were last read, its entry)
_RECENT: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], tuple[float, SharedConnection]]] = (
    weakref.WeakKeyDictionary()
)
CONNECTION_TTL = 60.0  # seconds a connection's fields, once read, serve the triggers that start after


def _digest(fields: ConnectionFields) -> str:
    text = json.dumps(list(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _build_entry(hook: SmartHook, fields: ConnectionFields) -> SharedConnection:
    """Blocking (validation, key loading, imports): runs in a thread."""
    from airflow_provider_smart.bulk.aio import AsyncTokenSource

    hook.settings_from_fields(fields)
    return SharedConnection(hook=hook, tokens=AsyncTokenSource(hook.auth))


def _build_transport(entry: SharedConnection) -> AsyncBulkTransport:
    """Cheap: the session opens at the first request, TLS at the first https one."""
    from airflow_provider_smart.bulk.aio import AsyncBulkTransport

    settings = entry.hook.settings
    return AsyncBulkTransport(
        origins=entry.hook.origins,
        tokens=entry.tokens,
        verify=settings.verify,
        headers=settings.headers,
        timeout=settings.timeout,
    )


async def _entry(conn_id: str, scope: str | None) -> SharedConnection:
    """The connection's entry: looked up (the async connection API) at most once per ``CONNECTION_TTL``
    seconds per connection and scope, however many triggers start at once; rebuilt when its fields changed."""
    from airflow_provider_smart.hooks.smart import SmartHook

    loop = asyncio.get_running_loop()
    recent = _RECENT.setdefault(loop, {})
    name = (conn_id, scope or "")
    seen = recent.get(name)
    if seen is not None and time.monotonic() - seen[0] < CONNECTION_TTL:
        return seen[1]
    async with _BUILDING.setdefault(loop, {}).setdefault(name, asyncio.Lock()):
        seen = recent.get(name)
        if seen is not None and time.monotonic() - seen[0] < CONNECTION_TTL:
            return seen[1]
        hook = SmartHook(conn_id, scope=scope)
        fields = await hook.aconnection_fields()
        entries = _ENTRIES.setdefault(loop, {})
        key = (*name, _digest(fields))
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = await asyncio.to_thread(_build_entry, hook, fields)
        recent[name] = (time.monotonic(), entry)
    return entry


@asynccontextmanager
async def shared_connection(conn_id: str, scope: str | None = None) -> AsyncIterator[SharedConnection]:
    """The connection's shared pieces, its transport open for the duration of the block."""
    entry = await _entry(conn_id, scope)
    async with entry.lock:
        entry.users += 1
        if entry.transport is None:
            entry.transport = _build_transport(entry)
    try:
        yield entry
    finally:
        async with entry.lock:
            entry.users -= 1
            transport = entry.transport if entry.users == 0 else None
            if transport is not None:
                entry.transport = None
        if transport is not None:
            await transport.aclose()


def shared_entries() -> dict[tuple[str, ...], Any]:
    """This event loop's entries (for tests and the benchmark)."""
    return dict(_ENTRIES.get(asyncio.get_running_loop(), {}))
