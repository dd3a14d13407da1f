"""A standalone App Launch through a one-shot loopback redirect listener on 127.0.0.1 (RFC 8252 §7.3)."""

from __future__ import annotations

import hmac
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from airflow_provider_smart.auth.discovery import SmartConfiguration
from airflow_provider_smart.auth.launch import (
    TokenResponse,
    build_authorize_url,
    code_challenge_s256,
    exchange_code,
    generate_code_verifier,
    generate_state,
)
from airflow_provider_smart.exceptions import SmartAuthError, SmartConfigError

PAGE = b"<!doctype html><title>SMART authorisation</title><p>%s You can close this window.</p>"


class _CallbackServer(http.server.HTTPServer):
    callback: dict[str, str] | None = None
    path: str = "/callback"


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: _CallbackServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != self.server.path:
            self.send_error(404)
            return
        self.server.callback = {k: v[0] for k, v in parse_qs(parts.query).items()}
        ok = "code" in self.server.callback
        body = PAGE % (b"Authorised." if ok else b"Authorisation failed; see the terminal.")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the query holds the code: keep it out of logs
        return


def authorize_with_loopback(
    *,
    smart_config: SmartConfiguration,
    client_id: str,
    scope: str,
    open_url: Callable[[str], Any],
    redirect_uri: str | None = None,
    port: int = 0,
    timeout: float = 300.0,
    launch: str | None = None,
    **client_credentials: Any,
) -> TokenResponse:
    """Run a standalone launch: listen on 127.0.0.1, hand the authorize URL to ``open_url``, check
    ``state``, and exchange the code (PKCE S256). ``client_credentials``: ``client_secret`` or
    ``private_key``/``kid``/``alg`` for confidential clients; nothing for public ones.
    """
    path = "/callback"
    if redirect_uri:
        parts = urlsplit(redirect_uri)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.scheme != "http":
            raise SmartConfigError("redirect_uri must be a loopback http URL such as http://127.0.0.1:8765/callback.")
        port, path = parts.port or 80, parts.path or "/"
    server = _CallbackServer(("127.0.0.1", port), _CallbackHandler)
    server.path = path
    redirect_uri = redirect_uri or f"http://127.0.0.1:{server.server_port}{path}"
    verifier, state = generate_code_verifier(), generate_state()
    url = build_authorize_url(
        smart_config=smart_config,
        client_id=client_id,
        redirect_uri=redirect_uri,
        scope=scope,
        state=state,
        code_challenge=code_challenge_s256(verifier),
        launch=launch,
    )
    try:
        server.timeout = 1.0
        threading.Thread(target=open_url, args=(url,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while server.callback is None:
            if time.monotonic() > deadline:
                raise SmartAuthError(
                    f"No authorisation redirect reached {redirect_uri} within {timeout:.0f} s.", error="timeout"
                )
            server.handle_request()
    finally:
        server.server_close()
    callback = server.callback
    if not hmac.compare_digest(callback.get("state", ""), state):
        raise SmartAuthError(
            "The redirect's state does not match the one sent: possible CSRF, the code was not used.",
            error="invalid_state",
        )
    if "error" in callback:
        raise SmartAuthError(
            f"The server refused the authorisation: {callback['error']} ({callback.get('error_description')}).",
            error=callback["error"],
            error_description=callback.get("error_description"),
        )
    if not callback.get("code"):
        raise SmartAuthError("The redirect carried no authorisation code.", error="invalid_response")
    return exchange_code(
        smart_config=smart_config,
        client_id=client_id,
        redirect_uri=redirect_uri,
        code=callback["code"],
        code_verifier=verifier,
        **client_credentials,
    )
