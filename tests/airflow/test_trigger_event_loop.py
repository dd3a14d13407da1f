"""Issue 18: many triggers poll on one event loop with no thread per poll, one pool and one token per
connection, and the sync client's rules (origins on every redirect hop, one renewal after a 401,
deadlines, Retry-After caps). Status URLs live on hostile loopback servers; tokens come from the sandbox.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

from airflow_provider_smart.triggers.bulk_export import SmartBulkExportTrigger, raise_for_event


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor (what ``asyncio.to_thread`` uses), counting what it is given."""

    def __init__(self) -> None:
        super().__init__(max_workers=6)
        self.submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(*args, **kwargs)


def run_triggers(*triggers: SmartBulkExportTrigger, executor: Any = None) -> list[dict[str, Any]]:
    async def one(trigger: SmartBulkExportTrigger) -> dict[str, Any]:
        [event] = [event.payload async for event in trigger.run()]
        return event

    async def main() -> list[dict[str, Any]]:
        if executor is not None:
            asyncio.get_running_loop().set_default_executor(executor)
        return list(await asyncio.gather(*(one(t) for t in triggers)))

    return asyncio.run(main())


def trigger(status_url: str, timeout: float, **kwargs: Any) -> SmartBulkExportTrigger:
    return SmartBulkExportTrigger(
        status_url=status_url, smart_conn_id="smart_default", end_time=time.time() + timeout, **kwargs
    )


def test_forty_triggers_poll_on_the_loop_with_three_thread_calls_and_one_token(
    smart_conn: Any, sandbox: Any, hostile_server: Any
) -> None:
    def app(h: Any) -> None:
        polls = sum(1 for _, _, path in server.hits if path == h.path)
        if polls < 3:
            h.reply(202, b"", {"Retry-After": "1"})
        else:
            h.reply(200, {"transactionTime": "x", "request": "x", "output": []})

    server = hostile_server(app)
    executor = CountingExecutor()
    before = sandbox.token_requests
    events = run_triggers(*(trigger(f"{server.url}/status/{i}", 30) for i in range(40)), executor=executor)
    executor.shutdown()
    assert [e["status"] for e in events] == ["success"] * 40 and {e["polls"] for e in events} == {3}
    assert len(server.hits) == 120
    # Validating the connection, opening the pool, minting the token: once each for all 40 triggers.
    # The old trigger ran every poll in a thread (120 here) and built a session per trigger.
    assert executor.submitted <= 3, executor.submitted
    assert sandbox.token_requests - before == 1


def test_a_401_renews_the_token_once_and_replays(smart_conn: Any, sandbox: Any, hostile_server: Any) -> None:
    seen: list[str] = []

    def app(h: Any) -> None:
        seen.append(h.headers.get("Authorization", ""))
        if len(seen) == 1:
            h.reply(401, "expired")
        else:
            h.reply(200, {"transactionTime": "x", "request": "x", "output": []})

    server = hostile_server(app)
    before = sandbox.token_requests
    [event] = run_triggers(trigger(f"{server.url}/status/1", 30))
    assert event["status"] == "success"
    assert len(seen) == 2 and seen[0] != seen[1] and all(s.startswith("Bearer ") for s in seen)
    assert sandbox.token_requests - before == 2


def test_a_401_after_renewal_is_the_sync_clients_typed_error(smart_conn: Any, hostile_server: Any) -> None:
    from airflow_provider_smart.exceptions import BulkExportError

    server = hostile_server(lambda h: h.reply(401, "no"))
    [event] = run_triggers(trigger(f"{server.url}/status/1", 30))
    assert len(server.hits) == 2  # one replay, never a loop
    try:
        raise_for_event(event)
    except BulkExportError as exc:
        assert exc.status == 401 and "access was refused" in str(exc)
    else:
        raise AssertionError("no error raised")


def test_a_redirect_to_another_origin_gets_no_token(smart_conn: Any, hostile_server: Any) -> None:
    elsewhere_auth: list[str | None] = []

    def other(h: Any) -> None:
        elsewhere_auth.append(h.headers.get("Authorization"))
        h.reply(202, b"", {"Retry-After": "30"})

    elsewhere = hostile_server(other)
    status = hostile_server(lambda h: h.reply(302, b"", {"Location": f"{elsewhere.url}/moved"}))
    started = time.monotonic()
    [event] = run_triggers(trigger(f"{status.url}/status/1", 1.5))
    assert event["status"] == "timeout" and event["polls"] == 1
    assert time.monotonic() - started < 3.5
    assert status.hits and elsewhere_auth == [None]  # the status URL's origin is trusted; the other is not


def test_a_redirect_loop_is_the_sync_clients_error(smart_conn: Any, hostile_server: Any) -> None:
    server = hostile_server(lambda h: h.reply(302, b"", {"Location": h.path}))
    [event] = run_triggers(trigger(f"{server.url}/status/1", 30))
    assert event["status"] == "error" and "redirected too many times" in event["message"]
    assert event["error"]["kind"] == "smart.bulk_export"


def test_a_status_request_that_never_answers_is_cut_at_end_time(smart_conn: Any, hostile_server: Any) -> None:
    server = hostile_server(lambda h: time.sleep(8))
    started = time.monotonic()
    [event] = run_triggers(trigger(f"{server.url}/status/1", 2))
    elapsed = time.monotonic() - started
    assert event["status"] == "timeout", event
    assert 1.8 <= elapsed < 3.2  # end_time to the second (a last try gets at most one more second)


def test_retry_after_is_capped_by_max_poll_interval(smart_conn: Any, hostile_server: Any) -> None:
    server = hostile_server(lambda h: h.reply(202, b"", {"Retry-After": "60"}))
    [event] = run_triggers(trigger(f"{server.url}/status/1", 3.5, max_poll_interval=1))
    assert event["status"] == "timeout"
    assert 3 <= len(server.hits) <= 5  # about one a second, not one a minute


def test_an_https_base_refuses_an_http_status_url(smart_conn: Any, es384: Any) -> None:
    from airflow_provider_smart.exceptions import BulkExportError

    smart_conn(
        raw={
            "conn_type": "smart",
            "host": "https://127.0.0.1:9/fhir",
            "login": "c",
            "extra": {"private_key": es384.pem, "kid": es384.kid, "oauth_url": "https://127.0.0.1:9/token"},
        }
    )
    [event] = run_triggers(trigger("http://127.0.0.1:9/status/1", 5))
    assert event["status"] == "error" and "downgrade" in event["message"]
    try:
        raise_for_event(event)
    except BulkExportError as exc:
        assert "downgrade" in str(exc)


def test_https_status_urls_use_the_connections_ca_and_an_unknown_ca_is_refused(smart_conn: Any, tmp_path: Any) -> None:
    import json as jsonlib

    from airflow_provider_smart.testing.local_http import CountingServer, QuietHandler
    from airflow_provider_smart.testing.tls import make_tls

    tokens: list[str | None] = []

    class Done(QuietHandler):
        def do_GET(self) -> None:
            tokens.append(self.headers.get("Authorization"))
            body = jsonlib.dumps({"transactionTime": "x", "request": "x", "output": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    tls = make_tls(tmp_path)
    with CountingServer(Done, tls.server_context()).running() as server:
        smart_conn(verify=str(tls.ca))
        [event] = run_triggers(trigger(f"{server.base}/status/1", 30))
        assert event["status"] == "success", event
        assert tokens and tokens[0] and tokens[0].startswith("Bearer ")

        smart_conn()  # verify=True: the system's CAs, which never signed this certificate
        [event] = run_triggers(trigger(f"{server.base}/status/2", 2))
        assert event["status"] == "timeout" and "Certificate" in event["message"], event
        assert len(tokens) == 1  # nothing reached the server over the refused TLS


def test_a_rotated_refresh_token_the_store_refuses_is_reported_not_dropped_with_the_trigger(
    smart_conn: Any, sandbox: Any, hostile_server: Any, monkeypatch: Any
) -> None:
    # Issue 20: the trigger refreshes (a rotating server), the store refuses the write. The old trigger
    # reported success and the only valid refresh token went away with it, unsaid.
    import errno

    from airflow_provider_smart.auth.tokens import InMemoryTokenStore
    from airflow_provider_smart.exceptions import TokenStoreError
    from airflow_provider_smart.hooks import token_stores

    class RefusingStore(InMemoryTokenStore):
        """A Variable store that takes the connection's seed, then refuses writes (a metadata database
        gone read-only, a full disk)."""

        refuse = True

        def set(self, key: str, token: Any) -> None:
            if self.refuse and self.get(key) is not None:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().set(key, token)

    store = RefusingStore()
    monkeypatch.setattr(token_stores, "airflow_token_store", lambda spec: store)
    refresh_token = sandbox.launch_refresh_token("trigger-launch-app")
    smart_conn(
        raw={
            "conn_type": "smart",
            "host": sandbox.url,
            "login": "trigger-launch-app",
            "extra": {"auth_method": "refresh_token", "refresh_token": refresh_token},
        }
    )
    server = hostile_server(lambda h: h.reply(200, {"transactionTime": "x", "request": "x", "output": []}))
    before = sandbox.refresh_requests
    kept: list[Any] = []

    async def main() -> dict[str, Any]:
        from airflow_provider_smart.triggers.shared import shared_entries

        [event] = [event.payload async for event in trigger(f"{server.url}/status/1", 30).run()]
        kept.extend(entry.auth for entry in shared_entries().values())
        return event

    event = asyncio.run(main())
    [auth] = kept
    assert auth.unsaved_refresh_token  # still held, with the connection's shared auth
    store.refuse = False
    auth.ensure_saved()  # the store is fixed: the rotated token lands
    assert store.get(auth.store_key).refresh_token not in (None, refresh_token)
    assert sandbox.refresh_requests == before + 1  # the trigger's token came from a refresh, which rotated it
    assert event["status"] == "error" and event["error"]["kind"] == "smart.token_store", event
    assert "only valid one" in event["message"] and "The export itself: success" in event["message"]
    assert refresh_token not in str(event) and "Bearer" not in str(event)
    try:
        raise_for_event(event)
    except TokenStoreError as exc:
        assert exc.context["unsaved"] is True
    else:
        raise AssertionError("no error raised")
